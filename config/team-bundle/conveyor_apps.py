"""Airflow DAG file of one team's Dag bundle (multi-team mode): the DAGs of the apps whose spec names the
team this bundle's folder is named after. `conveyor teams bundles` copies it into each team's folder."""

from pathlib import Path

from conveyor.dag_builder import register_apps

register_apps(globals(), team=Path(__file__).parent.name)
