"""One module per step kind, each with a pure function that returns the step's ``V1Pod``."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step, StepKind
from conveyor.steps.build import build_build_pod
from conveyor.steps.checkout import build_checkout_pod
from conveyor.steps.common import PodContext
from conveyor.steps.deploy import build_deploy_pod
from conveyor.steps.push import build_push_pod
from conveyor.steps.sonar import build_sonar_pod
from conveyor.steps.tag import build_tag_pod
from conveyor.steps.unit_test import build_unit_test_pod

__all__ = ["PodContext", "build_step_pod"]


def build_step_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    """The pod of any pod step (every step but the approval gates)."""
    if step.kind is StepKind.CHECKOUT:
        return build_checkout_pod(pipeline, step, ctx, ctx.values.requested_branch)
    if step.kind is StepKind.UNIT_TEST:
        return build_unit_test_pod(pipeline, step, ctx)
    if step.kind is StepKind.SONAR:
        return build_sonar_pod(pipeline, step, ctx)
    if step.kind is StepKind.BUILD:
        return build_build_pod(pipeline, step, ctx)
    if step.kind is StepKind.PUSH:
        return build_push_pod(pipeline, step, ctx)
    if step.kind is StepKind.TAG:
        return build_tag_pod(pipeline, step, ctx)
    if step.kind is StepKind.DEPLOY:
        assert step.environment is not None  # build_pipeline sets it on every deploy step
        return build_deploy_pod(pipeline, step, ctx)
    raise ValueError(f"step {step.id!r} is a {step.kind.value}, which runs no pod")
