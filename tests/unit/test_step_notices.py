"""Step notices: what a failure and a recovery notice say (the first error line, the last log lines with
secrets masked, the link to the log), when StepNotifier sends them, and the failed pod's last lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import models as k8s

from conveyor.notifier import StepNotifier, failing_key, gate_announced_its_end, log_link
from conveyor.step_notices import StepEvent, compose_step, first_error_line, log_tail
from tests.support.receivers import Mailbox, Webhook, smtp_server, webhook_receiver

# Apprise 2.3 imports the standard library's deprecated imghdr (apprise/utils/pgp.py) on Python 3.11.
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

LINK = "http://airflow.example.com/dags/appointments/runs/manual__1/tasks/unit_test?try_number=2"
TAIL = tuple(f"[base] line {n}" for n in range(1, 21))
FAILED = StepEvent(
    kind="failed",
    app="appointments",
    step="unit_test",
    run_id="manual__1",
    try_number=2,
    tries=2,
    link=LINK,
    dag_id="appointments",
    error="Pod unit-test-1 returned a failure.",
    log_tail=TAIL,
)


# --- what a notice says --------------------------------------------------------------------


def test_a_failure_names_app_step_run_and_try_quotes_error_and_tail_and_links_the_log() -> None:
    notice = compose_step(FAILED)
    assert notice.title == "[Conveyor] appointments: unit_test failed"
    assert notice.notify_type == "failure"
    lines = notice.markdown.splitlines()
    assert lines[0] == "Step unit_test of appointments failed on its last try (2 of 2)."
    for fact in (
        "- App: appointments",
        "- Step: unit_test",
        "- Run: manual__1",
        "- Try: 2 of 2",
        "- Error: Pod unit-test-1 returned a failure.",
    ):
        assert fact in lines
    assert "- DAG: appointments" not in lines  # the app is its DAG
    start = lines.index("Last log lines:")
    assert lines[start + 1] == "```" and lines[start + 22] == "```"
    assert lines[start + 2 : start + 22] == list(TAIL)
    assert lines[lines.index(LINK) - 1] == "Log:"
    assert f'<a href="{LINK}">' in notice.html
    assert "<pre>[base] line 1\n" in notice.html


def test_a_failure_that_is_not_retried_says_so() -> None:
    event = StepEvent(**{**FAILED.__dict__, "try_number": 1, "tries": 3})
    assert compose_step(event).markdown.splitlines()[0] == (
        "Step unit_test of appointments failed on try 1 of 3, with an error that is not retried."
    )


def test_the_log_lines_cannot_break_out_of_their_block_or_the_email() -> None:
    event = StepEvent(**{**FAILED.__dict__, "log_tail": ("```", "<script>alert(1)</script>", "````x")})
    notice = compose_step(event)
    lines = notice.markdown.splitlines()
    start = lines.index("Last log lines:")
    assert lines[start + 1] == "`````" and lines[start + 5] == "`````"  # longer than any run of backticks
    assert "<script>" not in notice.html and "&lt;script&gt;" in notice.html


def test_a_recovery_says_which_failure_it_ends() -> None:
    event = StepEvent(
        kind="recovered",
        app="reports",
        step="load",
        run_id="manual__2",
        try_number=1,
        link=LINK,
        dag_id="nightly_reports",
        error="ValueError: no rows",
        failed_run_id="manual__1",
        failed_try=3,
    )
    notice = compose_step(event)
    assert notice.title == "[Conveyor] reports: load recovered"
    assert notice.notify_type == "success"
    lines = notice.markdown.splitlines()
    assert lines[0] == "Step load of reports (DAG nightly_reports) passes again, in run manual__2."
    assert "- DAG: nightly_reports" in lines
    assert "- Run: manual__2, try 1" in lines
    assert "- Had failed in: run manual__1, try 3" in lines
    assert "- Its error was: ValueError: no rows" in lines
    assert "Last log lines:" not in lines
    assert lines[-1] == LINK


def test_the_first_error_line_is_the_first_that_says_something() -> None:
    assert first_error_line("\n  \nPod x returned a failure.\nremote_pod: {...}") == "Pod x returned a failure."
    assert first_error_line("", "AirflowTaskTimeout") == "AirflowTaskTimeout"
    assert first_error_line("x" * 1000).endswith("…") and len(first_error_line("x" * 1000)) == 300


def test_the_tail_is_the_last_twenty_lines_each_cut_to_a_readable_length() -> None:
    lines = [f"line {n}" for n in range(50)] + ["y" * 5000]
    tail = log_tail(lines)
    assert len(tail) == 20 and tail[0] == "line 31" and len(tail[-1]) == 300


def test_the_log_link_is_the_ui_page_of_that_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    assert log_link("appointments", "manual__2026-01-05T10:00:00+00:00", "unit_test", 2) == (
        "https://airflow.example.com/dags/appointments/runs/manual__2026-01-05T10:00:00%2B00:00/tasks/unit_test"
        "?try_number=2"
    )
    assert (
        log_link("d", "r", "t", 1, map_index=3)
        == "https://airflow.example.com/dags/d/runs/r/tasks/t/mapped/3?try_number=1"
    )


# --- StepNotifier as a task's callbacks --------------------------------------------------------


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    with smtp_server() as box:
        smtp = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": box.port,
            "extra": {"from_email": "conveyor@example.com", "disable_ssl": True, "disable_tls": True},
        }
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", json.dumps(smtp))
        monkeypatch.setenv("AIRFLOW__CONVEYOR__SMTP_CONNECTION_ID", "smtp_test")
        yield box


@pytest.fixture
def team_chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    with webhook_receiver() as hook:
        monkeypatch.setenv(
            "AIRFLOW_CONN_TEAM_CHAT", json.dumps({"conn_type": "apprise", "extra": {"config": {"path": hook.url}}})
        )
        yield hook


class Variables:
    """Airflow Variables as a task sees them (the Task SDK's Variable), kept in a dict for the test."""

    stored: dict[str, str] = {}

    @classmethod
    def get(cls, key: str, default: Any = None) -> Any:
        return cls.stored.get(key, default)

    @classmethod
    def set(cls, key: str, value: str, description: str | None = None) -> None:
        cls.stored[key] = value

    @classmethod
    def delete(cls, key: str) -> None:
        cls.stored.pop(key, None)


@pytest.fixture
def variables(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import airflow.sdk

    stored: dict[str, str] = {}
    monkeypatch.setattr(Variables, "stored", stored)
    monkeypatch.setattr(airflow.sdk, "Variable", Variables)
    return stored


@pytest.fixture
def masker(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A secret masker of the test's own (Airflow's is one per process), as a task's knows its secrets."""
    from airflow.sdk._shared.secrets_masker import secrets_masker

    own = secrets_masker.SecretsMasker()
    monkeypatch.setattr(secrets_masker, "_secrets_masker", lambda: own)
    return own


def context(
    state: str,
    *,
    try_number: int = 2,
    run_id: str = "manual__1",
    error: BaseException | None = None,
    tail: tuple[str, ...] = (),
    notifier: StepNotifier | None = None,
) -> dict[str, Any]:
    task = SimpleNamespace(
        task_id="unit_test",
        log=logging.getLogger("test.task"),
        log_tail=tail,
        on_success_callback=[notifier] if notifier else [],
    )
    ti = SimpleNamespace(
        dag_id="nightly",
        task_id="unit_test",
        run_id=run_id,
        try_number=try_number,
        max_tries=1,
        map_index=-1,
        state=state,
    )
    return {"ti": ti, "task": task, "run_id": run_id, "exception": error}


def test_a_final_failure_reaches_the_team_masked_and_its_next_success_says_recovered(
    mailbox: Mailbox, team_chat: Webhook, variables: dict[str, str], masker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example.com")
    masker.add_mask("s3cr3t-token-value")
    notifier = StepNotifier(email=["team@example.com"], webhooks="team_chat")
    error = RuntimeError("login failed with s3cr3t-token-value\nTraceback ...")
    tail = ("[base] connecting", "[base] Authorization: Bearer s3cr3t-token-value", "[base] exit 1")

    notifier(context("failed", error=error, tail=tail, notifier=notifier))

    [(recipients, mail)] = mailbox.mails
    assert recipients == ["team@example.com"]
    assert mail["Subject"] == "[Conveyor] nightly: unit_test failed"
    [(_, body)] = team_chat.posts
    message = body["message"]
    assert "s3cr3t" not in message and "s3cr3t" not in mailbox.html()
    assert "- Error: login failed with ***" in message.splitlines()
    assert "[base] Authorization: Bearer ***" in message.splitlines()
    link = "http://airflow.example.com/dags/nightly/runs/manual__1/tasks/unit_test?try_number=2"
    assert link in message.splitlines() and f'<a href="{link}">' in mailbox.html()
    assert json.loads(variables[failing_key("nightly", "unit_test")]) == {
        "run_id": "manual__1",
        "try_number": 2,
        "error": "login failed with ***",
    }

    notifier(context("success", try_number=1, run_id="manual__2", notifier=notifier))
    assert len(team_chat.posts) == 2 and len(mailbox.mails) == 2
    recovered = team_chat.posts[1][1]
    assert recovered["title"] == "[Conveyor] nightly: unit_test recovered"
    assert "- Had failed in: run manual__1, try 2" in recovered["message"].splitlines()
    assert variables == {}

    notifier(context("success", try_number=1, run_id="manual__3", notifier=notifier))
    assert len(team_chat.posts) == 2  # recovered once, not on every success


def test_retries_and_skips_tell_no_one(team_chat: Webhook, variables: dict[str, str]) -> None:
    notifier = StepNotifier(webhooks=["team_chat"])
    for state in ("up_for_retry", "skipped", "success"):
        notifier(context(state, error=RuntimeError("boom"), notifier=notifier))
    assert team_chat.posts == [] and variables == {}


def test_without_it_on_success_a_failure_is_told_but_not_remembered(
    team_chat: Webhook, variables: dict[str, str]
) -> None:
    notifier = StepNotifier(webhooks=["team_chat"])
    notifier(context("failed", error=RuntimeError("boom")))
    assert len(team_chat.posts) == 1 and variables == {}


def test_an_app_is_told_through_its_spec_and_a_bad_address_is_only_skipped(
    team_chat: Webhook, variables: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor import notifier as notifier_module
    from conveyor.spec import Notifications

    asked: list[tuple[str, str]] = []

    def team(app: str, run_id: str) -> Notifications:
        asked.append((app, run_id))
        return Notifications(webhooks=["team_chat"])

    monkeypatch.setattr(notifier_module, "team_channels", team)
    notifier = StepNotifier(app="{{ ti.dag_id }}-app", email=["not-an-address"], webhooks=["team_chat"])
    with caplog.at_level(logging.WARNING, logger="test.task"):
        notifier(context("failed", error=RuntimeError("boom"), notifier=notifier))
    assert asked == [("nightly-app", "manual__1")]  # templated, as BaseNotifier's fields are
    [(_, body)] = team_chat.posts  # the team's webhook and the notifier's own, once
    assert body["title"] == "[Conveyor] nightly-app: unit_test failed"
    assert any("not usable, skipped" in r.getMessage() for r in caplog.records)


def test_a_notice_that_cannot_be_sent_does_not_raise(
    variables: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN_CHAT",
        json.dumps({"conn_type": "apprise", "extra": {"config": {"path": "json://127.0.0.1:1/hook"}}}),
    )
    notifier = StepNotifier(app="no-such-app", webhooks=["down_chat"])
    with caplog.at_level(logging.WARNING, logger="test.task"):
        notifier(context("failed", error=RuntimeError("boom"), notifier=notifier))
    messages = [r.getMessage() for r in caplog.records]
    assert any("The team of app no-such-app is not known" in m for m in messages)
    assert any("webhook down_chat: failed" in m for m in messages)


def test_a_gate_that_timed_out_has_announced_its_end_and_a_pod_step_has_not() -> None:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

    from conveyor.gate_sensor import ApprovalSensor

    gate = ApprovalSensor(task_id="approve", app="appointments", releases_to=["dev"], timeout=60)
    try:
        try:
            raise AirflowSensorTimeout("timed out")
        except AirflowSensorTimeout:
            raise AirflowFailException("Expired after 1m without the required approvals") from None
    except AirflowFailException as exc:
        expired = exc
    assert gate_announced_its_end(gate, {"exception": expired, "run_id": "manual__1"})
    step = SimpleNamespace(task_id="unit_test")
    assert not gate_announced_its_end(step, {"exception": expired, "run_id": "manual__1"})


# --- the failed pod's last lines --------------------------------------------------------------


class PodLogs:
    """The Kubernetes API's pod log endpoint, as far as the operator reads it."""

    def __init__(self, text: str = "", error: Exception | None = None) -> None:
        self.text, self.error, self.asked = text, error, []

    def read_namespaced_pod_log(self, **kwargs: Any) -> str:
        self.asked.append(kwargs)
        if self.error:
            raise self.error
        return self.text


def pod(phase: str, base_exit: int | None, init_exit: int | None = None) -> k8s.V1Pod:
    def status(name: str, code: int | None) -> k8s.V1ContainerStatus:
        state = (
            k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code))
            if code is not None
            else k8s.V1ContainerState()
        )
        return k8s.V1ContainerStatus(name=name, state=state, image="i", image_id="", ready=False, restart_count=0)

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="unit-test-1", namespace="conveyor-ci"),
        status=k8s.V1PodStatus(
            phase=phase,
            init_container_statuses=[status("fetch", init_exit)] if init_exit is not None else [],
            container_statuses=[status("base", base_exit)],
        ),
    )


