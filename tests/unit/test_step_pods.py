"""Golden-file tests of every step's pod, plus the properties a reviewer checks by eye.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 make test-unit`` and review the diff.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from conveyor.cli import to_yaml
from conveyor.credentials import bind_pod_secrets, remove_secrets
from conveyor.pipeline import RunValues, SecretRef, build_pipeline, step_secrets
from conveyor.settings import CiCluster, StepImages
from conveyor.spec import load_spec
from conveyor.steps import PodContext, build_step_pod
from conveyor.steps.common import SCRIPTS_DIR as STEP_SCRIPTS_DIR
from conveyor.steps.common import script, scripts_config_map, scripts_config_map_name, step_scripts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
IMAGES = StepImages(
    registry="registry.test:5000",
    refs={
        "toolbox": "conveyor/toolbox:1",
        "python": "conveyor/python-builder:3.11",
        "maven": "conveyor/maven-builder:3-jdk17",
        "python-runtime": "conveyor/python-runtime:3.11",
        "java-runtime": "conveyor/java-runtime:17",
        "sonar-scanner": "conveyor/sonar-scanner:5",
    },
)
CI = CiCluster(
    connection_id="k8s_ci", namespace="conveyor-ci", image_pull_secret="conveyor-registry", service_account=None
)
APPS = ["minimal", "full", "s2i", "b2i"]


SCRIPTS = ["checkout", "fetch", "prepare", "build", "publish", "promote", "tag", "deploy", "unit_test", "sonar"]
SCRIPTS_SOURCE = resources.files("conveyor.steps") / "scripts"


def pipeline_of(app: str) -> Any:
    return build_pipeline(load_spec(FIXTURES / "apps" / "valid" / f"{app}.yaml", FIXTURES / "manifests"))


def values_of(app: str) -> RunValues:
    return RunValues.airflow(pipeline_of(app).spec)


def pod_objects(app: str) -> dict[str, Any]:
    pipeline = pipeline_of(app)
    ctx = PodContext(ci=CI, images=IMAGES, values=RunValues.airflow(pipeline.spec))
    return {s.id: build_step_pod(pipeline, s, ctx) for s in pipeline.steps if not s.is_gate}


def pods(app: str) -> dict[str, dict]:
    return {step: ApiClient().sanitize_for_serialization(pod) for step, pod in pod_objects(app).items()}


def containers(pod: dict) -> list[dict]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def with_script_markers(pod: dict) -> dict:
    """Golden files name the scripts' ConfigMap by a marker, not by the hash of the scripts' text (tested
    separately): a change to a script does not change every golden file."""
    for volume in pod["spec"].get("volumes", []):
        if volume.get("configMap", {}).get("name") == scripts_config_map_name():
            volume["configMap"]["name"] = "<conveyor step scripts>"
    return pod


CASES = [(app, step) for app in APPS for step in pods(app)]


@pytest.mark.parametrize(("app", "step"), CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_pod_matches_golden_file(app: str, step: str) -> None:
    text = to_yaml(with_script_markers(pods(app)[step]))
    golden = GOLDEN / app / f"{step}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing; run with UPDATE_GOLDEN=1 to create it, then review it"
    assert text == golden.read_text()


@pytest.mark.parametrize("app", APPS)
def test_every_pod_is_labelled_for_kubectl(app: str) -> None:
    for step, pod in pods(app).items():
        labels = pod["metadata"]["labels"]
        assert labels["conveyor/app"] == app
        assert labels["conveyor/step"] == step.replace("_", "-")
        assert labels["conveyor/run"] == "{{ run_id | conveyor_label }}"
        assert labels["app.kubernetes.io/name"] == app
        assert labels["app.kubernetes.io/managed-by"] == "conveyor"
        assert ("conveyor/commit" in labels) == (step != "checkout")


@pytest.mark.parametrize("app", APPS)
def test_commands_are_argument_lists_and_credentials_are_references(app: str) -> None:
    for pod in pods(app).values():
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["imagePullSecrets"] == [{"name": "conveyor-registry"}]
        assert pod["spec"]["containers"][0]["name"] == "base"
        for c in containers(pod):
            assert isinstance(c["command"], list) and all(isinstance(a, str) for a in c["command"])
            for env in c.get("env", []):
                if env["name"] in {"GIT_PASSWORD", "GIT_USERNAME", "SONAR_TOKEN", "SONAR_HOST_URL"}:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"]
                if env["name"] in {"REGISTRY_AUTH_FILE", "KUBECONFIG"}:
                    assert env["value"].startswith("/var/run/conveyor/")


def test_every_later_step_works_on_the_checked_out_commit() -> None:
    commit = values_of("full").commit
    for step, pod in pods("full").items():
        if step == "checkout":
            continue
        for c in containers(pod):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("COMMIT_SHA", commit) == commit, f"{step}/{c['name']}"
        assert {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["COMMIT_SHA"] == commit
        fetch = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "fetch"]
        if step in {"unit_test", "sonar", "build"}:
            assert fetch and fetch[0]["args"][1] == commit


def test_build_pushes_both_snapshot_tags_and_deploys_use_the_digest() -> None:
    full, values = pods("full"), values_of("full")
    number, branch = values.build_number, values.branch_tag
    repository = "{{ conveyor_registry() }}/payments/full"
    tags = [f"SNAPSHOT-{branch}-{number}", f"SNAPSHOT-{number}"]
    assert full["build"]["spec"]["containers"][0]["args"] == [repository, *tags]
    build = {c["name"]: c for c in containers(full["build"])}
    assert build["build"]["args"] == ["dockerfile", "service", "docker/Dockerfile", repository, tags[0]]
    # a rerun looks for the build's own tag, which no other build has
    assert build["prepare"]["args"] == ["dockerfile", "docker/Dockerfile", repository, tags[-1]]
    digest = values.digest
    assert full["push"]["spec"]["containers"][0]["args"] == [repository, digest, "latest"]
    assert full["tag"]["spec"]["containers"][0]["args"][-1] == digest


def test_deploys_apply_the_environments_manifests() -> None:
    full = pods("full")
    deploy_env = {e["name"]: e["value"] for e in full["deploy_prod"]["spec"]["containers"][0]["env"] if "value" in e}
    # Not rendered into the pod spec from the files: the operator hands on the approved bytes after its check.
    assert "CONVEYOR_MANIFESTS" not in deploy_env
    assert full["deploy_prod"]["spec"]["containers"][0]["args"] == ["prod", "payments", "600"]


@pytest.mark.parametrize("app", APPS)
def test_build_runs_its_containers_in_order_and_the_pusher_only_reads_the_workspace(app: str) -> None:
    pod = pods(app)["build"]
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names == ["fetch", "prepare", *(["package"] if app in {"full", "b2i"} else []), "build"]
    main = pod["spec"]["containers"][0]
    assert main["command"] == ["bash", f"{STEP_SCRIPTS_DIR}/publish.sh"]
    assert {"mountPath": "/workspace", "name": "workspace", "readOnly": True} in main["volumeMounts"]
    assert "securityContext" not in main


def test_build_runs_with_the_least_privilege_buildah_needs() -> None:
    pod = pods("minimal")["build"]
    security = {c["name"]: c.get("securityContext") for c in containers(pod)}
    assert {name for name, context in security.items() if context} == {"build"}
    build = security["build"]
    assert "privileged" not in build and build["allowPrivilegeEscalation"] is False
    assert build["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID", "SETFCAP"]}
    assert build["seccompProfile"] == {"type": "Localhost", "localhostProfile": "conveyor/buildah.json"}


def _container(pod: dict, name: str) -> dict:
    return next(c for c in containers(pod) if c["name"] == name)


def test_source_and_binary_builds_write_their_dockerfile_from_the_runtime_image() -> None:
    s2i_pod = pods("s2i")["build"]
    s2i = {e["name"]: e.get("value") for e in _container(s2i_pod, "build")["env"]}
    assert s2i["CONVEYOR_BASE_IMAGE"] == "registry.test:5000/conveyor/python-runtime:3.11"
    assert s2i["CONVEYOR_CMD"] == '["python3", "-m", "s2i_app"]'
    # the base image is downloaded by the prepare container, which has the registry credentials
    prepare = {e["name"]: e.get("value") for e in _container(s2i_pod, "prepare")["env"]}
    assert prepare["CONVEYOR_BASE_IMAGE"] == s2i["CONVEYOR_BASE_IMAGE"]
    b2i_pod = pods("b2i")["build"]
    b2i = {e["name"]: e.get("value") for e in _container(b2i_pod, "build")["env"]}
    assert b2i["CONVEYOR_BASE_IMAGE"] == "registry.test:5000/conveyor/java-runtime:17"
    assert b2i["CONVEYOR_COPY"] == "target/*.jar"
    package = _container(b2i_pod, "package")
    assert package["command"] == [
        "sh",
        f"{STEP_SCRIPTS_DIR}/deps_cache.sh",
        "mvn",
        "clean",
        "package",
        "-Dmaven.test.skip=true",
    ]


# --- who gets which credential -------------------------------------------------------------

# What each container of each step is handed, written out here (not taken from the code under
# test). The containers that run code from the app's repository get nothing but sonar's token.
EXPECTED_CREDENTIALS = {
    "checkout": {"base": {"git"}},
    "unit_test": {"fetch": {"git"}, "test": set(), "base": set()},
    "sonar": {"fetch": {"git"}, "base": {"sonar"}},
    "build": {"fetch": {"git"}, "prepare": {"registry"}, "package": set(), "build": set(), "base": {"registry"}},
    "push": {"base": {"registry"}},
    "tag": {"base": {"git", "registry"}},
    "deploy_dev": {"base": {"kubeconfig"}},
    "deploy_prod": {"base": {"kubeconfig"}},
}
RUNS_APP_CODE = {("unit_test", "test"), ("sonar", "base"), ("build", "package"), ("build", "build")}
CREDENTIAL_VARIABLES = {"GIT_USERNAME", "GIT_PASSWORD", "REGISTRY_AUTH_FILE", "KUBECONFIG", "SONAR_TOKEN"}


def credentials_of(pod: dict, container: dict, kinds: dict[str, str]) -> set[str]:
    """The secret kinds a container can read: from Secret references in its environment and from
    the Secret volumes it mounts (``kinds``: Secret name -> kind)."""
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
    found = set()
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            found.add(kinds[ref["name"]])
    for mount in container.get("volumeMounts", []):
        if mount["name"] in secret_volumes:
            found.add(kinds[secret_volumes[mount["name"]]])
    return found


@pytest.mark.parametrize("app", APPS)
def test_each_container_gets_exactly_its_credentials(app: str) -> None:
    pipeline = pipeline_of(app)
    for step, pod in pods(app).items():
        kinds = {ref.name: ref.kind for ref in step_secrets(pipeline, pipeline.step(step))}
        got = {c["name"]: credentials_of(pod, c, kinds) for c in containers(pod)}
        expected = {name: kinds_ for name, kinds_ in EXPECTED_CREDENTIALS[step].items() if name in got}
        assert got == expected, step
        # a Secret is a volume of the pod only when some container mounts it
        mounted = {m["name"] for c in containers(pod) for m in c.get("volumeMounts", [])}
        assert {v["name"] for v in pod["spec"].get("volumes", [])} <= mounted


@pytest.mark.parametrize("app", APPS)
def test_containers_that_run_the_apps_code_hold_no_git_registry_or_cluster_credential(app: str) -> None:
    checked = 0
    for step, pod in pods(app).items():
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in containers(pod):
            if (step, c["name"]) not in RUNS_APP_CODE:
                continue
            checked += 1
            secret_refs = [e for e in c.get("env", []) if "valueFrom" in e]
            allowed = {"SONAR_HOST_URL", "SONAR_TOKEN"} if step == "sonar" else set()
            assert {e["name"] for e in secret_refs} <= allowed, f"{step}/{c['name']}"
            variables = {e["name"] for e in c.get("env", [])}
            assert not (variables & CREDENTIAL_VARIABLES - allowed), f"{step}/{c['name']}"
            for mount in c.get("volumeMounts", []):
                assert "secret" not in volumes[mount["name"]], f"{step}/{c['name']} mounts {mount['name']}"
                assert not mount["mountPath"].startswith("/var/run/conveyor"), f"{step}/{c['name']}"
    assert checked == (4 if app == "full" else 3 if app == "b2i" else 2)


@pytest.mark.parametrize("app", APPS)
def test_no_pod_mounts_a_service_account_token(app: str) -> None:
    for pod in pods(app).values():
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod["spec"]  # the namespace's default account, which has no role


def test_the_scanner_sends_its_token_only_to_the_connections_server() -> None:
    args = pods("full")["sonar"]["spec"]["containers"][0]["args"]
    # on the command line, it wins over a sonar.host.url in the repository's sonar-project.properties
    assert args[0] == "-Dsonar.host.url=$(SONAR_HOST_URL)"


# --- the Secrets of one step of one run ----------------------------------------------------


def test_a_steps_secrets_are_its_own_and_valid_names() -> None:
    pipeline = pipeline_of("full")
    build = pipeline.step("build")
    mine = step_secrets(pipeline, build, run_id="manual__2026-05-01T10:00:00+00:00")
    other_run = step_secrets(pipeline, build, run_id="manual__2026-05-01T10:00:01+00:00")
    other_step = step_secrets(pipeline, pipeline.step("tag"), run_id="manual__2026-05-01T10:00:00+00:00")
    assert [r.kind for r in mine] == [r.kind for r in step_secrets(pipeline, build)]
    names = {r.name for r in (*mine, *other_run, *other_step)}
    assert len(names) == 6
    assert all(r.template_name == SecretRef(r.kind, r.connection_id).name for r in mine)
    for ref in (*mine, SecretRef.for_step("kubeconfig", "x" * 200, app="a" * 63, run_id="r" * 250, step="deploy_prod")):
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", ref.name) and len(ref.name) <= 63, ref.name
    # the same app name in another DAG's run with the same id: still another Secret
    twin = SecretRef.for_step("git", "git_payments", app="other", run_id=mine[0].run_id, step="build")
    assert twin.name != mine[0].name


def secret_names(pod: dict) -> list[str]:
    """Every Secret a pod refers to, once per reference (pull secrets aside)."""
    env = [e for c in containers(pod) for e in c.get("env", [])]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e]
    return refs + [v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v]


def test_bind_pod_secrets_points_every_reference_at_the_runs_secrets() -> None:
    pipeline = pipeline_of("full")
    for step_id in ("build", "sonar", "tag", "deploy_prod"):
        pod = pod_objects("full")[step_id]
        refs = step_secrets(pipeline, pipeline.step(step_id), run_id="scheduled__2026-05-01T03:00:00+00:00")
        renamed = {r.template_name: r.name for r in refs}
        before = secret_names(ApiClient().sanitize_for_serialization(pod))
        assert before and set(before) == set(renamed), step_id
        after = secret_names(ApiClient().sanitize_for_serialization(bind_pod_secrets(pod, refs)))
        assert after == [renamed[name] for name in before], step_id


class FakeCoreV1:
    """Records Secret deletions; answers 404 for names in ``missing`` and 403 for ``forbidden``."""

    def __init__(self, missing: set[str] = frozenset(), forbidden: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.missing, self.forbidden, self.deleted = missing, forbidden, []

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        if name in self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        if name in self.missing:
            raise ApiException(status=404, reason="Not Found")
        self.deleted.append((namespace, name))


def test_remove_secrets_deletes_what_the_step_made_and_ignores_what_is_gone() -> None:
    core = FakeCoreV1(missing={"b"})
    assert remove_secrets(core, "conveyor-ci", ["a", "b", "c"]) == ["a", "c"]
    assert core.deleted == [("conveyor-ci", "a"), ("conveyor-ci", "c")]
    with pytest.raises(ApiException):
        remove_secrets(FakeCoreV1(forbidden={"a"}), "conveyor-ci", ["a"])


@pytest.mark.parametrize("app", APPS)
def test_pods_carry_arguments_only_and_mount_the_scripts_they_run(app: str) -> None:
    """No script text in a pod spec: each container that runs a step script runs it from the scripts' ConfigMap,
    mounted read-only, and the ConfigMap holds every script a pod names."""
    scripts = step_scripts()
    for step, pod in pods(app).items():
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in containers(pod):
            named = [part for part in c.get("command", []) if part.startswith(f"{STEP_SCRIPTS_DIR}/")]
            if not named:
                continue
            assert named[0].removeprefix(f"{STEP_SCRIPTS_DIR}/") in scripts, (step, c["name"])
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == STEP_SCRIPTS_DIR)
            assert mount["readOnly"] is True
            assert volumes[mount["name"]]["configMap"]["name"] == scripts_config_map_name()
            assert all(len(part) < 300 for part in [*c.get("command", []), *c.get("args", [])]), (step, c["name"])


def test_the_scripts_configmap_is_named_by_its_content() -> None:
    config_map = scripts_config_map("conveyor-ci")
    assert config_map.immutable is True
    assert set(config_map.data) >= {f"{name}.sh" for name in SCRIPTS} | {"deps_cache.sh", "cache_clear.sh"}
    assert all(text.startswith("# Shared helpers") for name, text in config_map.data.items() if name != "deps_cache.sh")
    digest = hashlib.sha256(json.dumps(config_map.data, sort_keys=True).encode()).hexdigest()[:12]
    assert config_map.metadata.name == f"conveyor-steps-{digest}"


def test_scripts_parse_with_bash() -> None:
    for name in SCRIPTS:
        result = subprocess.run(["bash", "-n", "-c", script(name)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}.sh: {result.stderr}"


def test_the_unit_test_step_reports_even_when_the_tests_fail() -> None:
    pod = pods("full")["unit_test"]
    fetch, test = pod["spec"]["initContainers"]
    assert fetch["name"] == "fetch" and test["name"] == "test"
    # the app's command, as its own arguments, after a wrapper that keeps its exit code instead of failing,
    # inside the dependency caches' wrapper (steps/caches.py)
    assert test["command"][:4] == ["sh", f"{STEP_SCRIPTS_DIR}/deps_cache.sh", "sh", "-c"]
    assert test["command"][5:] == ["conveyor-unit_test", "mvn", "-B", "test"]
    assert test["image"] == "registry.example.com/builders/maven:3.9-jdk17"
    env = {e["name"]: e.get("value") for e in test["env"]}
    assert env["MAVEN_OPTS"] == "-Xmx512m" and env["BUILD_NUMBER"] == "{{ conveyor_run(ti).build_number }}"
    main = pod["spec"]["containers"][0]
    assert main["image"] == "registry.test:5000/conveyor/toolbox:1"
    assert main["args"] == ["reports/*.xml", "target/surefire-reports/*.xml", "build/test-results/**/*.xml"]
    assert {"mountPath": "/workspace", "name": "workspace", "readOnly": True} in main["volumeMounts"]
    # the report reader travels in the script
    text = script("unit_test")
    assert "reports_py=" in text
    assert subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0


# --- git hands the credentials to the app's repository only --------------------------------


class GitHost(http.server.ThreadingHTTPServer):
    """A stand-in git host on 127.0.0.1 that records the Authorization header of every request:
    a path starting with /moved redirects to ``redirect_to``, everything else asks for Basic auth."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirect_to = ""
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                host.seen.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/moved") and host.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", host.redirect_to + self.path.split("/", 2)[2])
                else:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def basic_auth_sent(self) -> list[str]:
        return [path for path, auth in self.seen if auth]


