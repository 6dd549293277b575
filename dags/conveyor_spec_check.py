"""Airflow dag file that reports invalid app specs as its import error (it defines no DAG).

The apps' DAGs come from conveyor_apps.py, which skips a bad spec so the others keep
running; this file makes the bad ones visible under "Import Errors" in the Airflow UI,
naming each spec file and field.
"""

from conveyor.dag_builder import check_specs

check_specs()
