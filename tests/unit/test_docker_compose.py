"""docker-compose.yaml is a valid Airflow deployment for a Docker host (checked by docker-compose itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SECRETS = {"CONVEYOR_APPROVAL_SIGNING_KEY": "k" * 32, "AIRFLOW_JWT_SECRET": "j" * 64}


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: `make test` installs it (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "-f", str(REPO / "docker-compose.yaml"), *args], capture_output=True, text=True, env={**clean, **env}
    )


def test_compose_file_is_valid_and_complete() -> None:
    result = compose("config", env=SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {
        "postgres",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }
    assert services["airflow-init"]["command"] == ["db", "migrate"]
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        service = services[name]
        mounts = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include", "/opt/airflow/config"} <= mounts
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        env = service["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CONVEYOR__APPROVAL_SIGNING_KEY"] == "k" * 32
        assert env["AIRFLOW__CONVEYOR__SQL_ALCHEMY_CONN"].startswith("postgresql")  # every worker reaches the records
    assert services["airflow-api-server"]["ports"][0]["published"] in (8080, "8080")


def test_missing_secret_is_named() -> None:
    result = compose("config", env={"AIRFLOW_JWT_SECRET": "j" * 64})
    assert result.returncode != 0
    assert "set CONVEYOR_APPROVAL_SIGNING_KEY" in result.stderr
