"""Caches that outlive a run: each app's pip and Maven downloads and its image layers.

They live on one PersistentVolumeClaim per team CI namespace (``conveyor-cache``; ``make up`` makes it,
``scripts/cluster/bootstrap``), in a folder per app that only that app's pods mount (``apps/<app>/``):

- ``deps/pip``: pip's cache, shared by the app's runs as it is (pip writes it safely while others use it);
- ``deps/maven``: a Maven repository that no Maven writes directly: each run works on its own copy in the
  workspace and puts back what it added (Maven 3.8 has no lock on its local repository);
- ``layers``: buildah's container storage (``--layers``: unchanged Dockerfile steps are not run again), the
  OCI layouts of the last images built, by image id, so an unchanged rebuild writes no new layout, and the
  folders of the Dockerfile's ``RUN --mount=type=cache``.

Another team's pods run in another namespace and cannot mount the claim; another app's pods mount only
their own folder. Each cache has a budget (:data:`CACHES`): over it, it is emptied at the end of a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubernetes.client import models as k8s

from conveyor.exceptions import ConveyorError
from conveyor.pipeline import Pipeline
from conveyor.steps.common import SCRIPTS_DIR, ensure_step_scripts, script, script_command, scripts_volume

# The claim in every CI namespace; and the volume's name in a step pod.
CACHE_CLAIM = "conveyor-cache"
VOLUME = "caches"
# Where containers see an app's caches.
DEPS_DIR = "/var/cache/conveyor/deps"
LAYERS_DIR = "/var/cache/conveyor/layers"
# The per-run copy of the Maven repository (in the step's workspace, gone with the pod).
MAVEN_RUN_REPOSITORY = "/workspace/conveyor/maven-repository"


class CacheKind(StrEnum):
    PIP = "pip"
    MAVEN = "maven"
    LAYERS = "layers"


@dataclass(frozen=True)
class CacheRecord:
    """One cache: where it is in the app's folder of the claim, and how large it may grow."""

    path: str  # relative to apps/<app>/
    budget_mib: int
    what: str


CACHES: dict[CacheKind, CacheRecord] = {
    CacheKind.PIP: CacheRecord("deps/pip", 1024, "pip's downloads and built wheels (PIP_CACHE_DIR)"),
    CacheKind.MAVEN: CacheRecord("deps/maven", 2048, "the Maven repository (-Dmaven.repo.local on a per-run copy)"),
    CacheKind.LAYERS: CacheRecord(
        "layers", 4096, "buildah's storage (bases and the layers of each Dockerfile step) and recent OCI layouts"
    ),
}


def app_folder(app: str) -> str:
    """The app's folder in the claim (app names are DNS-1123 labels: nothing to escape)."""
    return f"apps/{app}"


def cache_volume() -> k8s.V1Volume:
    return k8s.V1Volume(
        name=VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=CACHE_CLAIM)
    )


def deps_mount(pipeline: Pipeline) -> k8s.V1VolumeMount:
    return k8s.V1VolumeMount(name=VOLUME, mount_path=DEPS_DIR, sub_path=f"{app_folder(pipeline.app)}/deps")


def layers_mount(pipeline: Pipeline) -> k8s.V1VolumeMount:
    return k8s.V1VolumeMount(name=VOLUME, mount_path=LAYERS_DIR, sub_path=f"{app_folder(pipeline.app)}/layers")


def budgets(*kinds: CacheKind) -> str:
    """``name=KiB`` pairs, as the scripts read their budgets."""
    return " ".join(f"{CACHES[k].path.rsplit('/', 1)[-1]}={CACHES[k].budget_mib * 1024}" for k in kinds)


def deps_script() -> str:
    return script("deps_cache")


@dataclass(frozen=True)
class DependencyCaches:
    """What a container that runs the app's own tools (its tests, its package command) gets: its pod's
    ``volumes``, the container's ``mounts`` and ``env``, and its ``command`` wrapped so that pip and Maven use
    the app's caches safely (:func:`dependency_caches`)."""

    step_id: str
    volumes: tuple[k8s.V1Volume, ...]
    mounts: tuple[k8s.V1VolumeMount, ...]
    env: tuple[k8s.V1EnvVar, ...]

    def command(self, command: list[str]) -> list[str]:
        """``command`` run inside the cache wrapper (``scripts/deps_cache.sh``, POSIX sh): its exit code is
        the command's."""
        return ["sh", f"{SCRIPTS_DIR}/deps_cache.sh", *command]


