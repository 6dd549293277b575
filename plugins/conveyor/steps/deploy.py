"""The ``deploy_dev`` / ``deploy_prod`` steps: apply the rendered manifests to the environment's
cluster with its own credentials, wait for the rollout, roll back and fail when it does not
become ready."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.common import TOOLBOX_RESOURCES, PodContext, script_command, step_pod


def build_deploy_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    """The manifests are not in this pod spec: right before the pod is created, the deploy operator checks
    the release and hands the container exactly the approved bytes (``CONVEYOR_MANIFESTS``) and their
    SHA-256 (``CONVEYOR_MANIFESTS_SHA256``)."""
    assert step.environment is not None  # build_pipeline sets it on every deploy step
    env = pipeline.environment(step.environment)
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("deploy"),
        args=[step.environment, env.namespace, str(env.rollout_timeout)],
        env=[k8s.V1EnvVar(name="TAG_NAME", value=ctx.values.release_tag)],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main, workspace=False)
