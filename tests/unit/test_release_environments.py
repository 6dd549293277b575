"""An environment after the first gets releases only, and only builds the first gate approved: the deploy step
checks both in the records, under the spec the run started with, whatever the DAG or the gates' task states say."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conveyor import gate, records, release
from conveyor.operators import ConveyorPodOperator
from conveyor.spec import load_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPEC = load_spec(FIXTURES / "apps" / "valid" / "staged.yaml", FIXTURES / "manifests")  # dev → staging → prod
COMMIT, DIGEST, OTHER = "c" * 40, "sha256:" + "d" * 64, "sha256:" + "e" * 64
APP = SPEC.name  # decisions name the app their run's spec names


def shown(run_id: str, gate_id: str, digest: str = DIGEST) -> records.GateOpened:
    opened = records.GateOpened(
        run_id=run_id,
        gate=gate_id,
        commit=COMMIT,
        digest=digest,
        manifests_hash="sha256:" + "f" * 64,
        manifests={},
        run_after=datetime.now(UTC).isoformat(),
        release_tag="v1.0.0",
    )
    records.open_gate(APP, opened)
    return opened


def approve(opened: records.GateOpened, user: str = "alice") -> None:
    decision = gate.Decision(
        APP,
        opened.run_id,
        opened.gate,
        gate.APPROVE,
        user,
        ("admin",),
        opened.commit,
        opened.digest,
        "",
        records.now_iso(),
    )
    decision = gate.Decision(**{**decision.__dict__, "manifests": opened.manifests_hash})
    records.record(APP, records.Kind.DECISION, decision, gate=opened.gate)


def a_run(release_tag: str = "v1.0.0") -> str:
    run_id = f"manual__{uuid.uuid4().hex}"
    started = records.start_run(
        APP, run_id, SPEC, triggered_by="dave", run_after=datetime.now(UTC), branch="main", tag_name=release_tag
    )
    checkout = records.CheckedOut(run_id, COMMIT, "main", started.build_number, release_tag=release_tag)
    records.record(APP, records.Kind.CHECKED_OUT, checkout)
    return run_id


def check(env: str, opened: records.GateOpened) -> None:
    op = ConveyorPodOperator(task_id=f"deploy_{env}", app=APP, step_kind="deploy", name=f"{APP}-deploy")
    run = release.RunRelease.of(records.load(APP), opened.run_id)
    op._check_released(run, env, opened.gate, {"action": op.task_id, "run_id": opened.run_id, "app": APP}, opened)


def test_a_release_environment_needs_the_first_gates_approval_of_the_same_build() -> None:
    run = a_run()
    first, staging = shown(run, "approve"), shown(run, "approve_staging")
    approve(staging, "alice")
    with pytest.raises(AirflowFailException, match="only after approve approved the same build; approve has 0 of"):
        check("staging", staging)  # e.g. approve, deploy_dev and tag marked success by hand
    approve(first)
    check("staging", staging)  # approved at both gates: it goes


def test_another_build_at_the_first_gate_does_not_count() -> None:
    run = a_run()
    first, staging = shown(run, "approve", digest=OTHER), shown(run, "approve_staging")
    approve(first)
    with pytest.raises(AirflowFailException, match="showed another build than approve_staging does"):
        check("staging", staging)


def test_a_run_that_is_no_release_never_reaches_a_later_environment() -> None:
    run = a_run(release_tag="")
    approve(shown(run, "approve"))
    with pytest.raises(AirflowFailException, match="staging gets releases only, and run .* is not a release"):
        check("staging", shown(run, "approve_staging"))