def operator(logs: PodLogs) -> Any:
    from conveyor.operators import ConveyorPodOperator

    op = ConveyorPodOperator(task_id="unit_test", app="appointments", step_kind="unit_test", name="unit-test")
    op.__dict__["client"] = logs  # the operator's cached Kubernetes client
    return op


def test_a_failed_pod_keeps_the_last_lines_of_the_container_that_failed() -> None:
    logs = PodLogs("collected 3 items\nFAILED test_booking.py::test_double\n")
    assert operator(logs)._failed_pod_log_tail(pod("Failed", base_exit=1)) == (
        "[base] collected 3 items",
        "[base] FAILED test_booking.py::test_double",
    )
    assert logs.asked[0]["container"] == "base" and logs.asked[0]["tail_lines"] == 20

    logs = PodLogs("fatal: repository not found")
    assert operator(logs)._failed_pod_log_tail(pod("Failed", base_exit=None, init_exit=128)) == (
        "[fetch] fatal: repository not found",
    )


def test_a_pod_that_succeeded_or_whose_log_cannot_be_read_keeps_none() -> None:
    logs = PodLogs("all good")
    assert operator(logs)._failed_pod_log_tail(pod("Succeeded", base_exit=0)) == ()
    assert logs.asked == []
    assert operator(PodLogs(error=OSError("connection refused")))._failed_pod_log_tail(pod("Failed", 1)) == ()


