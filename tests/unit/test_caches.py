"""The build caches (conveyor/steps/caches.py): which containers mount which cache of which app, and what the
cache scripts do with a Maven repository and pip's folder when runs overlap, a cache outgrows its budget or
a user clears it. The scripts run here for real (sh and bash), on temporary folders standing in for the
claim and the workspace."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from conveyor.pipeline import RunValues, build_pipeline
from conveyor.settings import CiCluster, StepImages
from conveyor.spec import load_spec
from conveyor.steps import PodContext, build_step_pod
from conveyor.steps.caches import (
    CACHE_CLAIM,
    CACHES,
    DEPS_DIR,
    LAYERS_DIR,
    CacheKind,
    clear_pod,
    dependency_caches,
    deps_script,
)
from conveyor.steps.common import SCRIPTS_DIR, script, scripts_config_map_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IMAGES = StepImages(
    registry="registry.test:5000",
    refs={
        "toolbox": "conveyor/toolbox:1",
        "python": "conveyor/python-builder:3.11",
        "maven": "conveyor/maven-builder:3-jdk17",
        "python-runtime": "conveyor/python-runtime:3.11",
        "java-runtime": "conveyor/java-runtime:17",
    },
)
CI = CiCluster(
    connection_id="k8s_ci", namespace="conveyor-ci", image_pull_secret="conveyor-registry", service_account=None
)


def pipeline_of(app: str) -> Any:
    return build_pipeline(load_spec(FIXTURES / "apps" / "valid" / f"{app}.yaml", FIXTURES / "manifests"))


def build_pod(app: str) -> dict[str, Any]:
    pipeline = pipeline_of(app)
    ctx = PodContext(ci=CI, images=IMAGES, values=RunValues.airflow(pipeline.spec))
    pod = build_step_pod(pipeline, pipeline.step("build"), ctx)
    return ApiClient().sanitize_for_serialization(pod)


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]}


def cache_mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["subPath"] for m in container.get("volumeMounts", []) if m["name"] == "caches"}


# --- the pod specs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["minimal", "full", "s2i", "b2i"])
def test_the_build_pod_claims_the_teams_cache_and_mounts_only_its_apps_folder(app: str) -> None:
    pod = build_pod(app)
    assert {"name": "caches", "persistentVolumeClaim": {"claimName": CACHE_CLAIM}} in pod["spec"]["volumes"]
    for name, container in containers(pod).items():
        for sub_path in cache_mounts(container).values():
            assert sub_path.startswith(f"apps/{app}/"), f"{name} mounts {sub_path}"
    # the image build keeps buildah's storage; the containers with credentials see no cache at all
    assert cache_mounts(containers(pod)["build"])[LAYERS_DIR] == f"apps/{app}/layers"
    assert cache_mounts(containers(pod)["build"])["/var/tmp/buildah-cache"] == f"apps/{app}/layers/mounts"
    for name in ("fetch", "prepare", "base"):
        assert cache_mounts(containers(pod)[name]) == {}, f"{name} holds credentials and must not mount a cache"


@pytest.mark.parametrize("app", ["full", "b2i"])
def test_the_package_command_runs_inside_the_dependency_cache_wrapper(app: str) -> None:
    package = containers(build_pod(app))["package"]
    spec = pipeline_of(app).spec
    assert package["command"] == ["sh", f"{SCRIPTS_DIR}/deps_cache.sh", *spec.package.command]
    assert cache_mounts(package) == {DEPS_DIR: f"apps/{app}/deps"}
    budgets = {e["name"]: e["value"] for e in package["env"]}["CONVEYOR_CACHE_BUDGETS"]
    assert budgets == f"pip={1024 * 1024} maven={2048 * 1024}"


def test_only_a_source_to_image_build_mounts_the_dependency_caches_into_the_image_build() -> None:
    assert DEPS_DIR in cache_mounts(containers(build_pod("s2i"))["build"])
    for app in ("minimal", "full", "b2i"):
        assert DEPS_DIR not in cache_mounts(containers(build_pod(app))["build"])


def test_the_unit_test_wiring_gets_one_volume_its_mount_and_its_budgets() -> None:
    deps = dependency_caches(pipeline_of("full"), "unit_test")
    assert [v.name for v in deps.volumes] == ["caches"]
    assert [(m.mount_path, m.sub_path) for m in deps.mounts] == [(DEPS_DIR, "apps/full/deps")]
    assert deps.command(["mvn", "test"])[-2:] == ["mvn", "test"]
    assert deps.command(["mvn", "test"])[:2] == ["sh", f"{SCRIPTS_DIR}/deps_cache.sh"]


def test_every_cache_has_a_budget() -> None:
    assert set(CACHES) == set(CacheKind)
    assert all(record.budget_mib > 0 for record in CACHES.values())


def test_clearing_runs_in_the_apps_namespace_as_no_privileged_pod() -> None:
    pod = ApiClient().sanitize_for_serialization(clear_pod("appointments", "conveyor-ci", "r/toolbox:1", "pull"))
    assert pod["metadata"]["namespace"] == "conveyor-ci"
    assert pod["spec"]["volumes"][0] == {"name": "caches", "persistentVolumeClaim": {"claimName": CACHE_CLAIM}}
    assert pod["spec"]["volumes"][1]["configMap"]["name"] == scripts_config_map_name()  # the scripts, nothing else
    assert len(pod["spec"]["volumes"]) == 2
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["bash", f"{SCRIPTS_DIR}/cache_clear.sh"]
    assert container["command"][-1] == "apps/appointments"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"add": ["DAC_OVERRIDE", "FOWNER"], "drop": ["ALL"]},
        "runAsUser": 0,
    }
    assert pod["spec"]["automountServiceAccountToken"] is False


# --- the dependency cache wrapper, run for real --------------------------------------------------------------


def _wrapper(tmp_path: Path) -> str:
    """deps_cache.sh pointed at folders under tmp_path instead of the claim and the workspace."""
    return (
        deps_script()
        .replace("/var/cache/conveyor/deps", str(tmp_path / "deps"))
        .replace("/workspace/conveyor", str(tmp_path / "workspace"))
    )


def _run_wrapped(tmp_path: Path, command: str, env: dict[str, str] | None = None, workspace: str = "workspace") -> Any:
    text = _wrapper(tmp_path).replace(str(tmp_path / "workspace"), str(tmp_path / workspace))
    environment = {"PATH": os.environ["PATH"], **(env or {})}
    return subprocess.run(
        ["sh", "-c", text, "conveyor-test", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


# A stand-in for Maven: prints what it was told and writes into the local repository it was given.
FAKE_MAVEN = r"""
repo="${MAVEN_OPTS##*-Dmaven.repo.local=}"
echo "MAVEN_OPTS=$MAVEN_OPTS PIP_CACHE_DIR=$PIP_CACHE_DIR"
ls "$repo/org/known/1.0/" 2>/dev/null | sed 's/^/restored: /'
mkdir -p "$repo/org/new/$1"
printf 'jar of %s\n' "$1" > "$repo/org/new/$1/new-$1.jar"
touch "$repo/org/new/$1/failed.jar.lastUpdated"
exit "${2:-0}"
"""


def test_maven_works_on_a_copy_and_only_what_it_added_goes_back(tmp_path: Path) -> None:
    shared = tmp_path / "deps" / "maven"
    (shared / "org" / "known" / "1.0").mkdir(parents=True)
    (shared / "org" / "known" / "1.0" / "known-1.0.jar").write_text("cached jar\n")
    fake = tmp_path / "mvn.sh"
    fake.write_text(FAKE_MAVEN)
    result = _run_wrapped(tmp_path, f"sh {fake} 2.0 3", env={"MAVEN_OPTS": "-Xmx512m"})
    assert result.returncode == 3, "the wrapper must end with the command's exit code"
    repo = tmp_path / "workspace" / "maven-repository"
    assert f"MAVEN_OPTS=-Xmx512m -Dmaven.repo.local={repo}" in result.stdout
    assert f"PIP_CACHE_DIR={tmp_path / 'deps' / 'pip'}" in result.stdout
    assert "restored: known-1.0.jar" in result.stdout
    assert (shared / "org" / "new" / "2.0" / "new-2.0.jar").read_text() == "jar of 2.0\n"
    assert not (shared / "org" / "new" / "2.0" / "failed.jar.lastUpdated").exists(), "a failed download is no cache"
    assert "1 new or changed file(s) put into the Maven cache" in result.stdout
    assert not list(shared.rglob(".conveyor-*")), "temporary files left behind"


def test_a_file_changed_by_the_run_replaces_the_cached_one_and_symlinks_are_never_saved(tmp_path: Path) -> None:
    shared = tmp_path / "deps" / "maven"
    (shared / "org").mkdir(parents=True)
    (shared / "org" / "maven-metadata.xml").write_text("old\n")
    command = (
        'repo="${MAVEN_OPTS##*=}"; sleep 0.05; echo new > "$repo/org/maven-metadata.xml"; '
        'ln -s /etc/passwd "$repo/org/passwd.jar"'
    )
    assert _run_wrapped(tmp_path, command).returncode == 0
    assert (shared / "org" / "maven-metadata.xml").read_text() == "new\n"
    assert not (shared / "org" / "passwd.jar").exists() and not (shared / "org" / "passwd.jar").is_symlink()


def test_overlapping_runs_leave_a_complete_cache(tmp_path: Path) -> None:
    """Eight runs at once, each adding its own artifacts and rewriting one shared file: afterwards every
    artifact is in the cache whole, the shared file is one run's whole version and no temporary file is left."""
    fake = tmp_path / "mvn.sh"
    fake.write_text(
        'repo="${MAVEN_OPTS##*=}"; mkdir -p "$repo/org/same"\n'
        'for i in 1 2 3 4 5 6 7 8 9 10; do mkdir -p "$repo/org/run$1/$i"; '
        'head -c 200000 /dev/zero | tr "\\0" "$1" > "$repo/org/run$1/$i/a.jar"; done\n'
        'head -c 200000 /dev/zero | tr "\\0" "$1" > "$repo/org/same/same.jar"\n'
    )
    results: list[Any] = []

    def run(n: int) -> None:
        results.append(_run_wrapped(tmp_path, f"sh {fake} {n}", workspace=f"workspace-{n}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    shared = tmp_path / "deps" / "maven" / "org"
    for n in range(1, 9):
        for i in range(1, 11):
            assert (shared / f"run{n}" / str(i) / "a.jar").read_bytes() == str(n).encode() * 200000
    same = (shared / "same" / "same.jar").read_bytes()
    assert len(same) == 200000 and len(set(same)) == 1, "the file written by all runs is one run's whole version"
    assert not list(shared.rglob(".conveyor-*"))


def test_a_cache_over_its_budget_is_moved_aside_and_deleted_a_day_later(tmp_path: Path) -> None:
    pip = tmp_path / "deps" / "pip"
    pip.mkdir(parents=True)
    (pip / "big.whl").write_bytes(b"x" * 300_000)
    old = tmp_path / "deps" / ".trash" / "pip-1"
    old.mkdir(parents=True)
    os.utime(old, (0, 0))
    result = _run_wrapped(tmp_path, "true", env={"CONVEYOR_CACHE_BUDGETS": "pip=100 maven=100000"})
    assert result.returncode == 0
    assert "the pip cache held" in result.stdout and "over its budget of 100 KiB: emptied" in result.stdout
    assert not (pip / "big.whl").exists()
    trashed = list((tmp_path / "deps" / ".trash").iterdir())
    assert len(trashed) == 1 and (trashed[0] / "big.whl").exists(), "moved aside, not deleted under other runs"
    assert not old.exists(), "trash older than a day is deleted"
    assert (tmp_path / "deps" / "maven").is_dir()


# --- clearing, run for real ----------------------------------------------------------------------------------


def test_clearing_renames_the_apps_folder_away_then_deletes_it(tmp_path: Path) -> None:
    app = tmp_path / "cache" / "apps" / "appointments"
    (app / "layers").mkdir(parents=True)
    (app / "layers" / ".lock").touch()
    (app / "deps" / "pip").mkdir(parents=True)
    other = tmp_path / "cache" / "apps" / "reminders" / "deps"
    other.mkdir(parents=True)
    text = script("cache_clear").replace("/cache", str(tmp_path / "cache"))
    result = subprocess.run(
        ["bash", "-c", text, "conveyor-cache_clear", "apps/appointments"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "the caches of appointments are cleared" in result.stdout
    assert not app.exists() and other.is_dir()
    assert list((tmp_path / "cache" / "trash").iterdir()) == []
    again = subprocess.run(
        ["bash", "-c", text, "conveyor-cache_clear", "apps/appointments"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "appointments has no caches here" in again.stdout


def test_clearing_also_deletes_the_caches_of_apps_unused_for_two_weeks(tmp_path: Path) -> None:
    apps = tmp_path / "cache" / "apps"
    old, recent, new = apps / "gone-app", apps / "busy-app", apps / "new-app"
    for folder in (old, recent):
        (folder / "deps").mkdir(parents=True)
        (folder / "deps" / ".used").touch()
    new.mkdir(parents=True)
    weeks_ago = time.time() - 20 * 86400
    for path in (old / "deps" / ".used", old / "deps", old):
        os.utime(path, (weeks_ago, weeks_ago))
    text = script("cache_clear").replace("/cache", str(tmp_path / "cache"))
    result = subprocess.run(
        ["bash", "-c", text, "conveyor-cache_clear", "apps/other"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "the caches of gone-app were not used for 14 days: deleted" in result.stdout
    assert not old.exists() and recent.is_dir() and new.is_dir()


def test_the_cache_scripts_parse() -> None:
    assert subprocess.run(["sh", "-n", "-c", deps_script()]).returncode == 0
    for name in ("build", "cache_clear"):
        assert subprocess.run(["bash", "-n", "-c", script(name)]).returncode == 0, name
