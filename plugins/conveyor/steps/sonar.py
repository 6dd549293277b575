"""The ``sonar`` step: SonarQube analysis of the run's commit; fails when the quality gate fails."""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.common import SOURCE_DIR, PodContext, fetch_container, resources_of, step_pod

# The Java of the sonar-scanner image (images/sonar-scanner/Containerfile).
SCANNER_JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"


def build_sonar_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    # sonar-scanner reads SONAR_TOKEN from the environment (from the Secret), the only credential
    # this container gets: it reads the app's code. The server comes from the Secret too, on the
    # command line (kubelet expands $(SONAR_HOST_URL)), where it overrides any sonar.host.url in
    # the repository's sonar-project.properties: the token goes to the connection's server only.
    # For the same reason the scanner's own Java and its proxy are fixed here: a properties file in
    # the repository must not make the scanner run a program of its own, or route the token elsewhere.
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref(spec.sonar.image),
        command=["sonar-scanner"],
        args=[
            "-Dsonar.host.url=$(SONAR_HOST_URL)",
            f"-Dsonar.scanner.javaExePath={SCANNER_JAVA}",
            "-Dsonar.scanner.skipJreProvisioning=true",
            "-Dsonar.scanner.proxyHost=",
            "-Dsonar.scanner.proxyPort=",
            f"-Dsonar.projectKey={spec.sonar.project_key}",
            f"-Dsonar.projectVersion={ctx.values.build_number}",
            f"-Dsonar.scm.revision={ctx.values.commit}",
            "-Dsonar.qualitygate.wait=true",
        ],
        working_dir=SOURCE_DIR,
        resources=resources_of(pipeline),
    )
    return step_pod(pipeline, step, ctx, main, init_containers=[fetch_container(pipeline, step, ctx)])
