"""The approved manifests reach the deploy container byte for byte: Kubernetes expands $(NAME) and $$
in environment values, so the deploy step writes them escaped (operators.env_literal). Checked on the
real cluster with a manifest full of dollars, as the deploy pod's script reads it."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.operators import env_literal

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KUBECONFIGS = Path(os.environ.get("CONVEYOR_KUBECONFIGS", "/var/lib/conveyor/kubeconfigs"))
CI_NS = "conveyor-ci"
MANIFESTS = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    'data: {cmd: "echo $(date) $$ $HOME ${X} $(CONVEYOR_STEP) $$(KEEP)"}\n'
)


def test_the_deploy_container_sees_exactly_the_approved_bytes(cleanup: list[Callable[[], object]]) -> None:
    from kubernetes import client, config
    from kubernetes.client import models as k8s

    api = config.new_client_from_config(config_file=str(KUBECONFIGS / "admin.kubeconfig"))
    core: Any = client.CoreV1Api(api)
    pins = yaml.safe_load((REPO / "images" / "images.yaml").read_text())
    name = f"deploy-bytes-{uuid.uuid4().hex[:8]}"
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "conveyor-tests"}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            automount_service_account_token=False,
            image_pull_secrets=[k8s.V1LocalObjectReference(name="conveyor-registry")],
            containers=[
                k8s.V1Container(
                    name="base",
                    image=f"{pins['registry']}/{pins['images']['toolbox']}",
                    command=["bash", "-c", 'printf "%s" "$CONVEYOR_MANIFESTS" | sha256sum'],
                    env=[
                        k8s.V1EnvVar(name="CONVEYOR_STEP", value="deploy_dev"),
                        k8s.V1EnvVar(name="CONVEYOR_MANIFESTS", value=env_literal(MANIFESTS)),
                    ],
                )
            ],
        ),
    )
    core.create_namespaced_pod(CI_NS, pod)
    cleanup.append(lambda: core.delete_namespaced_pod(name, CI_NS, grace_period_seconds=0))
    deadline = time.monotonic() + 120
    while core.read_namespaced_pod(name, CI_NS).status.phase not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, f"pod {name} did not finish in 120 s"
        time.sleep(1)
    # the raw log (the client would otherwise turn the bytes into their Python repr)
    seen = core.read_namespaced_pod_log(name, CI_NS, _preload_content=False).data.decode().split()[0]
    assert seen == hashlib.sha256(MANIFESTS.encode()).hexdigest()
