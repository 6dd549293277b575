"""SNAPSHOT retention: which images of an app the policy deletes and why every other one is kept, the
registry client against a registry speaking the distribution API (Basic and bearer-token auth), and
``conveyor prune``."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from conveyor import records, settings
from conveyor.exceptions import ConfigurationError, ConveyorError
from conveyor.ledger import Entry
from conveyor.records import AppRecords, Built, CheckedOut, Deployed, Kind, RunStarted
from conveyor.registry import RegistryClient, delete_planned
from conveyor.retention import (
    Plan,
    RegistryImage,
    SnapshotPolicy,
    facts_from_records,
    images_from_tags,
    plan,
    platform_policy,
    snapshot_build_number,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = SnapshotPolicy(keep=10, days=30)


def digest_of(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def d(n: int) -> str:
    return digest_of(f"build-{n}")


class History:
    """An app's records, written the way the steps write them."""

    def __init__(self) -> None:
        self.items: list[tuple[Kind, Any]] = []

    def build(self, n: int, *, branch: str = "main", age: timedelta = timedelta(days=60), digest: str = "") -> str:
        run_id = f"manual__run-{n}"
        started = NOW - age
        self.items.append(
            (
                Kind.RUN_STARTED,
                RunStarted(run_id, n, {}, "sha256:spec", "dave", started.isoformat(), branch, ""),
            )
        )
        self.items.append((Kind.CHECKED_OUT, CheckedOut(run_id, "c" * 40, branch, n)))
        self.items.append((Kind.BUILT, Built(run_id, "c" * 40, digest or d(n), "reg/clinic/web")))
        return run_id

    def deploy(self, n: int, environment: str, result: str) -> None:
        deployed = Deployed(
            f"manual__run-{n}", environment, "c" * 40, d(n), "", "", result, NOW.isoformat(), "", build_number=n
        )
        self.items.append((Kind.DEPLOYED, deployed))

    def records(self) -> AppRecords:
        entries = []
        for seq, (kind, item) in enumerate(self.items, start=1):
            made = records.entry(kind, item)
            entries.append(Entry("web", seq, made.kind, made.run_id, made.gate, NOW, made.body))
        return AppRecords("web", entries)


def snapshot(n: int, branch: str = "main", *extra: str, digest: str = "") -> RegistryImage:
    return RegistryImage(digest or d(n), frozenset({f"SNAPSHOT-{branch}-{n}", f"SNAPSHOT-{n}", *extra}))


def verdicts(result: Plan) -> dict[str, tuple[bool, str]]:
    by_digest = {v.digest: v for v in result.verdicts}
    return {
        tag: (by_digest[v.digest].delete, "; ".join(by_digest[v.digest].reasons))
        for v in result.verdicts
        for tag in v.image.tags
        if tag.startswith("SNAPSHOT-") and tag.count("-") == 1
    }


# --- the policy -------------------------------------------------------------------------------


def test_snapshot_tags_are_read_as_the_build_step_writes_them() -> None:
    assert snapshot_build_number("SNAPSHOT-12") == 12
    assert snapshot_build_number("SNAPSHOT-main-12") == 12
    assert snapshot_build_number("SNAPSHOT-feature-login-7") == 7
    assert snapshot_build_number("SNAPSHOT-1-7") == 7
    for other in ("latest", "v1.2.3", "SNAPSHOT", "SNAPSHOT-main", "snapshot-3", "SNAPSHOT-3-", "SNAPSHOT-3\n"):
        assert snapshot_build_number(other) is None, other


