"""Conveyor: Airflow 3 as a CI/CD system for Kubernetes.

Each application's spec (``include/apps/<app>.yaml``) becomes one DAG whose steps
run as pods; a signed, policy-checked approval gate guards every release.
"""

from __future__ import annotations

__version__ = "0.1.0"
