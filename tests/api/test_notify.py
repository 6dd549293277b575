"""Gate notices sent from inside a running task (``dag.test()``, the Task SDK fetching connections through
its supervisor), as the approval sensor sends them: the SMTP connection and one webhook connection come from
``AIRFLOW_CONN_*`` variables, another webhook connection from Airflow's metadata database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.receivers import Mailbox, Webhook, smtp_server, webhook_receiver

pytestmark = pytest.mark.airflow

LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
LINK = "http://airflow.example.com/conveyor/apps/appointments/runs/manual__1/gates/approve"

DAG_FILE = textwrap.dedent(
    """
    import json
    import logging
    import os

    from airflow.sdk import dag, task


    @dag(dag_id="conveyor_notify_in_task", schedule=None)
    def notify_in_task():
        @task
        def send():
            from conveyor.notify import GateEvent, notify
            from conveyor.spec import Notifications

            event = GateEvent(
                kind="opened", app="appointments", run_id="manual__1", gate="approve",
                releases_to=("dev", "prod"), link=os.environ["NOTIFY_LINK"], version="v1.0.3 (build 7)",
            )
            channels = Notifications(
                email=["alice@example.com"], webhooks=["env_chat", "db_chat", "refused_chat"]
            )
            lines = notify(event, channels, logging.getLogger("airflow.task"))
            from airflow.sdk.execution_time import task_runner

            supervised = getattr(task_runner, "SUPERVISOR_COMMS", None) is not None
            with open(os.environ["NOTIFY_LINES"], "w") as out:
                json.dump({"lines": lines, "supervised": supervised}, out)

        send()


    this_dag = notify_in_task()

    if __name__ == "__main__":
        run = this_dag.test()
        print("DAG RUN FINISHED", run.state, flush=True)
    """
)


def apprise_conn(url: str) -> str:
    return json.dumps({"conn_type": "apprise", "extra": {"config": {"path": url}}})


def airflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=os.environ)


@pytest.fixture
def db_chat(airflow_db: Path) -> Iterator[Webhook]:
    """A webhook whose apprise connection lives in the metadata database, not in the environment."""
    with webhook_receiver() as hook:
        extra = json.dumps({"config": {"path": hook.url}})
        added = airflow("connections", "add", "db_chat", "--conn-type", "apprise", "--conn-extra", extra)
        assert added.returncode == 0, added.stderr
        try:
            yield hook
        finally:
            airflow("connections", "delete", "db_chat")


def test_a_task_notifies_through_env_and_database_connections(db_chat: Webhook, tmp_path: Path) -> None:
    dag_file = tmp_path / "notify_in_task.py"
    dag_file.write_text(DAG_FILE)
    lines_file = tmp_path / "lines.json"
    mailbox: Mailbox
    with smtp_server() as mailbox, webhook_receiver() as env_chat:
        smtp = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": mailbox.port,
            "extra": {"from_email": "conveyor@example.com", "disable_ssl": True, "disable_tls": True},
        }
        env = {
            **os.environ,
            "NOTIFY_LINES": str(lines_file),
            "NOTIFY_LINK": LINK,
            # dag.test() runs only serialised DAGs: this one is found in a bundle of its own, next to the app DAGs.
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
                [
                    {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
                    {"name": "notify-test", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(tmp_path)}},
                ]
            ),
            "AIRFLOW__CONVEYOR__SMTP_CONNECTION_ID": "smtp_task",
            "AIRFLOW__CONVEYOR__NOTIFICATION_TIMEOUT": "5",
            "AIRFLOW_CONN_SMTP_TASK": json.dumps(smtp),
            "AIRFLOW_CONN_ENV_CHAT": apprise_conn(env_chat.url),
            "AIRFLOW_CONN_REFUSED_CHAT": apprise_conn("json://127.0.0.1:1/hook"),
        }
        run = subprocess.run([sys.executable, str(dag_file)], capture_output=True, text=True, env=env, timeout=300)
        output = run.stdout[-4000:] + run.stderr[-4000:]
        assert "DAG RUN FINISHED success" in run.stdout, output

        result = json.loads(lines_file.read_text())
        assert result["supervised"], "the task did not run under the Task SDK's supervisor"
        lines = result["lines"]
        assert lines[:3] == [
            "e-mail to alice@example.com via smtp_task: sent",
            "webhook env_chat: sent",
            "webhook db_chat: sent",
        ], output
        assert lines[3].startswith("webhook refused_chat: failed: "), output  # and the task still succeeded
        [(_, mail)] = mailbox.mails
        assert "appointments v1.0.3 (build 7)" in mail["Subject"]
        assert LINK in mailbox.html()
        for hook in (env_chat, db_chat):
            [(_, body)] = hook.posts
            assert LINK in body["message"].splitlines()
