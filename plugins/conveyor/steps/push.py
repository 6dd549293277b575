"""The ``push`` step: promote the build's digest to ``latest`` without rebuilding."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.build import image_repository
from conveyor.steps.common import TOOLBOX_RESOURCES, PodContext, script_command, step_pod


def build_push_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("promote"),
        args=[image_repository(pipeline, ctx.values), ctx.values.digest, "latest"],
        env=[k8s.V1EnvVar(name="REGISTRY_TLS_VERIFY", value=ctx.values.registry_tls_verify)],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main, workspace=False)