@pytest.fixture
def git_hosts() -> Iterator[tuple[GitHost, GitHost]]:
    hosts = (GitHost(), GitHost())
    threads = [threading.Thread(target=h.serve_forever, daemon=True) for h in hosts]
    for t in threads:
        t.start()
    yield hosts
    for h in hosts:
        h.shutdown()
        h.server_close()


PASSWORD = "s3cret-git-password"


def git_ls_remote(scope: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``git_ SCOPE ls-remote URL`` from lib.sh, with the step's git credentials in the environment
    and nothing of this machine's git config."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_USERNAME": "conveyor",
        "GIT_PASSWORD": PASSWORD,
    }
    return subprocess.run(
        ["bash", "-c", (SCRIPTS_SOURCE / "lib.sh").read_text() + '\ngit_ "$1" ls-remote "$2"', "test", scope, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_git_offers_the_credentials_to_the_apps_repository(git_hosts: tuple[GitHost, GitHost], tmp_path: Path) -> None:
    host, _ = git_hosts
    result = git_ls_remote(f"{host.url}/app.git", f"{host.url}/app.git", tmp_path)
    assert result.returncode != 0  # the stand-in never lets anyone in
    token = base64.b64encode(f"conveyor:{PASSWORD}".encode()).decode()
    assert ("/app.git/info/refs?service=git-upload-pack", f"Basic {token}") in host.seen
    assert PASSWORD not in result.stdout + result.stderr


def test_git_gives_a_redirect_to_another_host_no_credential(git_hosts: tuple[GitHost, GitHost], tmp_path: Path) -> None:
    app_host, other_host = git_hosts
    app_host.redirect_to = f"{other_host.url}/"
    result = git_ls_remote(f"{app_host.url}/moved/app.git", f"{app_host.url}/moved/app.git", tmp_path)
    assert result.returncode != 0
    assert any(path.startswith("/app.git/info/refs") for path, _ in other_host.seen), "git did not follow the redirect"
    assert other_host.basic_auth_sent() == [], "the host redirected to got the app's git credentials"
    assert app_host.basic_auth_sent() == []
    assert "terminal prompts disabled" in result.stderr  # git gave up instead of asking


def test_git_gives_another_repository_on_the_same_host_no_credential(
    git_hosts: tuple[GitHost, GitHost], tmp_path: Path
) -> None:
    host, _ = git_hosts
    result = git_ls_remote(f"{host.url}/app.git", f"{host.url}/someone-elses.git", tmp_path)
    assert result.returncode != 0
    assert host.seen and host.basic_auth_sent() == []


# --- the base images the build downloads with the registry credentials --------------------


def dockerfile_bases(
    tmp_path: Path, dockerfile: str, text: str | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """The prepare container's Dockerfile reader, run as it runs there (python3 -c <its text>)."""
    helper = (SCRIPTS_SOURCE / "dockerfile_bases.py").read_text()
    repo = tmp_path / "src"
    repo.mkdir(exist_ok=True)
    if text is not None:
        (repo / dockerfile).write_text(text)
    return subprocess.run(
        ["python3", "-c", helper, str(repo), dockerfile, "10.88.0.1:5000", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_prepare_finds_the_bases_on_the_apps_registry(tmp_path: Path) -> None:
    text = (FIXTURES.parents[1] / "examples" / "appointments" / "Dockerfile").read_text()
    result = dockerfile_bases(tmp_path, "Dockerfile", text, "REGISTRY=10.88.0.1:5000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["10.88.0.1:5000/conveyor/python-runtime:3.11-1"]


def test_prepare_reads_a_multi_stage_dockerfile_as_buildah_would(tmp_path: Path) -> None:
    text = """\
# escape=\\
ARG REGISTRY
ARG TAG="17-1"
FROM --platform=linux/amd64 ${REGISTRY}/conveyor/maven-builder:3-jdk17-1 AS build
RUN mvn package \\
  -q
# a stage, scratch, another registry and an unknown variable with a default
FROM build AS test
FROM scratch
FROM docker.io/library/eclipse-temurin:17
FROM $REGISTRY/conveyor/java-runtime:${TAG}
FROM ${UNDECLARED:-10.88.0.1:5000/base/debian:12}
FROM ${REGISTRY}/conveyor/java-runtime:${TAG}
"""
    result = dockerfile_bases(tmp_path, "Dockerfile", text, "REGISTRY=10.88.0.1:5000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "10.88.0.1:5000/conveyor/maven-builder:3-jdk17-1",
        "10.88.0.1:5000/conveyor/java-runtime:17-1",
        "10.88.0.1:5000/base/debian:12",
    ]


def test_prepare_never_reads_a_file_outside_the_repository(tmp_path: Path) -> None:
    secret = tmp_path / "auth.json"
    secret.write_text('{"auths": {"10.88.0.1:5000": {"auth": "c2VjcmV0"}}}')
    dockerfile_bases(tmp_path, "Dockerfile", "FROM scratch\n")
    (tmp_path / "src" / "Dockerfile.link").symlink_to(secret)
    for name in ("Dockerfile.link", "../auth.json"):
        result = dockerfile_bases(tmp_path, name)
        assert result.returncode == 1
        assert "leads out of the repository" in result.stderr
        assert "c2VjcmV0" not in result.stdout + result.stderr
    missing = dockerfile_bases(tmp_path, "docker/Dockerfile")
    assert missing.returncode == 1 and "no Dockerfile at 'docker/Dockerfile'" in missing.stderr


def test_every_step_kind_is_registered_once_with_credentials_its_containers_use() -> None:
    """One registry: each pod step kind has a pod builder and a type; every credential it asks for reaches a
    container, and no container is granted one the step does not ask for."""
    from conveyor.pipeline import STEP_TYPES, StepKind
    from conveyor.steps import POD_BUILDERS

    assert set(STEP_TYPES) == set(StepKind)
    assert set(POD_BUILDERS) == set(StepKind) - {StepKind.GATE}
    for kind, step_type in STEP_TYPES.items():
        granted = set().union(*step_type.containers.values()) if step_type.containers else set()
        assert granted == set(step_type.credentials), kind
