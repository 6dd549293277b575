"""The ``unit_test`` step: run the app's test command in its builder image, on the run's commit."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.common import SOURCE_DIR, PodContext, fetch_container, resources_of, step_pod


def build_unit_test_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref(spec.builder),
        command=list(spec.test.command),
        working_dir=SOURCE_DIR,
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(spec.test.env.items())] or None,
        resources=resources_of(pipeline),
    )
    return step_pod(pipeline, step, ctx, main, init_containers=[fetch_container(pipeline, step, ctx)])