def test_old_builds_beyond_the_newest_n_are_deleted_and_every_other_is_kept_with_its_reason() -> None:
    history = History()
    for n in range(1, 16):
        history.build(n, age=timedelta(days=2) if n >= 14 else timedelta(days=60))
    history.deploy(4, "prod", "succeeded")
    history.deploy(2, "dev", "applying")
    history.deploy(5, "dev", "failed")  # a failed deploy was rolled back: it protects nothing
    images = [
        snapshot(n, "main", *(["latest"] if n == 15 else []), *(["v1.0.0"] if n == 3 else [])) for n in range(1, 16)
    ]

    result = plan("clinic/web", images, facts_from_records(history.records()), set(), POLICY, NOW)

    seen = verdicts(result)
    assert {tag for tag, (delete, _) in seen.items() if delete} == {"SNAPSHOT-1", "SNAPSHOT-5"}
    assert "build #1 of branch main, 60 days old, newer builds of the branch: 14" in seen["SNAPSHOT-1"][1]
    assert "deployed (dev: applying, build #2 deployed by run manual__run-2" in seen["SNAPSHOT-2"][1]
    assert "tagged v1.0.0" in seen["SNAPSHOT-3"][1]
    assert "deployed (prod: succeeded" in seen["SNAPSHOT-4"][1]
    assert "build #6 is one of the 10 newest builds of branch main" in seen["SNAPSHOT-6"][1]
    assert "tagged latest" in seen["SNAPSHOT-15"][1]
    assert "build #15 is the newest build of branch main" in seen["SNAPSHOT-15"][1]
    # deleting a digest deletes all its tags: both snapshot tags of build 1 go, nothing else
    assert [sorted(v.image.tags) for v in result.to_delete] == [
        ["SNAPSHOT-5", "SNAPSHOT-main-5"],
        ["SNAPSHOT-1", "SNAPSHOT-main-1"],
    ]


def test_young_builds_are_kept_beyond_the_newest_n() -> None:
    history = History()
    for n in range(1, 6):
        history.build(n, age=timedelta(days=40 - 5 * n))  # 35, 30, 25, 20, 15 days
    images = [snapshot(n) for n in range(1, 6)]
    result = plan("clinic/web", images, facts_from_records(history.records()), set(), SnapshotPolicy(1, 30), NOW)
    seen = verdicts(result)
    assert [tag for tag, (delete, _) in sorted(seen.items()) if delete] == ["SNAPSHOT-1", "SNAPSHOT-2"]
    assert seen["SNAPSHOT-3"] == (False, "build #3 is younger than 30 days (25 days old)")
    assert seen["SNAPSHOT-5"] == (False, "build #5 is the newest build of branch main")


def test_each_branch_keeps_its_own_newest_builds() -> None:
    history = History()
    for n, branch in enumerate(["main", "main", "feature/login", "main", "feature/login", "feature/login"], 1):
        history.build(n, branch=branch)
    images = [snapshot(n, b) for n, b in [(1, "main"), (2, "main"), (4, "main")]]
    images += [snapshot(n, "feature-login") for n in (3, 5, 6)]
    result = plan("clinic/web", images, facts_from_records(history.records()), set(), SnapshotPolicy(2, 0), NOW)
    seen = verdicts(result)
    assert [tag for tag, (delete, _) in sorted(seen.items()) if delete] == ["SNAPSHOT-1", "SNAPSHOT-3"]
    assert seen["SNAPSHOT-6"] == (False, "build #6 is the newest build of branch feature/login")
    assert seen["SNAPSHOT-2"] == (False, "build #2 is one of the 2 newest builds of branch main")


def test_a_running_run_keeps_its_image_and_unrecorded_builds_are_never_deleted() -> None:
    history = History()
    for n in range(1, 5):
        history.build(n)
    rerun = history.build(5, digest=d(1))  # a run whose build step recorded the image of build 1
    images = [snapshot(n) for n in range(2, 5)] + [
        RegistryImage(d(1), frozenset({"SNAPSHOT-main-1", "SNAPSHOT-1"})),
        snapshot(99),  # pushed by something else, or its records were archived
    ]
    result = plan(
        "clinic/web", images, facts_from_records(history.records()), {rerun, "manual__run-2"}, SnapshotPolicy(1, 0), NOW
    )
    seen = verdicts(result)
    assert [tag for tag, (delete, _) in sorted(seen.items()) if delete] == ["SNAPSHOT-3"]
    assert seen["SNAPSHOT-1"] == (False, f"run {rerun}, still running, built it")
    assert "build #2: its run manual__run-2 is still running" in seen["SNAPSHOT-2"][1]
    assert seen["SNAPSHOT-99"] == (False, "no records of build #99 (Conveyor deletes only builds it recorded)")


