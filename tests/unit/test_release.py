"""What a gate releases: the manifests hash it binds decisions to, and its stored markers."""

from __future__ import annotations

import pytest

from conveyor import release


def test_the_manifests_hash_changes_with_any_byte_and_not_with_order() -> None:
    one = release.manifests_hash({"dev": "a: 1\n", "prod": "a: 2\n"})
    assert one == release.manifests_hash({"prod": "a: 2\n", "dev": "a: 1\n"})
    assert one != release.manifests_hash({"dev": "a: 1\n", "prod": "a: 3\n"})
    assert one != release.manifests_hash({"dev": "a: 1\n"})
    assert one.startswith("sha256:") and len(one) == len("sha256:") + 64


def test_the_decision_link_keeps_run_ids_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    link = release.decision_link("web", "manual__2026-11-27T10:00:00+00:00", "approve")
    assert link == "https://airflow.example.com/conveyor/gates/web/manual__2026-11-27T10:00:00%2B00:00/approve"
