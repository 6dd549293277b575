"""What every step pod shares: labels, the workspace, credentials from Secrets, the scripts.

The step scripts live in ``scripts/`` beside this module. A pod runs one of them as
``bash -c <lib.sh + script> conveyor-<step> ARG...``: the script text is Conveyor's
own, and every value from a spec or a run is a separate argument or environment
variable, never pasted into the script.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, RunValues, SecretRef, Step, StepKind, step_secrets
from conveyor.settings import CiCluster, StepImages

WORKSPACE = "/workspace"
SOURCE_DIR = f"{WORKSPACE}/src"
REGISTRY_AUTH_DIR = "/var/run/conveyor/registry"
KUBECONFIG_DIR = "/var/run/conveyor/kube"

TOOLBOX_RESOURCES = k8s.V1ResourceRequirements(requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"})
BUILD_RESOURCES = k8s.V1ResourceRequirements(requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "4Gi"})


@dataclass(frozen=True)
class PodContext:
    """Everything a pod builder needs besides the pipeline: where pods run, the step images
    and the strings that stand for a run's values."""

    ci: CiCluster
    images: StepImages
    values: RunValues


# Python helpers a step script runs (python3 -c "$<name>_py"), handed over in a shell variable: the variable's
# name and the file, in Conveyor's package.
SCRIPT_HELPERS: dict[str, tuple[tuple[str, str], ...]] = {
    "prepare": (("dockerfile_bases_py", "steps/scripts/dockerfile_bases.py"),),
    "unit_test": (("reports_py", "reports.py"),),  # the report reader: the standard library only
}
# Scripts run by themselves, without lib.sh (deps_cache.sh runs in the app's builder image, with POSIX sh).
STANDALONE_SCRIPTS = ("deps_cache",)
# Where the step pods find the scripts: a ConfigMap of them (one per version of the scripts), mounted read-only.
SCRIPTS_DIR = "/opt/conveyor/steps"
SCRIPTS_VOLUME = "conveyor-steps"


@cache
def script(name: str) -> str:
    """A step script as a pod runs it: lib.sh, its Python helpers, then the script itself."""
    package = resources.files("conveyor")
    folder = package / "steps" / "scripts"
    if name in STANDALONE_SCRIPTS:
        return (folder / f"{name}.sh").read_text()
    helpers = [f"{var}={shlex.quote((package / path).read_text())}\n" for var, path in SCRIPT_HELPERS.get(name, ())]
    return (folder / "lib.sh").read_text() + "\n" + "".join(helpers) + (folder / f"{name}.sh").read_text()


@cache
def step_scripts() -> dict[str, str]:
    """Every step script by file name (``<name>.sh``), as :func:`script` composes it: the ConfigMap's data."""
    folder = resources.files("conveyor.steps") / "scripts"
    names = sorted(p.name[: -len(".sh")] for p in folder.iterdir() if p.name.endswith(".sh") and p.name != "lib.sh")
    return {f"{name}.sh": script(name) for name in names}


@cache
def scripts_config_map_name() -> str:
    """The ConfigMap of this version of the scripts: named by their content, so a pod always gets the scripts
    its DAG was built with, and two versions (an upgrade while runs go on) live side by side."""
    digest = hashlib.sha256(json.dumps(step_scripts(), sort_keys=True).encode()).hexdigest()[:12]
    return f"conveyor-steps-{digest}"


def scripts_config_map(namespace: str) -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(
            name=scripts_config_map_name(),
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": "conveyor", "app.kubernetes.io/component": "step-scripts"},
        ),
        data=step_scripts(),
        immutable=True,
    )


def ensure_step_scripts(core: Any, namespace: str) -> str:
    """Make sure ``namespace`` has this version's scripts ConfigMap (``core``: a ``CoreV1Api`` allowed to manage
    ConfigMaps there); returns its name. A ConfigMap of that name with other content (made by hand) is replaced."""
    from kubernetes.client.exceptions import ApiException

    wanted = scripts_config_map(namespace)
    name = wanted.metadata.name
    try:
        core.create_namespaced_config_map(namespace, wanted)
        return name
    except ApiException as exc:
        if exc.status != 409:
            raise
    if (core.read_namespaced_config_map(name, namespace).data or {}) != wanted.data:
        core.delete_namespaced_config_map(name, namespace)  # immutable: replaced, not patched
        core.create_namespaced_config_map(namespace, wanted)
    return name


def script_command(name: str) -> list[str]:
    """The container command that runs a step script from the scripts ConfigMap; its arguments follow in
    ``args``. The pod carries arguments only: no script text, nothing for Jinja to escape."""
    return ["bash", f"{SCRIPTS_DIR}/{name}.sh"]