def test_a_digest_is_kept_when_any_of_its_builds_is_kept() -> None:
    history = History()
    for n in range(1, 4):
        history.build(n, digest=d(1) if n in (1, 3) else "")
    images = images_from_tags({"SNAPSHOT-main-1": d(1), "SNAPSHOT-main-2": d(2), "SNAPSHOT-main-3": d(1)})
    result = plan("clinic/web", images, facts_from_records(history.records()), set(), SnapshotPolicy(1, 0), NOW)
    assert [v.digest for v in result.to_delete] == [d(2)]
    kept = next(v for v in result.verdicts if v.digest == d(1))
    assert kept.reasons == ("build #3 is the newest build of branch main",)


def test_empty_records_delete_nothing() -> None:
    images = [snapshot(n) for n in range(1, 30)]
    result = plan("clinic/web", images, facts_from_records(AppRecords("web", [])), set(), SnapshotPolicy(1, 0), NOW)
    assert result.to_delete == []


def test_the_policy_comes_from_the_conveyor_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__CONVEYOR__SNAPSHOT_KEEP", raising=False)
    monkeypatch.delenv("AIRFLOW__CONVEYOR__SNAPSHOT_DAYS", raising=False)
    assert platform_policy() == SnapshotPolicy(10, 30)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SNAPSHOT_KEEP", "3")
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SNAPSHOT_DAYS", "0")
    assert platform_policy() == SnapshotPolicy(3, 0)
    assert settings.snapshot_retention() == (3, 0)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SNAPSHOT_KEEP", "0")
    with pytest.raises(ConfigurationError, match="must keep at least 1"):
        platform_policy()
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SNAPSHOT_KEEP", "ten")
    with pytest.raises(ConfigurationError, match=r"\[conveyor\] snapshot_keep is 'ten', not a whole number"):
        platform_policy()


# --- a registry speaking the distribution API -------------------------------------------------


@dataclass
class FakeRegistry:
    """Tags per repository, Basic or bearer-token auth, two tags per page (so the client must follow Link)."""

    auth: str = "basic"
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    on_delete: Any = None

    def tag(self, repository: str, tag: str, digest: str) -> None:
        self.tags.setdefault(repository, {})[tag] = digest