def test_a_run_superseded_by_a_newer_push_tells_no_one(team_chat: Webhook, variables: dict[str, str]) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from conveyor.exceptions import RunSuperseded

    notifier = StepNotifier(webhooks=["team_chat"])
    try:
        raise AirflowFailException("superseded") from RunSuperseded("push__b", "refs/heads/main", "b" * 40)
    except AirflowFailException as error:
        notifier(context("failed", error=error, notifier=notifier))
    assert team_chat.posts == [] and variables == {}


def test_a_gate_that_passed_tells_the_team_who_approved_it(team_chat: Webhook, variables: dict[str, str]) -> None:
    """The "approved" notice comes from the gate's success callback, whoever ended the gate (its task, or its
    trigger: then Airflow runs the callback in the DAG processor)."""
    import uuid
    from datetime import UTC, datetime

    from conveyor import records
    from conveyor.gate_sensor import ApprovalSensor
    from conveyor.spec import Notifications
    from tests.unit.test_release_environments import APP, COMMIT, SPEC, approve, shown

    run_id = f"manual__{uuid.uuid4().hex}"
    spec = SPEC.model_copy(update={"notifications": Notifications(webhooks=["team_chat"])})
    started = records.start_run(
        APP, run_id, spec, triggered_by="dave", run_after=datetime.now(UTC), branch="main", tag_name="v1.0.0"
    )
    records.record(
        APP, records.Kind.CHECKED_OUT, records.CheckedOut(run_id, COMMIT, "main", started.build_number, "v1.0.0")
    )
    gate = ApprovalSensor(task_id="approve", app=APP, releases_to=["dev"], timeout=60)
    notifier = StepNotifier(app=APP)
    ti = SimpleNamespace(dag_id=APP, task_id="approve", run_id=run_id, try_number=1, max_tries=0, state="success")
    passed = {"ti": ti, "task": gate, "run_id": run_id, "exception": None}

    notifier(passed)  # not approved (nothing shown yet): no approved notice
    assert team_chat.posts == []
    approve(shown(run_id, "approve"), "alice")
    notifier(passed)
    [(_, body)] = team_chat.posts
    assert "approved" in body["title"] and "- Approved by: alice" in body["message"].splitlines()
