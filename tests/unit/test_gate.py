"""The approval gate's core: signed records, binding to the build, N of M, rejects."""

from __future__ import annotations

import json

from conveyor import gate
from conveyor.spec import ApprovalPolicy

KEY = b"k" * 32
BUILD = gate.Build(commit="a" * 40, digest="sha256:" + "b" * 64, manifests="sha256:" + "c" * 64)
POLICY = ApprovalPolicy(users=["alice", "bob", "carol"], roles=["release"], required=2)


def record(
    user: str,
    decision: str = gate.APPROVE,
    *,
    roles: tuple[str, ...] = (),
    build: gate.Build = BUILD,
    key: bytes = KEY,
    run_id: str = "run-1",
    reason: str = "",
) -> dict:
    return (
        gate.Decision(
            app="web",
            run_id=run_id,
            gate="approve",
            decision=decision,
            user=user,
            roles=roles,
            commit=build.commit,
            digest=build.digest,
            manifests=build.manifests,
            reason=reason,
            at="2026-11-27T10:00:00+00:00",
        )
        .signed(key)
        .to_json()
    )


def evaluate(
    records: list, policy: ApprovalPolicy = POLICY, triggered_by: str | None = None, author: str | None = None
) -> gate.GateState:
    return gate.evaluate(
        records,
        policy=policy,
        app="web",
        run_id="run-1",
        gate="approve",
        build=BUILD,
        key=KEY,
        triggered_by=triggered_by,
        author=author,
    )


def test_opens_only_at_the_required_number_of_distinct_approvers() -> None:
    assert evaluate([record("alice")]).status is gate.GateStatus.WAITING
    assert evaluate([record("alice"), record("alice")]).status is gate.GateStatus.WAITING
    state = evaluate([record("alice"), record("bob")])
    assert state.status is gate.GateStatus.APPROVED
    assert state.approvers == ["alice", "bob"]


def test_roles_count_as_approvers() -> None:
    assert evaluate([record("alice"), record("dave", roles=("release",))]).status is gate.GateStatus.APPROVED


def test_one_reject_ends_the_wait_with_its_reason() -> None:
    state = evaluate([record("alice"), record("bob", gate.REJECT, reason="migrations missing"), record("carol")])
    assert state.status is gate.GateStatus.REJECTED
    assert state.rejection is not None and state.rejection.reason == "migrations missing"


def test_forged_and_tampered_records_never_count() -> None:
    forged = {**record("alice"), "signature": "0" * 64}
    unsigned = {k: v for k, v in record("bob").items() if k != "signature"}
    other_key = record("carol", key=b"x" * 32)
    tampered = record("alice")
    tampered["digest"] = "sha256:" + "c" * 64
    raw_write = {"decision": "approve", "user": "alice"}
    state = evaluate([forged, unsigned, other_key, tampered, raw_write, "junk"])
    assert state.status is gate.GateStatus.WAITING
    assert state.approvals == ()
    assert state.ignored_unsigned == 6


def test_decisions_for_another_build_or_run_do_not_count() -> None:
    old = gate.Build(commit="a" * 40, digest="sha256:" + "d" * 64)
    state = evaluate([record("alice", build=old), record("bob", build=old), record("carol", run_id="run-2")])
    assert state.status is gate.GateStatus.WAITING
    assert state.ignored_other_build == 2


def test_policy_is_checked_again_not_only_in_the_api() -> None:
    state = evaluate([record("mallory"), record("eve")])
    assert state.status is gate.GateStatus.WAITING
    assert state.ignored_not_approver == 2


def test_self_approval_refused_unless_allowed() -> None:
    one = ApprovalPolicy(users=["alice", "bob"], required=1)
    assert evaluate([record("alice")], one, triggered_by="alice").status is gate.GateStatus.WAITING
    allowed = ApprovalPolicy(users=["alice"], required=1, allow_self_approval=True)
    assert evaluate([record("alice")], allowed, triggered_by="alice").status is gate.GateStatus.APPROVED


def test_storage_round_trip_and_key() -> None:
    records = [gate.Decision.from_json(record("alice"))]
    text = gate.dump_records("web", "run-1", "approve", [r for r in records if r])
    assert gate.load_records(text) == [record("alice")]
    assert gate.load_records("not json") == []
    assert gate.load_records(json.dumps({"decisions": "x"})) == []
    key = gate.storage_key("web", "manual__2026-11-27T10:00:00+00:00", "approve")
    assert key.startswith("conveyor.gate.web.approve.") and len(key) < 250


def test_a_decision_for_other_manifests_does_not_count() -> None:
    edited = gate.Build(BUILD.commit, BUILD.digest, manifests="sha256:" + "d" * 64)
    state = evaluate([record("alice", build=edited), record("bob")])
    assert state.status is gate.GateStatus.WAITING and state.ignored_other_build == 1


def test_the_commit_author_is_known_by_name_or_e_mail() -> None:
    assert gate.is_author("alice", "alice <a.smith@clinic.example>")
    assert gate.is_author("asmith", "Alice Smith <asmith@clinic.example>")
    assert gate.is_author("Alice", "alice <x@y>")
    assert not gate.is_author("alice", "Alicia <alicia@clinic.example>")
    assert not gate.is_author("alice", None) and not gate.is_author("alice", "")


def test_the_commit_author_cannot_approve_their_own_change_unless_allowed() -> None:
    author = "Bob B <bob@clinic.example>"
    state = evaluate([record("alice"), record("bob")], author=author)
    assert state.status is gate.GateStatus.WAITING and state.approvers == ["alice"]
    allowed = ApprovalPolicy(users=["alice", "bob"], required=2, allow_self_approval=True)
    assert evaluate([record("alice"), record("bob")], allowed, author=author).status is gate.GateStatus.APPROVED