USER, PASSWORD, TOKEN = "team-clinic", "s3cret", "the-token"
ACCEPTED = "application/vnd.oci.image.index.v1+json"


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _send(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _authorised(self, scope: str) -> bool:
            given = self.headers.get("Authorization", "")
            if registry.auth == "basic":
                if given == basic:
                    return True
                self._send(401, {"errors": []}, {"WWW-Authenticate": 'Basic realm="registry"'})
                return False
            if given == f"Bearer {TOKEN}":
                return True
            challenge = f'Bearer realm="{registry.url}/token",service="fake",scope="{scope}"'
            self._send(401, {"errors": []}, {"WWW-Authenticate": challenge})
            return False

        def _route(self) -> None:
            url = urlsplit(self.path)
            registry.requests.append(f"{self.command} {url.path}")
            if url.path == "/token":
                ok = self.headers.get("Authorization") == basic and parse_qs(url.query).get("service") == ["fake"]
                self._send(200 if ok else 401, {"token": TOKEN} if ok else {})
                return
            found = re.fullmatch(r"/v2/(?P<repo>.+)/(?:tags/list|manifests/(?P<ref>[^/]+))", url.path)
            if not found:
                self._send(404, {})
                return
            repo, ref = found["repo"], found["ref"]
            action = "delete" if self.command == "DELETE" else "pull"
            if not self._authorised(f"repository:{repo}:{action}"):
                return
            tags = registry.tags.get(repo)
            if tags is None:
                self._send(404, {"errors": [{"code": "NAME_UNKNOWN"}]})
            elif ref is None:
                names = sorted(tags)
                last = parse_qs(url.query).get("last", [""])[0]
                page = [t for t in names if t > last][:2]
                headers = {}
                if page and page[-1] != names[-1]:
                    headers["Link"] = f'</v2/{repo}/tags/list?n=2&last={page[-1]}>; rel="next"'
                self._send(200, {"name": repo, "tags": page}, headers)
            elif self.command == "HEAD":
                assert ACCEPTED in self.headers.get("Accept", "")
                if ref in tags:
                    self._send(200, None, {"Docker-Content-Digest": tags[ref]})
                else:
                    self._send(404)
            elif self.command == "DELETE":
                if registry.on_delete:
                    registry.on_delete(ref)
                gone = [t for t, digest in tags.items() if digest == ref]
                for t in gone:
                    del tags[t]
                self._send(202 if gone else 404)
            else:
                self._send(405)

        do_GET = do_HEAD = do_DELETE = _route

    return Handler


@pytest.fixture(params=["basic", "bearer"])
def fake_registry(request: pytest.FixtureRequest) -> Iterator[FakeRegistry]:
    registry = FakeRegistry(auth=request.param)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    registry.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield registry
    server.shutdown()
    server.server_close()


def test_the_client_lists_every_tag_reads_digests_and_deletes_by_digest(fake_registry: FakeRegistry) -> None:
    for n in range(1, 4):
        fake_registry.tag("clinic/web", f"SNAPSHOT-main-{n}", d(n))
        fake_registry.tag("clinic/web", f"SNAPSHOT-{n}", d(n))
    fake_registry.tag("clinic/web", "latest", d(3))
    client = RegistryClient(fake_registry.url, USER, PASSWORD)

    assert len(client.tags("clinic/web")) == 7  # four pages of two
    assert client.tags("clinic/nothing") == []
    assert client.digest("clinic/web", "latest") == d(3)
    assert client.digest("clinic/web", "SNAPSHOT-9") is None
    assert RegistryImage(d(3), frozenset({"SNAPSHOT-main-3", "SNAPSHOT-3", "latest"})) in client.images("clinic/web")
    assert client.delete("clinic/web", d(1)) is True
    assert client.delete("clinic/web", d(1)) is False
    assert "SNAPSHOT-1" not in client.tags("clinic/web")


def test_the_client_says_what_is_wrong_and_never_shows_the_password(fake_registry: FakeRegistry) -> None:
    fake_registry.tag("clinic/web", "latest", d(1))
    client = RegistryClient(fake_registry.url, USER, "wrong-password")
    with pytest.raises(ConveyorError) as failed:
        client.tags("clinic/web")
    assert "wrong-password" not in str(failed.value)
    assert ("login or password is wrong" in str(failed.value)) or (
        "refused the registry connection's account" in str(failed.value)
    )
    with pytest.raises(ConveyorError, match="did not answer"):
        RegistryClient("http://127.0.0.1:1", USER, PASSWORD, timeout=2).tags("clinic/web")


def test_a_tag_moved_onto_an_image_after_the_plan_keeps_it(fake_registry: FakeRegistry) -> None:
    history = History()
    for n in range(1, 5):
        history.build(n)
        fake_registry.tag("clinic/web", f"SNAPSHOT-main-{n}", d(n))
    fake_registry.tag("clinic/web", "latest", d(4))
    client = RegistryClient(fake_registry.url, USER, PASSWORD)
    result = plan(
        "clinic/web",
        client.images("clinic/web"),
        facts_from_records(history.records()),
        set(),
        SnapshotPolicy(1, 0),
        NOW,
    )
    assert [v.digest for v in result.to_delete] == sorted([d(1), d(2), d(3)])
    fake_registry.tag("clinic/web", "latest", d(2))  # someone promotes build 2 meanwhile
    fake_registry.tag("clinic/web", "hotfix", d(1))
    done = {x.verdict.digest: (x.deleted, x.why) for x in delete_planned(client, result)}
    assert done == {
        d(1): (False, "kept: hotfix now point(s) at it"),
        d(2): (False, "kept: latest now point(s) at it"),
        d(3): (True, ""),
    }
    assert sorted(fake_registry.tags["clinic/web"]) == [
        "SNAPSHOT-main-1",
        "SNAPSHOT-main-2",
        "SNAPSHOT-main-4",
        "hotfix",
        "latest",
    ]


# --- conveyor prune ---------------------------------------------------------------------------


def test_prune_is_a_dry_run_unless_told_yes(
    fake_registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor import cli

    monkeypatch.setenv("AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN", f"sqlite:///{tmp_path / 'conveyor.db'}")
    monkeypatch.setenv("AIRFLOW__CONVEYOR__APPS_FOLDER", str(REPO / "include" / "apps"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__MANIFESTS_FOLDER", str(REPO / "include" / "manifests"))
    monkeypatch.setenv("AIRFLOW__CONVEYOR__SNAPSHOT_KEEP", "2")
    monkeypatch.setenv(
        "AIRFLOW_CONN_REGISTRY",
        json.dumps({"conn_type": "docker", "host": "127.0.0.1", "login": USER, "password": PASSWORD}),
    )
    monkeypatch.setattr(cli, "_active_runs", lambda dag_id: {"manual__run-1"})
    history = History()
    for n in range(1, 6):
        history.build(n)
        fake_registry.tag("clinic/appointments", f"SNAPSHOT-main-{n}", d(n))
        fake_registry.tag("clinic/appointments", f"SNAPSHOT-{n}", d(n))
    records.append("appointments", lambda _current: [records.entry(kind, item) for kind, item in history.items])

    args = ["prune", "--app", "appointments", "--registry-url", fake_registry.url]
    dry = CliRunner().invoke(cli.app, args)
    assert dry.exit_code == 0, dry.output
    assert f"# appointments: {fake_registry.url}/clinic/appointments: keep the newest 2 SNAPSHOT builds" in dry.output
    # the records say the runs started 60 days before NOW; prune counts from today
    assert re.search(
        rf"  delete {d(2)} \(SNAPSHOT-2, SNAPSHOT-main-2\): build #2 of branch main, \d+ days old", dry.output
    )
    assert (
        f"  keep {d(1)} (SNAPSHOT-1, SNAPSHOT-main-1): build #1: its run manual__run-1 is still running\n" in dry.output
    )
    assert dry.output.index("SNAPSHOT-main-5") < dry.output.index("SNAPSHOT-main-4")  # newest first
    assert "2 of 5 image(s) would be deleted (a dry run: --yes deletes)" in dry.output
    assert len(fake_registry.tags["clinic/appointments"]) == 10
    assert not [r for r in fake_registry.requests if r.startswith("DELETE")]

    done = CliRunner().invoke(cli.app, [*args, "--yes"])
    assert done.exit_code == 0, done.output
    assert f"deleted: {d(2)}" in done.output and f"deleted: {d(3)}" in done.output
    assert "2 image(s) deleted; the registry frees their space in its garbage collection" in done.output
    assert sorted(fake_registry.tags["clinic/appointments"]) == [
        "SNAPSHOT-1",
        "SNAPSHOT-4",
        "SNAPSHOT-5",
        "SNAPSHOT-main-1",
        "SNAPSHOT-main-4",
        "SNAPSHOT-main-5",
    ]


def test_an_app_spec_may_keep_more_or_fewer_snapshots_than_the_platform() -> None:
    from conveyor.retention import SnapshotPolicy, app_policy
    from conveyor.spec import AppSpec, load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "include" / "apps" / "appointments.yaml")
    platform = SnapshotPolicy(keep=10, days=30)
    assert app_policy(spec, platform) == platform
    data = spec.model_dump(mode="json", exclude_none=True)
    data["retention"] = {"keep": 3}
    assert app_policy(AppSpec.model_validate(data), platform) == SnapshotPolicy(keep=3, days=30)
