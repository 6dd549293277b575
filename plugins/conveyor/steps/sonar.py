"""The ``sonar`` step: SonarQube analysis of the run's commit; fails when the quality gate fails."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.common import SOURCE_DIR, PodContext, fetch_container, resources_of, step_pod


def build_sonar_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    # sonar-scanner reads SONAR_TOKEN from the environment (from the Secret), the only credential
    # this container gets: it reads the app's code. The server comes from the Secret too, on the
    # command line (kubelet expands $(SONAR_HOST_URL)), where it overrides any sonar.host.url in
    # the repository's sonar-project.properties: the token goes to the connection's server only.
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref(spec.sonar.image),
        command=["sonar-scanner"],
        args=[
            "-Dsonar.host.url=$(SONAR_HOST_URL)",
            f"-Dsonar.projectKey={spec.sonar.project_key}",
            f"-Dsonar.projectVersion={ctx.values.build_number}",
            f"-Dsonar.scm.revision={ctx.values.commit}",
            "-Dsonar.qualitygate.wait=true",
        ],
        working_dir=SOURCE_DIR,
        resources=resources_of(pipeline),
    )
    return step_pod(pipeline, step, ctx, main, init_containers=[fetch_container(pipeline, step, ctx)])
