"""The ``checkout`` step: resolve the branch to one commit and check the repo has what the spec needs."""

from __future__ import annotations

from pathlib import PurePosixPath

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.spec import ImageStrategy
from conveyor.steps.common import TOOLBOX_RESOURCES, PodContext, script_command, step_pod


def required_paths(pipeline: Pipeline) -> list[str]:
    """Paths the repository must contain for this app's pipeline to work."""
    image = pipeline.spec.image
    paths = [image.context] if image.context != "." else []
    if image.strategy is ImageStrategy.DOCKERFILE:
        paths.append(str(PurePosixPath(image.dockerfile)))
    return paths


def build_checkout_pod(pipeline: Pipeline, step: Step, ctx: PodContext, branch: str) -> k8s.V1Pod:
    """``branch`` is the branch to resolve (a template for the run's ``branch`` param in Airflow). A run that
    asks for one commit (param ``commit``, set by push-started runs) builds exactly that one, once the step has
    checked it is on the branch, or is what the run's release tag (``tag_name``) already points at."""
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("checkout"),
        args=[pipeline.spec.git.url, branch, *required_paths(pipeline)],
        env=[
            k8s.V1EnvVar(name="CONVEYOR_REQUESTED_COMMIT", value=ctx.values.requested_commit),
            k8s.V1EnvVar(name="CONVEYOR_REQUESTED_TAG", value=ctx.values.requested_tag),
        ],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main)
