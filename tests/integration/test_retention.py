"""SNAPSHOT retention against the local registry (Distribution, started by `make up`): the client reads
what a build pushed (OCI manifests and an OCI index), the policy deletes only the old SNAPSHOT build,
every tag of its digest goes with it, the others stay, and the garbage collection then sees its blobs.

Talks to http://127.0.0.1:5000 with the platform's account (/var/lib/conveyor/secrets/registry-password).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from conveyor import records
from conveyor.ledger import Entry
from conveyor.records import AppRecords, Built, Deployed, Kind, RunStarted
from conveyor.registry import RegistryClient, delete_planned
from conveyor.retention import SnapshotPolicy, facts_from_records, plan

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONVEYOR_STATE", "/var/lib/conveyor"))
REGISTRY = os.environ.get("CONVEYOR_REGISTRY_URL", "http://127.0.0.1:5000")
START = "run `make up` (or scripts/registry/up)"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def client() -> RegistryClient:
    secret = STATE / "secrets" / "registry-password"
    if not secret.is_file():
        pytest.fail(f"{secret} does not exist: the registry was never set up; {START}")
    made = RegistryClient(REGISTRY, "conveyor", secret.read_text(encoding="utf-8").strip())
    try:
        made.tags("conveyor-test/none")
    except Exception as exc:
        pytest.fail(f"the registry at {REGISTRY} does not answer the stored credentials ({exc}); {START}")
    return made


def _put(client: RegistryClient, repo: str, path: str, data: bytes, content_type: str) -> requests.Response:
    auth = client._auth
    return requests.put(
        f"{REGISTRY}/v2/{repo}/{path}", data=data, auth=auth, timeout=10, headers={"Content-Type": content_type}
    )


def _blob(client: RegistryClient, repo: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"{REGISTRY}/v2/{repo}/blobs/uploads/", auth=client._auth, timeout=10)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    location = REGISTRY + location if location.startswith("/") else location
    sep = "&" if "?" in location else "?"
    done = requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        auth=client._auth,
        timeout=10,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def _push_build(client: RegistryClient, repo: str, n: int, tags: list[str], *, index: bool = False) -> tuple[str, str]:
    """An image of its own (a config blob unique to build n) under ``tags``; (digest, config blob digest)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "build": n, "rootfs": {"type": "layers"}}).encode()
    layer = f"layer of build {n}".encode()
    config_ref = _blob(client, repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(client, repo, layer)}],
    }
    body = json.dumps(manifest).encode()
    media = OCI_MANIFEST
    if index:  # a multi-platform build: the tag names an index that names the manifest
        pushed = _put(client, repo, f"manifests/sha256:{hashlib.sha256(body).hexdigest()}", body, OCI_MANIFEST)
        assert pushed.status_code == 201, pushed.text
        entry = {"mediaType": OCI_MANIFEST, "digest": pushed.headers["Docker-Content-Digest"], "size": len(body)}
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{**entry, "platform": {"os": "linux", "architecture": "amd64"}}],
            }
        ).encode()
        media = OCI_INDEX
    digest = ""
    for tag in tags:
        pushed = _put(client, repo, f"manifests/{tag}", body, media)
        assert pushed.status_code == 201, pushed.text
        digest = pushed.headers["Docker-Content-Digest"]
    return digest, str(config_ref["digest"])


@pytest.fixture
def repository(client: RegistryClient) -> Iterator[str]:
    repo = f"conveyor-test/retention-{uuid.uuid4().hex[:8]}"
    yield repo
    for image in client.images(repo):
        client.delete(repo, image.digest)


def _records(digests: dict[int, str]) -> AppRecords:
    entries = []
    started = NOW - timedelta(days=90)
    for n, digest in digests.items():
        run_id = f"manual__retention-{n}"
        items = [
            (Kind.RUN_STARTED, RunStarted(run_id, n, {}, "s", "dave", started.isoformat(), "main", "")),
            (Kind.BUILT, Built(run_id, "c" * 40, digest)),
        ]
        if n == 2:
            items.append(
                (Kind.DEPLOYED, Deployed(run_id, "prod", "c" * 40, digest, "", "", "succeeded", NOW.isoformat(), ""))
            )
        for kind, item in items:
            made = records.entry(kind, item)
            entries.append(Entry("web", len(entries) + 1, made.kind, made.run_id, made.gate, started, made.body))
    return AppRecords("web", entries)


def test_prune_deletes_the_old_snapshot_build_with_all_its_tags_and_keeps_the_rest(
    client: RegistryClient, repository: str
) -> None:
    digests, configs = {}, {}
    for n in range(1, 5):
        tags = [f"SNAPSHOT-main-{n}", f"SNAPSHOT-{n}"] + (["v1.0.0"] if n == 1 else []) + (["latest"] if n == 4 else [])
        digests[n], configs[n] = _push_build(client, repository, n, tags, index=n == 4)

    images = client.images(repository)
    assert {i.digest: sorted(i.tags) for i in images}[digests[3]] == ["SNAPSHOT-3", "SNAPSHOT-main-3"]
    facts = facts_from_records(_records(digests))
    result = plan(repository, images, facts, set(), SnapshotPolicy(keep=1, days=30), NOW)
    why = {v.digest: "; ".join(v.reasons) for v in result.verdicts}
    assert [v.digest for v in result.to_delete] == [digests[3]], [v.describe() for v in result.verdicts]
    assert "tagged v1.0.0" in why[digests[1]]
    assert "deployed (prod: succeeded" in why[digests[2]]
    assert "tagged latest" in why[digests[4]] and "newest build of branch main" in why[digests[4]]

    done = list(delete_planned(client, result))
    assert [(d.verdict.digest, d.deleted) for d in done] == [(digests[3], True)]
    left = client.tags(repository)
    assert "SNAPSHOT-3" not in left and "SNAPSHOT-main-3" not in left
    assert sorted(left) == sorted(
        [
            "SNAPSHOT-main-1",
            "SNAPSHOT-1",
            "v1.0.0",
            "SNAPSHOT-main-2",
            "SNAPSHOT-2",
            "SNAPSHOT-main-4",
            "SNAPSHOT-4",
            "latest",
        ]
    )
    assert client.digest(repository, "latest") == digests[4]
    assert client.delete(repository, digests[3]) is False  # gone already

    # the garbage collection now finds the deleted build's own blobs (a dry run: nothing is removed)
    gc = subprocess.run(
        [str(REPO / "scripts" / "registry" / "gc"), "--dry-run"], capture_output=True, text=True, timeout=300
    )
    assert gc.returncode == 0, gc.stderr
    assert f"blob eligible for deletion: {configs[3]}" in gc.stdout
    assert f"blob eligible for deletion: {configs[4]}" not in gc.stdout
