"""Airflow dag file of one team's Dag bundle that reports the team's invalid app specs as its import
error (see dags/conveyor_spec_check.py). `conveyor teams bundles` copies it into each team's folder."""

from pathlib import Path

from conveyor.dag_builder import check_specs

check_specs(team=Path(__file__).parent.name)
