"""The ``build`` step: build the image without a Docker daemon and push its snapshot tags.

Dockerfile builds use the repository's Dockerfile; Source-to-Image and Binary-to-Image
builds write one from the language's runtime image. One digest is pushed under
``SNAPSHOT-<branch>-<build number>`` and ``SNAPSHOT-<build number>`` and handed on.
"""

from __future__ import annotations

import json

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, RunValues, Step
from conveyor.spec import ImageStrategy, Language
from conveyor.steps.common import (
    BUILD_RESOURCES,
    SOURCE_DIR,
    PodContext,
    fetch_container,
    resources_of,
    script_command,
    step_pod,
)

RUNTIME_IMAGE = {Language.PYTHON: "python-runtime", Language.JAVA: "java-runtime"}
DEFAULT_CMD = {Language.PYTHON: ["python3", "app.py"], Language.JAVA: ["sh", "-c", "exec java -jar /app/*.jar"]}

# buildah needs these to build unprivileged in a pod (privileged pods are not required).
BUILD_SECURITY = k8s.V1SecurityContext(
    capabilities=k8s.V1Capabilities(add=["SYS_ADMIN", "SETUID", "SETGID", "MKNOD"]),
    seccomp_profile=k8s.V1SeccompProfile(type="Unconfined"),
    app_armor_profile=k8s.V1AppArmorProfile(type="Unconfined"),
)


def image_repository(pipeline: Pipeline, values: RunValues) -> str:
    return f"{values.registry}/{pipeline.spec.registry.project}/{pipeline.app}"


def snapshot_tags(values: RunValues) -> list[str]:
    """``SNAPSHOT-<branch>-<n>`` (branch slashes become dashes) and ``SNAPSHOT-<n>``."""
    return [f"SNAPSHOT-{values.branch_tag}-{values.build_number}", f"SNAPSHOT-{values.build_number}"]


def build_build_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    image = spec.image
    init = [fetch_container(pipeline, step, ctx)]
    if spec.package:
        init.append(
            k8s.V1Container(
                name="package",
                image=ctx.images.ref(spec.builder),
                image_pull_policy="IfNotPresent",
                command=list(spec.package.command),
                working_dir=SOURCE_DIR,
                volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path="/workspace")],
                resources=resources_of(pipeline),
            )
        )
    env = [
        k8s.V1EnvVar(name="CONVEYOR_REGISTRY", value=ctx.values.registry),
        k8s.V1EnvVar(name="REGISTRY_TLS_VERIFY", value=ctx.values.registry_tls_verify),
    ]
    if image.strategy is not ImageStrategy.DOCKERFILE:
        language = image.language or Language.JAVA  # binary builds default to a Java runtime
        copy = image.artifact if image.strategy is ImageStrategy.BINARY else "."
        env += [
            k8s.V1EnvVar(name="CONVEYOR_BASE_IMAGE", value=ctx.images.ref(RUNTIME_IMAGE[language])),
            k8s.V1EnvVar(name="CONVEYOR_COPY", value=copy),
            k8s.V1EnvVar(name="CONVEYOR_PORT", value=str(image.port)),
            k8s.V1EnvVar(name="CONVEYOR_CMD", value=json.dumps(list(image.command or DEFAULT_CMD[language]))),
        ]
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("build", step.id),
        args=[
            image.strategy.value,
            image.context,
            image.dockerfile,
            image_repository(pipeline, ctx.values),
            *snapshot_tags(ctx.values),
        ],
        env=env,
        security_context=BUILD_SECURITY,
        resources=BUILD_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main, init_containers=init)
