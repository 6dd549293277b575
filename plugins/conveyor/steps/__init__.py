"""One module per step kind, each with a pure function that returns the step's ``V1Pod``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from kubernetes.client import Configuration
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

__all__ = ["POD_BUILDERS", "PodContext", "build_step_pod", "shared_model_configuration"]


# The pod builder of each kind of pod step (what else a kind needs: ``conveyor.pipeline.STEP_TYPES``).
POD_BUILDERS: dict[StepKind, Callable[[Pipeline, Step, PodContext], k8s.V1Pod]] = {
    StepKind.CHECKOUT: lambda pipeline, step, ctx: build_checkout_pod(pipeline, step, ctx, ctx.values.requested_branch),
    StepKind.UNIT_TEST: build_unit_test_pod,
    StepKind.SONAR: build_sonar_pod,
    StepKind.BUILD: build_build_pod,
    StepKind.PUSH: build_push_pod,
    StepKind.TAG: build_tag_pod,
    StepKind.DEPLOY: build_deploy_pod,
}


def build_step_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    """The pod of any pod step (every step but the approval gates)."""
    builder = POD_BUILDERS.get(step.kind)
    if builder is None:
        raise ValueError(f"step {step.id!r} is a {step.kind.value}, which runs no pod")
    with shared_model_configuration():
        return builder(pipeline, step, ctx)


@cache
def _shared_configuration() -> Configuration:
    return Configuration.get_default_copy()


@contextmanager
def shared_model_configuration() -> Iterator[None]:
    """Kubernetes model objects made meanwhile share one client ``Configuration``.

    Each model object the client library makes (a pod has dozens: containers, env vars, mounts) builds a
    ``Configuration`` of its own unless given one, and each of those resets logging levels (which clears every
    logger's cache): about a third of the DAG file's time with many apps. Passing one to every constructor
    would clutter each step's pod builder, so for the duration of a build the class hands out one shared
    instance; models only read ``client_side_validation`` from it, and the pods become plain dicts at once.
    """
    shared = _shared_configuration()
    original = Configuration.__dict__["get_default_copy"]
    Configuration.get_default_copy = classmethod(lambda cls: shared)
    try:
        yield
    finally:
        Configuration.get_default_copy = original