def scripts_volume() -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    return (
        k8s.V1Volume(
            name=SCRIPTS_VOLUME,
            config_map=k8s.V1ConfigMapVolumeSource(name=scripts_config_map_name(), default_mode=0o444),
        ),
        k8s.V1VolumeMount(name=SCRIPTS_VOLUME, mount_path=SCRIPTS_DIR, read_only=True),
    )


def runs_a_step_script(container: k8s.V1Container) -> bool:
    return any(str(part).startswith(f"{SCRIPTS_DIR}/") for part in container.command or [])


def label_value(value: str) -> str:
    """A string made safe as a Kubernetes label value (at most 63 characters of [A-Za-z0-9._-])."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    if safe == value and len(safe) <= 63:
        return safe
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{safe[:54].rstrip('-._')}-{digest}".lstrip("-")


def step_labels(pipeline: Pipeline, step: Step, values: RunValues) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": pipeline.app,
        "app.kubernetes.io/component": step.id.replace("_", "-"),
        "app.kubernetes.io/part-of": pipeline.app,
        "app.kubernetes.io/managed-by": "conveyor",
        "conveyor/app": pipeline.app,
        "conveyor/team": pipeline.spec.team,
        "conveyor/run": values.run_label,
        "conveyor/step": step.id.replace("_", "-"),
    }
    if step.kind is not StepKind.CHECKOUT:
        labels["conveyor/commit"] = values.commit_label
    return labels


def run_env(pipeline: Pipeline, step: Step, values: RunValues) -> list[k8s.V1EnvVar]:
    """The run's facts, under the names the Jenkins pipeline used."""
    env = [
        k8s.V1EnvVar(name="APP_NAME", value=pipeline.app),
        k8s.V1EnvVar(name="HARBOR_NAMESPACE", value=pipeline.spec.registry.project),
        k8s.V1EnvVar(name="CONVEYOR_RUN_ID", value=values.run_id),
        k8s.V1EnvVar(name="CONVEYOR_STEP", value=step.id),
    ]
    if step.kind is not StepKind.CHECKOUT:
        env += [
            k8s.V1EnvVar(name="BUILD_NUMBER", value=values.build_number),
            k8s.V1EnvVar(name="BRANCH_NAME", value=values.branch),
            k8s.V1EnvVar(name="COMMIT_SHA", value=values.commit),
        ]
    return env


@dataclass(frozen=True)
class CredentialMount:
    """How a container receives one kind of credential: variables read from keys of its Secret,
    or one key of the Secret mounted read-only as a file whose path a variable names."""

    env_keys: tuple[tuple[str, str], ...] = ()  # (variable, key of the Secret)
    file_key: str = ""
    file_dir: str = ""
    file_name: str = ""
    path_env: str = ""


# One entry per secret kind (SecretRef.kind).
CREDENTIAL_MOUNTS: dict[str, CredentialMount] = {
    "git": CredentialMount(env_keys=(("GIT_USERNAME", "username"), ("GIT_PASSWORD", "password"))),
    "sonar": CredentialMount(env_keys=(("SONAR_HOST_URL", "host"), ("SONAR_TOKEN", "token"))),
    "registry": CredentialMount(
        file_key=".dockerconfigjson", file_dir=REGISTRY_AUTH_DIR, file_name="auth.json", path_env="REGISTRY_AUTH_FILE"
    ),
    "kubeconfig": CredentialMount(
        file_key="config", file_dir=KUBECONFIG_DIR, file_name="config", path_env="KUBECONFIG"
    ),
}


def container_secrets(step: Step, refs: tuple[SecretRef, ...], container: str) -> tuple[SecretRef, ...]:
    """The step's Secrets that one of its containers gets (``StepType.containers``)."""
    kinds = step.type.containers.get(container, frozenset())
    return tuple(r for r in refs if r.kind in kinds)


def secret_env(refs: tuple[SecretRef, ...]) -> list[k8s.V1EnvVar]:
    """Credentials handed to the container by reference to their Secret (values never in the spec)."""
    env: list[k8s.V1EnvVar] = []
    for ref in refs:
        mount = CREDENTIAL_MOUNTS[ref.kind]
        env += [_from_secret(name, ref, key) for name, key in mount.env_keys]
        if mount.path_env:
            env.append(k8s.V1EnvVar(name=mount.path_env, value=f"{mount.file_dir}/{mount.file_name}"))
    return env


def _from_secret(name: str, ref: SecretRef, key: str) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name=name,
        value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=ref.name, key=key)),
    )


