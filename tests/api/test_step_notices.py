"""Failure and recovery notices of a generated DAG run through ``dag.test()``: a step whose pod fails on its
last try tells the app's team (real SMTP server and webhook receiver), the retry before it tells no one, and
the step's next success says it recovered; a gate that expires is told by the gate alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.api import dag_runs
from tests.api.dag_runs import DagTest
from tests.support.receivers import smtp_server, webhook_receiver

pytestmark = [pytest.mark.airflow, pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-token-4711"
POD_LINES = [
    "============================= test session starts ==============================",
    *[f"tests/test_booking.py::test_case_{n} PASSED" for n in range(30)],
    f"E   requests.exceptions.HTTPError: 401 for token {SECRET}",
    "FAILED tests/test_booking.py::test_double_booking - AssertionError: 2 != 1",
    "========================= 1 failed, 30 passed in 1.20s =========================",
]


@pytest.fixture
def notice_app(tmp_path: Path) -> Path:
    """The sample app as ``notice-demo``: one retry per step, a gate that expires after 2s, its team told by
    e-mail and a webhook (an apps folder of its own, so the other tests keep the real one)."""
    apps = tmp_path / "apps"
    apps.mkdir()
    spec = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
    spec["name"] = "notice-demo"
    spec["retries"] = 1
    spec["approvals"]["approve"]["timeout"] = "2s"
    spec["notifications"] = {"email": ["clinic-team@example.com"], "webhooks": ["team_chat"]}
    (apps / "notice-demo.yaml").write_text(yaml.safe_dump(spec))
    platform = yaml.safe_load((REPO / "config" / "platform.yaml").read_text())
    platform["teams"]["clinic"]["apps"].append("notice-demo")
    platform["teams"]["clinic"]["webhooks"] = ["team_chat"]
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(platform))
    return apps


def test_a_step_failing_on_its_last_try_tells_the_team_and_its_next_success_says_recovered(
    dag_test: Callable[..., DagTest], notice_app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runs' pods: unit_test's fails (every try) in the first run, and passes in the second.
    monkeypatch.setattr(dag_runs, "RUNNER", REPO / "tests" / "api" / "run_failing_step.py")
    with smtp_server() as mailbox, webhook_receiver() as chat:
        env = {
            "AIRFLOW__CONVEYOR__APPS_FOLDER": str(notice_app),
            "AIRFLOW__CONVEYOR__PLATFORM_FILE": str(notice_app.parent / "platform.yaml"),
            "AIRFLOW__API__BASE_URL": "http://conveyor.example.com",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "0",  # the retry at once
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": mailbox.port,
                    "extra": {"from_email": "conveyor@example.com", "disable_tls": True, "disable_ssl": True},
                }
            ),
            "AIRFLOW_CONN_TEAM_CHAT": json.dumps({"conn_type": "apprise", "extra": {"config": {"path": chat.url}}}),
            "AIRFLOW_CONN_STEP_SECRET": json.dumps({"conn_type": "generic", "login": "ci", "password": SECRET}),
        }
        first = dag_test(
            "notice-demo",
            {},
            pods=dag_runs.pod_results("notice-demo"),
            env={**env, "CONVEYOR_TEST_POD_FAIL": json.dumps({"unit_test": POD_LINES})},
        )
        output = first.finish(timeout=180)
        run_id = first.run_id()
        assert f"DAG RUN FINISHED {run_id} failed" in output, output[-4000:]
        assert output.count("POD FAILS unit_test") == 2, output[-4000:]  # the try and its retry
        assert first.state(run_id, "unit_test") == "failed"

        # One notice, after the last try, on each channel.
        [(_, failed)] = chat.posts
        [(recipients, mail)] = mailbox.mails
        assert recipients == ["clinic-team@example.com"]
        assert failed["title"] == mail["Subject"] == "[Conveyor] notice-demo: unit_test failed"
        lines = failed["message"].splitlines()
        assert lines[0] == "Step unit_test of notice-demo failed on its last try (2 of 2)."
        assert f"- Run: {run_id}" in lines and "- Try: 2 of 2" in lines
        [error] = [line for line in lines if line.startswith("- Error: ")]
        assert error.startswith("- Error: Pod ") and error.endswith(" returned a failure.")
        tail = lines[lines.index("Last log lines:") + 2 : lines.index("Log:") - 2]
        assert tail == [f"[base] {line}".replace(SECRET, "***") for line in POD_LINES[-20:]]
        assert "[base] E   requests.exceptions.HTTPError: 401 for token ***" in tail  # as in the task log
        assert SECRET not in failed["message"] and SECRET not in mailbox.html()
        link = (
            f"http://conveyor.example.com/dags/notice-demo/runs/{quote(run_id, safe=':')}/tasks/unit_test?try_number=2"
        )
        assert lines[lines.index("Log:") + 1] == link
        assert f'<a href="{link}">' in mailbox.html()

        second = dag_test("notice-demo", {}, pods=dag_runs.pod_results("notice-demo"), env=env)
        output = second.finish(timeout=180)
        run_2 = second.run_id()
        assert f"DAG RUN FINISHED {run_2} failed" in output, output[-4000:]  # at the gate, which expired
        assert second.state(run_2, "unit_test") == "success", output[-6000:]
        assert second.state(run_2, "approve") == "failed"

    titles = [body["title"] for _, body in chat.posts[1:]]
    assert titles == [
        "[Conveyor] notice-demo: unit_test recovered",  # once: checkout, build and push passed before too
        "[Conveyor] notice-demo build 2 waiting for approval to dev",
        "[Conveyor] notice-demo build 2: approval for dev expired",  # the gate's own notice, no step notice
    ], titles
    recovered = chat.posts[1][1]["message"].splitlines()
    assert f"- Had failed in: run {run_id}, try 2" in recovered
    assert (
        f"http://conveyor.example.com/dags/notice-demo/runs/{quote(run_2, safe=':')}/tasks/unit_test?try_number=1"
        in recovered
    )
    assert [m["Subject"] for _, m in mailbox.mails[1:]] == titles
