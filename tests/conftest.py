"""Test settings shared by every suite.

The Airflow configuration for the tests is set here, before anything imports Airflow:
a throw-away AIRFLOW_HOME with its own SQLite database, this checkout's dags/ and
plugins/, a signing key for approvals, and four users of Airflow's simple auth manager.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The platform file that grants the fixture specs' teams (tests/fixtures/apps) what they use.
FIXTURE_PLATFORM = REPO / "tests" / "fixtures" / "platform.yaml"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="conveyor-tests-"))
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
# alice: admin, listed nowhere by name; bob: user, listed by name; carol: viewer; dave: op.
USERS = "alice:admin,bob:user,carol:viewer,dave:op"
WEBHOOK_SECRET = secrets.token_urlsafe(32)

(AIRFLOW_HOME / "passwords.json").write_text(json.dumps(PASSWORDS))
# The tests' Airflow reads copies of the app specs and manifests: a test may edit them (as a user edits the
# repository mid-run) without touching the checkout.
APPS = AIRFLOW_HOME / "apps"
MANIFESTS = AIRFLOW_HOME / "manifests"
shutil.copytree(REPO / "include" / "apps", APPS)
shutil.copytree(REPO / "include" / "manifests", MANIFESTS)
TEST_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
    # One Fernet key for every process of the tests (this one, `airflow db migrate`, the api-server,
    # dag.test runs): else each may generate its own and cannot read the others' Variables.
    "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "AIRFLOW__CONVEYOR__APPROVAL_SIGNING_KEY": "tests-signing-key-0123456789",
    "AIRFLOW__CONVEYOR__GATE_POLL_INTERVAL": "1",
    "AIRFLOW__CONVEYOR__APPS_FOLDER": str(APPS),
    "AIRFLOW__CONVEYOR__MANIFESTS_FOLDER": str(MANIFESTS),
    "AIRFLOW__CONVEYOR__PLATFORM_FILE": str(REPO / "config" / "platform.yaml"),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    # The sample apps' registry, so gates can render the manifests they release (nothing connects to it here).
    "AIRFLOW_CONN_REGISTRY": json.dumps({"conn_type": "generic", "host": "10.88.0.1", "port": 5000}),
    # The push webhook's secret (tests/api/test_webhook.py signs its events with it).
    "AIRFLOW_CONN_CONVEYOR_WEBHOOK": json.dumps({"conn_type": "generic", "password": WEBHOOK_SECRET}),
    "CONVEYOR_HOME": str(REPO),
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "plugins"), os.environ.get("PYTHONPATH")])),
}
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """An initialised Airflow metadata database with the sample apps' DAGs in it."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)
    yield AIRFLOW_HOME


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's package), started once per test process; its database URL."""
    from tests.support.postgres import postgres_server

    with postgres_server() as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e and tests/integration needs the running platform: mark it so even when its
    file forgets ``pytestmark`` (`make test` deselects both marks)."""
    for item in items:
        suite = item.path.relative_to(REPO / "tests").parts[0] if item.path.is_relative_to(REPO / "tests") else ""
        if suite in ("e2e", "integration"):
            item.add_marker(getattr(pytest.mark, suite))