def secret_volumes(refs: tuple[SecretRef, ...]) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The Secrets handed over as files: the pod's volumes and a container's mounts of them."""
    volumes: list[k8s.V1Volume] = []
    mounts: list[k8s.V1VolumeMount] = []
    for ref in refs:
        mount = CREDENTIAL_MOUNTS[ref.kind]
        if not mount.file_key:
            continue
        items = [k8s.V1KeyToPath(key=mount.file_key, path=mount.file_name)]
        volumes.append(
            k8s.V1Volume(
                name=f"{ref.kind}-credentials",
                secret=k8s.V1SecretVolumeSource(secret_name=ref.name, items=items, default_mode=0o440),
            )
        )
        mounts.append(k8s.V1VolumeMount(name=f"{ref.kind}-credentials", mount_path=mount.file_dir, read_only=True))
    return volumes, mounts


def workspace_volume() -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    return (
        k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE),
    )


def resources_of(pipeline: Pipeline) -> k8s.V1ResourceRequirements | None:
    spec_resources = pipeline.spec.resources
    if not spec_resources.requests and not spec_resources.limits:
        return None
    return k8s.V1ResourceRequirements(
        requests=dict(spec_resources.requests) or None, limits=dict(spec_resources.limits) or None
    )


def fetch_container(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Container:
    """Init container that checks out exactly the run's commit into the shared workspace
    (it gets the git credentials from ``step_pod``)."""
    _, mount = workspace_volume()
    return k8s.V1Container(
        name="fetch",
        image=ctx.images.ref("toolbox"),
        image_pull_policy="IfNotPresent",
        command=script_command("fetch"),
        args=[pipeline.spec.git.url, ctx.values.commit, SOURCE_DIR],
        volume_mounts=[mount],
        resources=TOOLBOX_RESOURCES,
    )


def step_pod_name(pipeline: Pipeline, step: Step) -> str:
    """The name a step's pod is made with (the provider adds a random suffix)."""
    return f"{pipeline.app}-{step.id.replace('_', '-')}"


def step_pod(
    pipeline: Pipeline,
    step: Step,
    ctx: PodContext,
    main: k8s.V1Container,
    *,
    init_containers: list[k8s.V1Container] | None = None,
    workspace: bool = True,
    extra_volumes: list[k8s.V1Volume] | None = None,
) -> k8s.V1Pod:
    """Assemble a step's pod around its main container (which must be named ``base``).

    Each container gets exactly the credentials its ``StepType.containers`` lists for it, and the
    pod has a volume only for the Secrets some container mounts. ``extra_volumes`` are further volumes
    its containers mount (such as the app's caches, ``steps/caches.py``); each name is added once.
    """
    refs = step_secrets(pipeline, step)
    volumes: list[k8s.V1Volume] = []
    if workspace:
        volume, mount = workspace_volume()
        volumes.append(volume)
        if not any(m.name == mount.name for m in main.volume_mounts or []):
            main.volume_mounts = [mount, *(main.volume_mounts or [])]
    volumes += {v.name: v for v in extra_volumes or []}.values()
    containers = [*(init_containers or []), main]
    if any(runs_a_step_script(c) for c in containers):
        scripts, scripts_mount = scripts_volume()
        volumes.append(scripts)
        for container in containers:
            if runs_a_step_script(container):
                container.volume_mounts = [*(container.volume_mounts or []), scripts_mount]
    for container in containers:
        granted = container_secrets(step, refs, container.name)
        secret_vols, secret_mounts = secret_volumes(granted)
        volumes += [v for v in secret_vols if all(v.name != known.name for known in volumes)]
        container.volume_mounts = [*(container.volume_mounts or []), *secret_mounts] or None
        first = run_env(pipeline, step, ctx.values) if container is main else []
        container.env = [*first, *secret_env(granted), *(container.env or [])] or None
    if main.image_pull_policy is None:
        main.image_pull_policy = "IfNotPresent"
    pull_secrets = [k8s.V1LocalObjectReference(name=ctx.ci.image_pull_secret)] if ctx.ci.image_pull_secret else None
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=step_pod_name(pipeline, step),
            namespace=ctx.ci.namespace,
            labels=step_labels(pipeline, step, ctx.values),
            annotations={"conveyor/description": step.doc},
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            # No container gets a token of the pod's ServiceAccount: a step that talks to a
            # cluster does it with the credentials it was given, in Conveyor's own scripts.
            automount_service_account_token=False,
            service_account_name=ctx.ci.service_account,
            image_pull_secrets=pull_secrets,
            init_containers=init_containers or None,
            containers=[main],
            volumes=volumes or None,
        ),
    )
