"""The ``tag`` step: push the release tag to git at the run's commit and tag the same image digest."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.build import image_repository
from conveyor.steps.common import TOOLBOX_RESOURCES, PodContext, script_command, step_pod


def build_tag_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("tag"),
        args=[
            pipeline.spec.git.url,
            ctx.values.commit,
            ctx.values.release_tag,
            image_repository(pipeline, ctx.values),
            ctx.values.digest,
        ],
        env=[
            k8s.V1EnvVar(name="TAG_NAME", value=ctx.values.release_tag),
            k8s.V1EnvVar(name="REGISTRY_TLS_VERIFY", value=ctx.values.registry_tls_verify),
        ],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main)
