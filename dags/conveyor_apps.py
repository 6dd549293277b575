"""Airflow DAG file: one DAG per app spec in include/apps/ (built by plugins/conveyor/dag_builder.py)."""

from conveyor.dag_builder import register_apps

register_apps(globals())
