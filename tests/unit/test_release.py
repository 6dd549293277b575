"""What a gate releases: the manifests hash it binds decisions to, and its stored markers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from conveyor import release


def test_the_manifests_hash_changes_with_any_byte_and_not_with_order() -> None:
    one = release.manifests_hash({"dev": "a: 1\n", "prod": "a: 2\n"})
    assert one == release.manifests_hash({"prod": "a: 2\n", "dev": "a: 1\n"})
    assert one != release.manifests_hash({"dev": "a: 1\n", "prod": "a: 3\n"})
    assert one != release.manifests_hash({"dev": "a: 1\n"})
    assert one.startswith("sha256:") and len(one) == len("sha256:") + 64


def test_newest_and_deployed_markers_round_trip_and_ignore_junk() -> None:
    newest = release.Newest("manual__2", datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    assert release.Newest.parse(newest.to_json()) == newest
    deployed = release.Deployed(
        "run-1", "2026-11-27T10:00:00+00:00", "a" * 40, "sha256:" + "b" * 64, "v1.0.0", "x: 1\n"
    )
    assert release.Deployed.parse(deployed.to_json()) == deployed
    assert deployed.describe() == "v1.0.0 deployed by run run-1 at 2026-11-27T10:00:00+00:00"
    for junk in (None, "", "not json", "[]", '{"run_after": "yesterday"}'):
        assert release.Newest.parse(junk) is None
        assert release.Deployed.parse(junk) is None


def test_the_decision_link_keeps_run_ids_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    link = release.decision_link("web", "manual__2026-11-27T10:00:00+00:00", "approve")
    assert link == "https://airflow.example.com/conveyor/gates/web/manual__2026-11-27T10:00:00%2B00:00/approve"