def dependency_caches(pipeline: Pipeline, step_id: str) -> DependencyCaches:
    """The pip and Maven caches of the app, for a container in the app's builder image.

    The unit-test pod wires them like the build's package container (``steps/build.py``)::

        deps = dependency_caches(pipeline, step.id)
        test = k8s.V1Container(..., command=deps.command([...]), env=[..., *deps.env],
                               volume_mounts=[workspace, *deps.mounts])
        step_pod(..., extra_volumes=list(deps.volumes))
    """
    return DependencyCaches(
        step_id=step_id,
        volumes=(cache_volume(),),
        mounts=(deps_mount(pipeline),),
        env=(k8s.V1EnvVar(name="CONVEYOR_CACHE_BUDGETS", value=budgets(CacheKind.PIP, CacheKind.MAVEN)),),
    )


@dataclass(frozen=True)
class LayerCache:
    """What the image build container gets: the app's layer cache, and for a Source-to-Image build (which
    runs ``pip install`` itself) the dependency caches too."""

    volumes: tuple[k8s.V1Volume, ...]
    mounts: tuple[k8s.V1VolumeMount, ...]
    env: tuple[k8s.V1EnvVar, ...]


# Where buildah 1.28 keeps the folders of ``RUN --mount=type=cache`` (under $TMPDIR, /var/tmp by default).
BUILDAH_CACHE_MOUNTS = "/var/tmp/buildah-cache"


def layer_cache(pipeline: Pipeline, *, with_deps: bool) -> LayerCache:
    # RUN --mount=type=cache folders of the app's Dockerfile outlive the pod too, inside the layer cache
    run_mounts = k8s.V1VolumeMount(
        name=VOLUME, mount_path=BUILDAH_CACHE_MOUNTS, sub_path=f"{app_folder(pipeline.app)}/layers/mounts"
    )
    mounts = [layers_mount(pipeline), run_mounts, *([deps_mount(pipeline)] if with_deps else [])]
    return LayerCache(
        volumes=(cache_volume(),),
        mounts=tuple(mounts),
        env=(k8s.V1EnvVar(name="CONVEYOR_LAYERS_BUDGET_KIB", value=str(CACHES[CacheKind.LAYERS].budget_mib * 1024)),),
    )


def clear_pod(app: str, namespace: str, toolbox_image: str, pull_secret: str | None = None) -> k8s.V1Pod:
    """A pod that empties every cache of ``app`` in ``namespace``: the app's folder is renamed away at
    once (runs that still use it finish on it), then deleted when no image build holds its storage."""
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            generate_name=f"{app}-cache-clear-"[:57],
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": "conveyor", "conveyor/app": app, "conveyor/step": "cache-clear"},
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            image_pull_secrets=[k8s.V1LocalObjectReference(name=pull_secret)] if pull_secret else None,
            containers=[
                k8s.V1Container(
                    name="base",
                    image=toolbox_image,
                    image_pull_policy="IfNotPresent",
                    command=[*script_command("cache_clear"), app_folder(app)],
                    volume_mounts=[k8s.V1VolumeMount(name=VOLUME, mount_path="/cache"), scripts_volume()[1]],
                    resources=k8s.V1ResourceRequirements(
                        requests={"cpu": "50m", "memory": "32Mi"}, limits={"memory": "128Mi"}
                    ),
                    # root with DAC_OVERRIDE and FOWNER (Pod Security "baseline" allows both): image layers hold
                    # files only their owner may read and folders with the sticky bit
                    security_context=k8s.V1SecurityContext(
                        run_as_user=0,
                        allow_privilege_escalation=False,
                        capabilities=k8s.V1Capabilities(drop=["ALL"], add=["DAC_OVERRIDE", "FOWNER"]),
                    ),
                )
            ],
            volumes=[cache_volume(), scripts_volume()[0]],
        ),
    )


def clear(core: Any, pod: k8s.V1Pod, timeout: float = 960) -> str:
    """Run a :func:`clear_pod` with ``core`` (a ``CoreV1Api`` of the CI cluster, allowed to make pods in its
    namespace) and return its log; the pod is deleted afterwards. Raises :class:`ConveyorError` when it fails."""
    namespace = pod.metadata.namespace
    ensure_step_scripts(core, namespace)
    made = core.create_namespaced_pod(namespace, pod)
    name = made.metadata.name
    try:
        deadline = time.monotonic() + timeout
        phase = ""
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, namespace).status.phase or ""
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        log = ""
        if phase in ("Succeeded", "Failed"):
            raw = core.read_namespaced_pod_log(name, namespace, _preload_content=False).data
            log = raw.decode("utf-8", "replace")
        if phase != "Succeeded":
            raise ConveyorError(
                f"Clearing the caches failed: pod {namespace}/{name} ended {phase or f'not within {timeout:.0f}s'}. "
                f"{log.strip()} Check that the claim {CACHE_CLAIM} exists in {namespace} "
                f"(kubectl -n {namespace} describe pod {name})."
            )
        return log
    finally:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
