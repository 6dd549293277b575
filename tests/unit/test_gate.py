"""The approval gate's rules: N of M, rejects, binding to the build, verified owners, expiry,
supersede, who may decide, and the deploy steps' release check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor import gate
from conveyor.spec import ApprovalPolicy

BUILD = gate.Build(commit="a" * 40, digest="sha256:" + "b" * 64, manifests="sha256:" + "c" * 64)
POLICY = ApprovalPolicy(users=["alice", "bob", "carol"], roles=["release"], required=2, timeout=3600)
OPENED = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
RUN_AFTER = datetime(2026, 11, 27, 9, 59, tzinfo=UTC)
NOBODY = gate.ChangeOwners()


def decision(
    user: str,
    kind: str = gate.APPROVE,
    *,
    roles: tuple[str, ...] = (),
    build: gate.Build = BUILD,
    run_id: str = "run-1",
    reason: str = "",
    at: datetime = OPENED + timedelta(minutes=5),
) -> gate.Decision:
    return gate.Decision(
        app="web",
        run_id=run_id,
        gate="approve",
        decision=kind,
        user=user,
        roles=roles,
        commit=build.commit,
        digest=build.digest,
        manifests=build.manifests,
        reason=reason,
        at=at.isoformat(),
    )


def facts(
    decisions: list[gate.Decision],
    policy: ApprovalPolicy = POLICY,
    *,
    owners: gate.ChangeOwners = NOBODY,
    now: datetime = OPENED + timedelta(minutes=10),
    newest: tuple[str, datetime] | None = None,
    task_state: str | None = None,
    build: gate.Build | None = BUILD,
) -> gate.GateFacts:
    return gate.GateFacts(
        app="web",
        run_id="run-1",
        gate="approve",
        policy=policy,
        build=build,
        decisions=tuple(decisions),
        owners=owners,
        now=now,
        opened_at=OPENED,
        newest_run=newest or ("run-1", RUN_AFTER),
        run_after=RUN_AFTER,
        task_state=task_state,
    )


def assess(decisions: list[gate.Decision], **kwargs: object) -> gate.Assessment:
    return gate.assess(facts(decisions, **kwargs))  # type: ignore[arg-type]


def test_opens_only_at_the_required_number_of_distinct_approvers() -> None:
    assert assess([decision("alice")]).status is gate.GateStatus.WAITING
    assert assess([decision("alice"), decision("alice")]).status is gate.GateStatus.WAITING
    state = assess([decision("alice"), decision("bob")])
    assert state.status is gate.GateStatus.APPROVED
    assert state.approvers == ["alice", "bob"]


def test_roles_count_as_approvers() -> None:
    assert assess([decision("alice"), decision("dave", roles=("release",))]).status is gate.GateStatus.APPROVED


def test_one_reject_ends_the_wait_with_its_reason() -> None:
    state = assess([decision("alice"), decision("bob", gate.REJECT, reason="migrations missing"), decision("carol")])
    assert state.status is gate.GateStatus.REJECTED
    assert state.rejection is not None and state.rejection.reason == "migrations missing"
    assert "rejected by bob" in state.explain()


def test_decisions_for_another_build_run_or_manifests_do_not_count() -> None:
    old = gate.Build(commit="a" * 40, digest="sha256:" + "d" * 64, manifests=BUILD.manifests)
    edited = gate.Build(BUILD.commit, BUILD.digest, manifests="sha256:" + "d" * 64)
    state = assess([decision("alice", build=old), decision("bob", build=edited), decision("carol", run_id="run-2")])
    assert state.status is gate.GateStatus.WAITING
    assert len(state.not_counted) == 3


def test_the_policy_the_run_started_with_decides_who_counts() -> None:
    state = assess([decision("mallory"), decision("eve")])
    assert state.status is gate.GateStatus.WAITING
    assert all("not an approver" in line for line in state.not_counted)


def test_owners_of_the_change_cannot_approve_it_unless_allowed() -> None:
    one = ApprovalPolicy(users=["alice", "bob"], required=1)
    for owners in (
        gate.ChangeOwners(triggered_by="alice"),
        gate.ChangeOwners(pushed_by=frozenset({"alice"})),
        gate.ChangeOwners(wrote=frozenset({"alice"})),
    ):
        state = assess([decision("alice")], policy=one, owners=owners)
        assert state.status is gate.GateStatus.WAITING, owners
    allowed = ApprovalPolicy(users=["alice"], required=1, allow_self_approval=True)
    assert assess([decision("alice")], policy=allowed, owners=gate.ChangeOwners(triggered_by="alice")).status is (
        gate.GateStatus.APPROVED
    )


def test_owners_are_the_verified_pusher_and_mapped_emails_never_free_text() -> None:
    people = {"alice": ["alice@clinic.example"], "bob": ["Bob@Clinic.example"]}
    owners = gate.change_owners(
        triggered_by="dave", pushers=["alice"], emails=["bob@clinic.example", "x@y"], people=people
    )
    assert owners.why_own("dave") == "dave triggered this run"
    assert owners.why_own("alice") == "alice pushed a commit this run releases"
    assert owners.why_own("bob") is not None and "wrote a commit" in owners.why_own("bob")  # type: ignore[operator]
    assert owners.why_own("carol") is None
    # The author's *name* is free text and counts for nobody; an unmapped e-mail maps to nobody.
    unmapped = gate.change_owners(triggered_by=None, pushers=[], emails=["carol@elsewhere"], people=people)
    assert unmapped == gate.ChangeOwners()
    # A Git server user with another name maps to their Airflow user.
    mapped = gate.change_owners(
        triggered_by=None, pushers=["a.smith", ""], emails=[], people={}, git_users={"a.smith": "alice"}
    )
    assert mapped.pushed_by == frozenset({"alice"})


def test_an_undecided_gate_expires_and_late_decisions_do_not_count() -> None:
    late = OPENED + timedelta(hours=2)
    state = assess([decision("alice"), decision("bob", at=late)], now=late)
    assert state.status is gate.GateStatus.EXPIRED
    assert state.expires_at == OPENED + timedelta(hours=1)
    assert any("after the gate expired" in line for line in state.not_counted)
    # Approved in time stays approved afterwards (the deploy may run later).
    assert assess([decision("alice"), decision("bob")], now=late).status is gate.GateStatus.APPROVED


def test_a_newer_run_at_the_gate_supersedes_an_undecided_one() -> None:
    newer = ("run-2", RUN_AFTER + timedelta(minutes=1))
    state = assess([decision("alice")], newest=newer)
    assert state.status is gate.GateStatus.SUPERSEDED and state.superseded_by == "run-2"
    older = ("run-0", RUN_AFTER - timedelta(minutes=1))
    assert assess([decision("alice")], newest=older).status is gate.GateStatus.WAITING


def test_no_build_shown_means_nothing_to_decide() -> None:
    assert assess([decision("alice"), decision("bob")], build=None).status is gate.GateStatus.NOT_OPEN


def refuse(state_facts: gate.GateFacts, user: str, kind: str = gate.APPROVE, **kwargs: object) -> str | None:
    assessment = gate.assess(state_facts)
    roles = kwargs.pop("roles", ())
    reason = str(kwargs.pop("reason", ""))
    shown = kwargs.pop("shown", BUILD)
    error = gate.refusal(
        state_facts,
        assessment,
        user=user,
        roles=roles,
        decision=kind,
        reason=reason,
        shown=shown,  # type: ignore[arg-type]
    )
    return None if error is None else f"{error.status_code} {error}"


def test_who_may_decide_and_when() -> None:
    waiting = facts([], task_state="up_for_reschedule")
    assert refuse(waiting, "alice") is None
    assert refuse(waiting, "dave", roles=("release",)) is None
    assert refuse(waiting, "mallory").startswith("403 mallory is not an approver")  # type: ignore[union-attr]
    assert refuse(waiting, "alice", gate.REJECT).startswith("422 A reject needs a reason")  # type: ignore[union-attr]
    own = facts([], owners=gate.ChangeOwners(pushed_by=frozenset({"alice"})), task_state="up_for_reschedule")
    assert (
        refuse(own, "alice")
        == "403 alice pushed a commit this run releases; this gate does not allow approving your own change."
    )
    other = gate.Build(BUILD.commit, "sha256:" + "e" * 64, BUILD.manifests)
    assert refuse(waiting, "alice", shown=other).startswith("409 This decision names")  # type: ignore[union-attr]
    twice = facts([decision("alice")], task_state="up_for_reschedule")
    assert refuse(twice, "alice").startswith("409 alice has already decided")  # type: ignore[union-attr]
    marked = facts([], task_state="success")
    assert refuse(marked, "alice").startswith("409 The gate approve of run run-1 is not waiting")  # type: ignore[union-attr]
    rejected = facts([decision("bob", gate.REJECT, reason="no")], task_state="up_for_reschedule")
    assert refuse(rejected, "alice").startswith("409 Already rejected by bob")  # type: ignore[union-attr]


def release_check(**changes: object) -> gate.ReleaseCheck:
    base = gate.ReleaseCheck(
        step="deploy_prod",
        environment="prod",
        gate="approve",
        gate_task_state="success",
        build_number=12,
        build=gate.Build(BUILD.commit, BUILD.digest),
        kept="kind: Deployment\n",
        rendered_now="kind: Deployment\n",
        render_error=None,
        newer_deployed=None,
    )
    from dataclasses import replace

    return replace(base, **changes)  # type: ignore[arg-type]


def check(decisions: list[gate.Decision], **changes: object) -> str | None:
    state_facts = facts(decisions)
    return gate.check_release(state_facts, gate.assess(state_facts), release_check(**changes))


def test_a_deploy_applies_only_an_approved_build_and_its_exact_manifests() -> None:
    approved = [decision("alice"), decision("bob")]
    assert check(approved) is None
    marked = check([decision("alice")])
    assert marked == (
        f"deploy_prod: no valid approval of build #12 ({BUILD.digest}) for prod — approve is success without a "
        "decision; the gate has 1 of the 2 approval(s) it needs (so far: alice)."
    )
    skipped = check([], gate_task_state="skipped")
    assert skipped is not None and "approve is skipped without a decision" in skipped
    rebuilt = check(approved, build=gate.Build(BUILD.commit, "sha256:" + "f" * 64))
    assert rebuilt is not None and "the run's records now say" in rebuilt
    edited = check(approved, rendered_now="kind: Deployment\nspec: {replicas: 9}\n")
    assert edited is not None and "the manifests changed after the approval" in edited
    edited_xcom = check(approved, xcom_build=gate.Build(BUILD.commit, "sha256:" + "9" * 64))
    assert edited_xcom is not None and "an XCom was edited after the build" in edited_xcom
    assert check(approved, xcom_build=gate.Build(BUILD.commit, BUILD.digest)) is None
    rolled_back = check(approved, newer_deployed="v1.1.0 deployed by run run-2")
    assert rolled_back is not None and "already runs a newer build" in rolled_back
    nothing_shown = gate.check_release(facts([], build=None), gate.assess(facts([], build=None)), release_check())
    assert nothing_shown is not None and "never showed a build" in nothing_shown


@pytest.mark.parametrize("status", ["rejected", "expired", "superseded"])
def test_a_deploy_is_refused_after_any_gate_outcome_but_approval(status: str) -> None:
    approved = [decision("alice"), decision("bob")]
    if status == "rejected":
        state_facts = facts([decision("carol", gate.REJECT, reason="no"), *approved])
    elif status == "expired":
        state_facts = facts([decision("alice")], now=OPENED + timedelta(hours=2))
    else:
        state_facts = facts([decision("alice")], newest=("run-2", RUN_AFTER + timedelta(minutes=1)))
    assessment = gate.assess(state_facts)
    assert assessment.status.value == status
    problem = gate.check_release(state_facts, assessment, release_check())
    assert problem is not None and problem.startswith("deploy_prod: no valid approval of build #12")
