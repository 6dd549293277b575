"""Runs one app's DAG with ``dag.test()`` in its own process (used by tests/api/test_gate_runs.py).

usage: python run_dag_test.py DAG_ID CONF_JSON MARK_SUCCESS_PATTERN
The pod steps named by the pattern are marked successful instead of run; everything
else, the approval sensor included, runs for real against the test database.
"""

from __future__ import annotations

import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag


def main() -> None:
    dag_id, conf, pattern = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    run = bag.dags[dag_id].test(run_conf=conf, mark_success_pattern=pattern)
    print(f"DAG RUN FINISHED {run.run_id} {run.state}", flush=True)


if __name__ == "__main__":
    main()
