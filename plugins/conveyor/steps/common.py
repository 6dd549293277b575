"""What every step pod shares: labels, the workspace, credentials from Secrets, the scripts.

The step scripts live in ``scripts/`` beside this module. A pod runs one of them as
``bash -c <lib.sh + script> conveyor-<step> ARG...``: the script text is Conveyor's
own, and every value from a spec or a run is a separate argument or environment
variable, never pasted into the script.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

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


@cache
def script(name: str) -> str:
    folder = resources.files("conveyor.steps") / "scripts"
    return (folder / "lib.sh").read_text() + "\n" + (folder / f"{name}.sh").read_text()


def script_command(name: str, step_id: str) -> list[str]:
    """The container command that runs a step script; its arguments follow in ``args``."""
    return ["bash", "-c", script(name), f"conveyor-{step_id}"]


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


def secret_env(refs: tuple[SecretRef, ...]) -> list[k8s.V1EnvVar]:
    """Credentials handed to the container by reference to their Secret (values never in the spec)."""
    env: list[k8s.V1EnvVar] = []
    for ref in refs:
        if ref.kind == "git":
            env += [_from_secret("GIT_USERNAME", ref, "username"), _from_secret("GIT_PASSWORD", ref, "password")]
        elif ref.kind == "sonar":
            env += [_from_secret("SONAR_HOST_URL", ref, "host"), _from_secret("SONAR_TOKEN", ref, "token")]
        elif ref.kind == "registry":
            env.append(k8s.V1EnvVar(name="REGISTRY_AUTH_FILE", value=f"{REGISTRY_AUTH_DIR}/auth.json"))
        elif ref.kind == "kubeconfig":
            env.append(k8s.V1EnvVar(name="KUBECONFIG", value=f"{KUBECONFIG_DIR}/config"))
    return env


def _from_secret(name: str, ref: SecretRef, key: str) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name=name,
        value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=ref.name, key=key)),
    )


def secret_volumes(refs: tuple[SecretRef, ...]) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    volumes: list[k8s.V1Volume] = []
    mounts: list[k8s.V1VolumeMount] = []
    for ref in refs:
        if ref.kind == "registry":
            items = [k8s.V1KeyToPath(key=".dockerconfigjson", path="auth.json")]
            mount = REGISTRY_AUTH_DIR
        elif ref.kind == "kubeconfig":
            items = [k8s.V1KeyToPath(key="config", path="config")]
            mount = KUBECONFIG_DIR
        else:
            continue
        volumes.append(
            k8s.V1Volume(
                name=f"{ref.kind}-credentials",
                secret=k8s.V1SecretVolumeSource(secret_name=ref.name, items=items, default_mode=0o440),
            )
        )
        mounts.append(k8s.V1VolumeMount(name=f"{ref.kind}-credentials", mount_path=mount, read_only=True))
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
    """Init container that checks out exactly the run's commit into the shared workspace."""
    refs = step_secrets(pipeline, step)
    git_refs = tuple(r for r in refs if r.kind == "git")
    _, mount = workspace_volume()
    return k8s.V1Container(
        name="fetch",
        image=ctx.images.ref("toolbox"),
        image_pull_policy="IfNotPresent",
        command=script_command("fetch", step.id),
        args=[pipeline.spec.git.url, ctx.values.commit, SOURCE_DIR],
        env=secret_env(git_refs),
        volume_mounts=[mount],
        resources=TOOLBOX_RESOURCES,
    )


def step_pod(
    pipeline: Pipeline,
    step: Step,
    ctx: PodContext,
    main: k8s.V1Container,
    *,
    init_containers: list[k8s.V1Container] | None = None,
    workspace: bool = True,
) -> k8s.V1Pod:
    """Assemble a step's pod around its main container (which must be named ``base``)."""
    refs = step_secrets(pipeline, step)
    volumes, mounts = secret_volumes(refs)
    if workspace:
        volume, mount = workspace_volume()
        volumes.insert(0, volume)
        mounts.insert(0, mount)
    main.volume_mounts = [*mounts, *(main.volume_mounts or [])] or None
    main.env = [*run_env(pipeline, step, ctx.values), *secret_env(refs), *(main.env or [])]
    if main.image_pull_policy is None:
        main.image_pull_policy = "IfNotPresent"
    pull_secrets = [k8s.V1LocalObjectReference(name=ctx.ci.image_pull_secret)] if ctx.ci.image_pull_secret else None
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=f"{pipeline.app}-{step.id.replace('_', '-')}",
            namespace=ctx.ci.namespace,
            labels=step_labels(pipeline, step, ctx.values),
            annotations={"conveyor/description": step.doc},
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            service_account_name=ctx.ci.service_account,
            image_pull_secrets=pull_secrets,
            init_containers=init_containers or None,
            containers=[main],
            volumes=volumes or None,
        ),
    )
