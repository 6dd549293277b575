# Conveyor: Airflow 3 as a CI/CD system for Kubernetes. `make help` lists the entry points.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV = $(shell scripts/venv)
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: help install up down airflow-up airflow-down cluster-up cluster-down test test-integration test-e2e lint bench validate docs

help: ## list the entry points
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## create the Python environment (cached in /var/cache/conveyor)
	@scripts/venv >/dev/null && echo "Python environment ready: $$(scripts/venv)"

up: install ## start Conveyor: Kubernetes, registry, Git server, step images and Airflow on :8080 (installs what it misses)
	@scripts/up

down: ## stop everything `make up` started
	@scripts/down

airflow-up: install ## start only Airflow (multi-team mode) with the sample apps
	@scripts/airflow/up

airflow-down: ## stop Airflow
	@scripts/airflow/down

cluster-up: ## start the single-node Kubernetes cluster (builds it on first use)
	@scripts/cluster/up

cluster-down: ## stop the Kubernetes cluster
	@scripts/cluster/down

test: install ## run the test suite: lint, types, unit, DAG integrity, approval API, decision pages (installs chromium, docker-compose)
	@scripts/test

test-integration: install ## run the tests against the local platform (after `make up`)
	@scripts/test integration

test-e2e: install ## run whole pipelines through the running Airflow and platform (after `make up`; E2E=files for some)
	@scripts/test e2e $(E2E)

lint: install ## ruff, mypy, and shellcheck on every shell script (scripts/lint-shell; installs shellcheck)
	@$(VENV)/bin/ruff check plugins dags tests bench
	@$(VENV)/bin/mypy plugins/conveyor
	@scripts/lint-shell

validate: install ## validate every app spec strictly
	@bin/conveyor validate --strict

docs: install ## regenerate docs/spec-reference.md and docs/spec.schema.json from the app spec's models (spec.py)
	@bin/conveyor spec schema --output docs/spec.schema.json
	@bin/conveyor spec reference --output docs/spec-reference.md

bench: install ## time the DAG file with 500 apps, one release of the sample app per step, 20 releases at once (after `make up`); JSON in bench/results/
	@$(VENV)/bin/python bench/parsing.py 500
	@$(VENV)/bin/python bench/release_flow.py
	@$(VENV)/bin/python bench/concurrent.py 20
