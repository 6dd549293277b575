"""The deploy step's script (steps/scripts/deploy.sh) when the Kubernetes API does not answer for a moment:
apply and rollout status are made again until the rollout timeout, and a real error still fails at once.
Run with bash as the deploy pod runs it, against a stand-in kubectl that answers as a briefly unreachable
API server does (the real cluster is tests/integration's)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from conveyor.steps.common import script

MANIFESTS = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
UNREACHABLE = "Unable to connect to the server: dial tcp 10.88.0.1:6443: i/o timeout"
# kubectl as a stand-in: the first call of each verb in $FAIL_ONCE fails with $FAIL_TEXT; calls are logged.
KUBECTL = """#!/usr/bin/env bash
verb="$1"; [[ "$verb" == rollout ]] && verb="rollout-$2"
echo "$verb" >> "$CALLS"
if [[ " $FAIL_ONCE " == *" $verb "* && ! -e "$CALLS.$verb" ]]; then
  touch "$CALLS.$verb"; echo "$FAIL_TEXT" >&2; exit 1
fi
case "$verb" in
  apply) echo deployment.apps/web ;;
  rollout-status) echo 'deployment "web" successfully rolled out' ;;
esac
"""


def run_deploy(
    tmp_path: Path, fail_once: str, fail_text: str = UNREACHABLE
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path),
        "CALLS": str(calls),
        "FAIL_ONCE": fail_once,
        "FAIL_TEXT": fail_text,
        "CONVEYOR_MANIFESTS": MANIFESTS,
        "CONVEYOR_MANIFESTS_SHA256": hashlib.sha256(MANIFESTS.encode()).hexdigest(),
    }
    result = subprocess.run(
        ["bash", "-c", script("deploy"), "conveyor-deploy_dev", "dev", "dev", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, calls.read_text().split() if calls.exists() else []


def test_an_api_server_that_does_not_answer_for_a_moment_fails_nothing(tmp_path: Path) -> None:
    result, calls = run_deploy(tmp_path, "apply rollout-status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["apply", "apply", "rollout-status", "rollout-status"]
    assert "the Kubernetes API did not answer; applying again" in result.stdout
    assert "waiting for deployment.apps/web again" in result.stdout
    assert "deployed to dev: 1 rollout(s) ready" in result.stdout


def test_a_real_apply_error_fails_at_once_and_says_what_to_do(tmp_path: Path) -> None:
    result, calls = run_deploy(tmp_path, "apply", 'error: resource mapping not found for name: "web"')
    assert result.returncode == 1
    assert calls == ["apply"]
    assert "kubectl apply to dev failed (above); fix the cause and run the deploy again" in result.stderr
