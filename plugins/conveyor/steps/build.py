"""The ``build`` step: build the image without a Docker daemon and push its snapshot tags.

Dockerfile builds use the repository's Dockerfile; Source-to-Image and Binary-to-Image
builds write one from the language's runtime image. One digest is pushed under
``SNAPSHOT-<branch>-<build number>`` and ``SNAPSHOT-<build number>`` and handed on.

The app's code (its package command, the Dockerfile's RUN lines) runs in containers that hold
no credential. The pod's containers, in order:

- ``fetch`` (git credentials): checks out the run's commit;
- ``prepare`` (registry credentials): finds an image this build already pushed (a rerun), or
  downloads the base images the Dockerfile names from the app's registry into the workspace;
- ``package`` (none; only when the spec has a package command): runs it in the builder image;
- ``build`` (none): buildah builds the image from the downloaded bases into an OCI layout in
  the workspace;
- ``base`` (registry credentials): pushes that layout with skopeo under every snapshot tag and
  hands the digest on. It runs no code of the app and reads the layout as plain files.
"""

from __future__ import annotations

import json

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, RunValues, Step
from conveyor.spec import ImageStrategy, Language
from conveyor.steps.caches import dependency_caches, layer_cache
from conveyor.steps.common import (
    BUILD_RESOURCES,
    SOURCE_DIR,
    TOOLBOX_RESOURCES,
    PodContext,
    fetch_container,
    resources_of,
    script_command,
    step_pod,
    workspace_volume,
)

RUNTIME_IMAGE = {Language.PYTHON: "python-runtime", Language.JAVA: "java-runtime"}
DEFAULT_CMD = {Language.PYTHON: ["python3", "app.py"], Language.JAVA: ["sh", "-c", "exec java -jar /app/*.jar"]}

# The least privilege buildah builds with here (docs/cluster.md, "Least privilege for builds"): root in
# the container only to map a user namespace of its own (SETUID, SETGID, SETFCAP), no SYS_ADMIN, and a
# seccomp profile that adds to the runtime's default only unshare, mount, umount2 and chroot. Meets Pod
# Security "baseline", which the CI namespace enforces. Rootless builds (pod user namespaces) need
# containerd >= 2.0; Debian 12 ships 1.6.
BUILD_SECURITY = k8s.V1SecurityContext(
    run_as_user=0,
    allow_privilege_escalation=False,
    capabilities=k8s.V1Capabilities(drop=["ALL"], add=["SETUID", "SETGID", "SETFCAP"]),
    seccomp_profile=k8s.V1SeccompProfile(type="Localhost", localhost_profile="conveyor/buildah.json"),
)


def image_repository(pipeline: Pipeline, values: RunValues) -> str:
    return f"{values.registry}/{pipeline.spec.registry.project}/{pipeline.app}"


def snapshot_tags(values: RunValues) -> list[str]:
    """``SNAPSHOT-<branch>-<n>`` (branch slashes become dashes) and ``SNAPSHOT-<n>``."""
    return [f"SNAPSHOT-{values.branch_tag}-{values.build_number}", f"SNAPSHOT-{values.build_number}"]


def build_build_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    image = spec.image
    repository = image_repository(pipeline, ctx.values)
    tags = snapshot_tags(ctx.values)
    _, workspace = workspace_volume()
    registry_env = [
        k8s.V1EnvVar(name="CONVEYOR_REGISTRY", value=ctx.values.registry),
        k8s.V1EnvVar(name="REGISTRY_TLS_VERIFY", value=ctx.values.registry_tls_verify),
    ]
    commit_env = [k8s.V1EnvVar(name="COMMIT_SHA", value=ctx.values.commit)]
    base_image: list[k8s.V1EnvVar] = []  # the FROM of a source/binary build
    generated: list[k8s.V1EnvVar] = []  # and the rest of its generated Dockerfile
    if image.strategy is not ImageStrategy.DOCKERFILE:
        language = image.language or Language.JAVA  # binary builds default to a Java runtime
        copy = image.artifact if image.strategy is ImageStrategy.BINARY else "."
        base_image = [k8s.V1EnvVar(name="CONVEYOR_BASE_IMAGE", value=ctx.images.ref(RUNTIME_IMAGE[language]))]
        generated = [
            k8s.V1EnvVar(name="CONVEYOR_COPY", value=copy),
            k8s.V1EnvVar(name="CONVEYOR_PORT", value=str(image.port)),
            k8s.V1EnvVar(name="CONVEYOR_CMD", value=json.dumps(list(image.command or DEFAULT_CMD[language]))),
        ]
    init = [
        fetch_container(pipeline, step, ctx),
        k8s.V1Container(
            name="prepare",
            image=ctx.images.ref("toolbox"),
            image_pull_policy="IfNotPresent",
            command=script_command("prepare"),
            args=[image.strategy.value, image.dockerfile, repository, tags[-1]],
            env=[*commit_env, *registry_env, *base_image],
            volume_mounts=[workspace],
            resources=TOOLBOX_RESOURCES,
        ),
    ]
    deps = dependency_caches(pipeline, step.id)
    layers = layer_cache(pipeline, with_deps=image.strategy is ImageStrategy.SOURCE)
    if spec.package:
        init.append(
            k8s.V1Container(
                name="package",
                image=ctx.images.ref(spec.builder),
                image_pull_policy="IfNotPresent",
                command=deps.command(list(spec.package.command)),
                working_dir=SOURCE_DIR,
                env=list(deps.env),
                volume_mounts=[workspace, *deps.mounts],
                resources=resources_of(pipeline),
            )
        )
    init.append(
        k8s.V1Container(
            name="build",
            image=ctx.images.ref("toolbox"),
            image_pull_policy="IfNotPresent",
            command=script_command("build"),
            args=[image.strategy.value, image.context, image.dockerfile, repository, tags[0]],
            env=[*commit_env, *registry_env, *base_image, *generated, *layers.env],
            volume_mounts=[workspace, *layers.mounts],
            security_context=BUILD_SECURITY,
            resources=BUILD_RESOURCES,
        )
    )
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("publish"),
        args=[repository, *tags],
        env=registry_env[1:],
        # the pusher only reads what the build left: the image layout
        volume_mounts=[k8s.V1VolumeMount(name=workspace.name, mount_path=workspace.mount_path, read_only=True)],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(pipeline, step, ctx, main, init_containers=init, extra_volumes=[*deps.volumes, *layers.volumes])
