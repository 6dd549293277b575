"""Writes the `conveyor-registry` image pull Secret into namespaces (see pull-secrets)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SECRET = "conveyor-registry"
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
HOSTS = ("10.88.0.1:5000", "127.0.0.1:5000")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABELS = {"app.kubernetes.io/managed-by": "conveyor", "app.kubernetes.io/part-of": "conveyor"}


def fail(message: str) -> None:
    print(f"pull-secrets: error: {message}", file=sys.stderr)
    sys.exit(1)


def docker_config() -> str:
    path = STATE / "secrets" / "registry-password"
    if not path.is_file():
        fail(f"{path} does not exist: the registry was never set up. Run: scripts/registry/up")
    password = path.read_text(encoding="utf-8").strip()
    token = base64.b64encode(f"conveyor:{password}".encode()).decode()
    entry = {"username": "conveyor", "password": password, "auth": token}
    return json.dumps({"auths": {host: entry for host in HOSTS}})


def secret_manifest(namespace: str, config: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": namespace, "labels": LABELS},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def with_kubectl(kubectl: str, kubeconfig: str, namespaces: list[str], config: str) -> None:
    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([kubectl, "--kubeconfig", kubeconfig, *args], input=stdin,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode:
            fail(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()}")
        return result

    for ns in namespaces:
        ns_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        if run("get", "namespace", ns, check=False).returncode:
            run("apply", "-f", "-", stdin=json.dumps(ns_doc))
        run("apply", "-f", "-", stdin=json.dumps(secret_manifest(ns, config)))
        for _ in range(30):
            accounts = json.loads(run("-n", ns, "get", "serviceaccounts", "-o", "json").stdout)["items"]
            if any(a["metadata"]["name"] == "default" for a in accounts):
                break
            time.sleep(1)
        else:
            print(f"pull-secrets: warning: {ns} has no default ServiceAccount yet (is kube-controller-manager "
                  f"running?); pods there must name imagePullSecrets: {SECRET}", file=sys.stderr)
        for account in accounts:
            names = [s.get("name") for s in account.get("imagePullSecrets") or []]
            if SECRET not in names:
                patch = {"imagePullSecrets": [{"name": n} for n in names] + [{"name": SECRET}]}
                run("-n", ns, "patch", "serviceaccount", account["metadata"]["name"], "--type=merge",
                    "-p", json.dumps(patch))
        print(f"pull-secrets: {ns}/{SECRET} ready", file=sys.stderr)


def with_client(kubeconfig: str, namespaces: list[str], config: str) -> None:
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException

    api_client = kube_config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api_client)
    try:
        core.list_namespace(limit=1, _request_timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the cluster is unreachable
        fail(f"the cluster in {kubeconfig} does not answer ({exc.__class__.__name__}: {exc}). "
             "Is it up? Run: make cluster-up")
    for ns in namespaces:
        try:
            core.read_namespace(ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            print(f"pull-secrets: created namespace {ns}", file=sys.stderr)
        body = secret_manifest(ns, config)
        try:
            core.replace_namespaced_secret(SECRET, ns, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespaced_secret(ns, body)
        for _ in range(30):
            accounts = core.list_namespaced_service_account(ns).items
            if any(a.metadata.name == "default" for a in accounts):
                break
            time.sleep(1)
        else:
            print(f"pull-secrets: warning: {ns} has no default ServiceAccount yet (is kube-controller-manager "
                  f"running?); pods there must name imagePullSecrets: {SECRET}", file=sys.stderr)
        for account in accounts:
            names = [s.name for s in account.image_pull_secrets or []]
            if SECRET not in names:
                refs = [{"name": n} for n in names] + [{"name": SECRET}]
                core.patch_namespaced_service_account(account.metadata.name, ns, {"imagePullSecrets": refs})
        print(f"pull-secrets: {ns}/{SECRET} ready", file=sys.stderr)
    api_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="pull-secrets")
    parser.add_argument("--kubectl")
    parser.add_argument("kubeconfig")
    parser.add_argument("namespaces", nargs="+")
    args = parser.parse_args()
    if not Path(args.kubeconfig).is_file():
        fail(f"kubeconfig {args.kubeconfig} does not exist "
             f"(the cluster writes them to {STATE}/kubeconfigs; run make cluster-up)")
    bad = [ns for ns in args.namespaces if not DNS1123.match(ns)]
    if bad:
        fail(f"not DNS-1123 namespace names: {', '.join(bad)} (lowercase letters, digits, '-', at most 63)")
    config = docker_config()
    if args.kubectl:
        with_kubectl(args.kubectl, args.kubeconfig, args.namespaces, config)
    else:
        with_client(args.kubeconfig, args.namespaces, config)


if __name__ == "__main__":
    main()
