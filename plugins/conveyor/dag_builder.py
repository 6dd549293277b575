"""Turns the pipeline model into Airflow DAGs: stock pod operators plus the approval sensor.

``register_apps`` is what ``dags/conveyor_apps.py`` calls: it builds one DAG per valid
spec, and a spec that fails breaks only its own DAG, shown as an import error that
names the file and the field.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, chain
from kubernetes.client import ApiClient

from conveyor import settings
from conveyor.apps import load_apps
from conveyor.credentials import registry_host
from conveyor.exceptions import ConveyorError, InvalidSpecs, SpecError
from conveyor.gate_sensor import ApprovalSensor
from conveyor.notifier import StepNotifier
from conveyor.operators import ConveyorPodOperator
from conveyor.pipeline import Pipeline, RunValues, Step, build_pipeline, step_secrets
from conveyor.settings import CiCluster, StepImages
from conveyor.spec import RELEASE_TAG, AppSpec, Environment
from conveyor.steps import PodContext, build_step_pod
from conveyor.steps.common import label_value, step_pod_name
from conveyor.teams import Platform, load_platform, team_ci

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
RETRY_DELAY = timedelta(seconds=10)  # a lost pod or task process is tried again soon, not after Airflow's 5 min
POD_START_CHECK_SECONDS = 0.25  # the provider's look at a starting pod, in seconds
log = logging.getLogger(__name__)
# Whole strings only: JSON Schema patterns are searched, and in Python "$" also matches before a
# final newline, so "v1.2.3\n" would pass "^...$". The look-ahead refuses any newline (Python and
# JavaScript alike); the checkout step checks both params again as whole strings.
NO_NEWLINE = "(?!.*\n)"
TAG_PATTERN = "^$|^" + NO_NEWLINE + RELEASE_TAG.pattern.removeprefix("^")
BRANCH_PATTERN = "^" + NO_NEWLINE + r"[A-Za-z0-9._/-]+$"
COMMIT_PATTERN = "^$|^" + NO_NEWLINE + r"[0-9a-f]{40}$"


def image_tag_value(value: str) -> str:
    """A branch name made safe inside an image tag (``feature/login`` → ``feature-login``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-.")[:80] or "branch"


def jinja_literal(text: str) -> str:
    """``text`` written so that Jinja renders it unchanged (spec values are data, not templates)."""
    if "{{" not in text and "{%" not in text and "{#" not in text:
        return text
    return text.replace("{", "{{ '{' }}")  # one pass: the braces it writes are not replaced again


def template_strings(values: RunValues) -> list[str]:
    """Every template a pod may contain: the run values."""
    return sorted(set(vars(values).values()), key=len, reverse=True)


def to_template_dict(obj: Any, templates: list[str]) -> Any:
    """A pod (or part of it) as a dict for ``pod_template_dict``: only the run-value templates
    stay templates, every other string is escaped so Jinja leaves it as it is."""
    pattern = re.compile("(" + "|".join(re.escape(t) for t in templates) + ")")

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if not isinstance(value, str):
            return value
        parts = pattern.split(value)
        return "".join(part if i % 2 else jinja_literal(part) for i, part in enumerate(parts))

    return convert(obj)


@dataclass(frozen=True)
class RunFacts:
    """A run's values as Conveyor's records keep them: what ``conveyor_run(ti)`` returns to templates."""

    build_number: int
    branch: str
    commit: str
    release_tag: str
    digest: str


def run_macro(spec: AppSpec) -> Any:
    """The ``conveyor_run(ti)`` macro: this run's build number, branch, commit, release tag and image
    digest from Conveyor's records (what the steps' pods reported), never from XComs, which people can
    edit in the UI. Read once per task try."""
    cache: dict[tuple[str, str, int], RunFacts] = {}

    def conveyor_run(ti: Any) -> RunFacts:
        from conveyor import records

        key = (ti.run_id, ti.task_id, ti.try_number)
        if key not in cache:
            run = records.load(spec.name).run(ti.run_id)
            checkout, built = run.checked_out, run.built
            if checkout is None:
                raise ConveyorError(
                    f"Run {ti.run_id} of {spec.name} has no recorded checkout, so {ti.task_id} does not know what to "
                    "work on. Clear the run from 'checkout'."
                )
            cache[key] = RunFacts(
                build_number=checkout.build_number,
                branch=checkout.branch,
                commit=checkout.commit,
                release_tag=checkout.release_tag,
                digest=built.digest if built else "",
            )
        return cache[key]

    return conveyor_run


def registry_macros(spec: AppSpec) -> dict[str, Any]:
    """``conveyor_registry()`` (host[:port] of the app's registry connection) and
    ``conveyor_registry_tls_verify()`` ("false" when the connection's extra sets ``insecure``)."""

    def conveyor_registry() -> str:
        from airflow.sdk import BaseHook

        return registry_host(BaseHook.get_connection(spec.registry.connection))

    def conveyor_registry_tls_verify() -> str:
        from airflow.sdk import BaseHook

        insecure = BaseHook.get_connection(spec.registry.connection).extra_dejson.get("insecure")
        return "false" if insecure in (True, "true", "True", "1", 1) else "true"

    return {"conveyor_registry": conveyor_registry, "conveyor_registry_tls_verify": conveyor_registry_tls_verify}


def dag_params(spec: AppSpec) -> dict[str, Param]:
    steps = build_pipeline(spec).step_ids
    return {
        "branch": Param(
            spec.git.branch,
            type="string",
            minLength=1,
            maxLength=200,
            pattern=BRANCH_PATTERN,
            title="Branch",
            description="The branch to build; the run resolves it to one commit.",
        ),
        "tag_name": Param(
            None,
            type=["null", "string"],
            pattern=TAG_PATTERN,
            title="Release tag",
            description="Set it (e.g. v1.2.3 or v1.2.3-rc.1) to release: tag and deploy to production.",
        ),
        "commit": Param(
            None,
            type=["null", "string"],
            pattern=COMMIT_PATTERN,
            title="Commit",
            description="Build exactly this commit (40 hex digits); it must be on the branch. Empty: the branch's "
            "newest commit. Push-started runs set it to the pushed commit.",
        ),
        "until": Param(
            None,
            type=["null", "string"],
            enum=[None, *steps],
            title="Stop after",
            description="The last step to run; empty: the whole pipeline. Push-started runs take it from the "
            "spec's push rule (git.push[].until).",
        ),
    }


def _doc(pipeline: Pipeline) -> str:
    spec = pipeline.spec
    lines = [
        f"# {spec.name}",
        spec.description or "",
        "",
        f"Team **{spec.team}**; code at `{spec.git.url}` (branch `{spec.git.branch}`).",
        "",
        "Trigger with `tag_name` (e.g. `v1.2.3`) to release to production; without it the run stops after "
        "`deploy_dev`.",
        "",
        "| step | what it does |",
        "|---|---|",
        *[f"| `{s.id}` | {s.doc} |" for s in pipeline.steps],
    ]
    return "\n".join(lines)


def _environment(pipeline: Pipeline, step: Step) -> Environment | None:
    return pipeline.environment(step.environment) if step.environment else None


@cache
def _serializer() -> ApiClient:
    """One client for turning pods into dicts (each ApiClient makes a connection pool and a configuration)."""
    return ApiClient()


def _pod_template(pipeline: Pipeline, step: Step, ctx: PodContext, templates: list[str]) -> dict[str, Any]:
    """A step's pod as the operator's ``pod_template_dict``, made when its task runs (ConveyorPodOperator)."""
    pod = build_step_pod(pipeline, step, ctx)
    result: dict[str, Any] = to_template_dict(_serializer().sanitize_for_serialization(pod), templates)
    return result


@dataclass(frozen=True)
class DagSettings:
    """What every DAG of one parse of the DAG file shares, read once for all of them (with hundreds of apps,
    reading the platform file's, the images file's and Airflow's settings per DAG added up)."""

    platform: Platform
    images: StepImages
    ci: CiCluster
    gate_poll_interval: float
    gate_deferrable: bool

    @classmethod
    def read(cls) -> DagSettings:
        return cls(
            platform=load_platform(),
            images=settings.load_step_images(),
            ci=settings.ci_cluster(),
            gate_poll_interval=settings.gate_poll_interval(),
            gate_deferrable=settings.gate_deferrable(),
        )

    def pod_context(self, spec: AppSpec) -> PodContext:
        return PodContext(
            ci=team_ci(self.platform, spec.team, self.ci), images=self.images, values=RunValues.airflow(spec)
        )


def _task(step: Step, pipeline: Pipeline, ctx: PodContext, templates: list[str], shared: DagSettings) -> Any:
    spec = pipeline.spec
    trigger_rule = "none_failed" if step.release_only else "all_success"
    if step.is_gate:
        assert step.policy is not None  # gates always carry their policy
        return ApprovalSensor(
            task_id=step.id,
            app=spec.name,
            releases_to=step.releases_to,
            release_only=step.release_only,
            auto_tag=spec.release.auto_tag,
            timeout=step.policy.timeout,
            poll_interval=shared.gate_poll_interval,
            deferrable=shared.gate_deferrable,
            trigger_rule=trigger_rule,
            doc_md=step.doc,
            retries=0,
        )
    extra: dict[str, Any] = {}
    if step.type.one_at_a_time:
        extra["max_active_tis_per_dag"] = 1
    return ConveyorPodOperator(
        task_id=step.id,
        app=spec.name,
        step_kind=step.kind.value,
        release_only=step.release_only,
        auto_tag=spec.release.auto_tag,
        auto_tag_prefix=spec.release.auto_tag_prefix,
        secret_refs=[(r.kind, r.connection_id) for r in step_secrets(pipeline, step)],
        environment=step.environment,
        deploy_target=(env.cluster, env.namespace) if (env := _environment(pipeline, step)) else None,
        kubernetes_conn_id=ctx.ci.connection_id,
        namespace=ctx.ci.namespace,
        name=step_pod_name(pipeline, step),
        pod_template=partial(_pod_template, pipeline, step, ctx, templates),
        do_xcom_push=step.type.result,
        get_logs=True,
        # The step's init containers (fetch, prepare, package, the image build) log into the task log too.
        init_container_logs=True,
        log_events_on_failure=True,
        # the pod's spec holds the step's token and a deploy's approved manifests: not for the failure's message
        log_pod_spec_on_failure=False,
        on_finish_action="delete_pod",
        startup_timeout_seconds=300,
        # how often the operator looks whether the pod started or ended during its init containers (the default,
        # 5 s, is most of a short step's time; each look is one small read of the pod and of its events)
        startup_check_interval_seconds=POD_START_CHECK_SECONDS,
        # the spec's limit (limits.step_timeout, limits.timeouts): a step past it fails and its pod is deleted
        execution_timeout=timedelta(seconds=spec.limits.timeout_of(step.id)),
        trigger_rule=trigger_rule,
        doc_md=step.doc,
        **extra,
    )


def build_dag(spec: AppSpec, *, shared: DagSettings | None = None) -> DAG:
    """The DAG of one app: its id is the app's name, its tasks the pipeline's steps."""
    pipeline = build_pipeline(spec)
    shared = shared or DagSettings.read()
    ctx = shared.pod_context(spec)
    templates = template_strings(ctx.values)
    dag = DAG(
        dag_id=spec.name,
        description=spec.description or f"Conveyor pipeline of {spec.name}",
        schedule=spec.schedule,
        start_date=START_DATE,
        catchup=False,
        tags=["conveyor", spec.team],
        doc_md=_doc(pipeline),
        default_args={
            "owner": spec.owner or spec.team,
            "retries": spec.retries,
            # (only failures of the platform are retried: ConveyorPodOperator fails the step's own for good)
            "retry_delay": RETRY_DELAY,
            # A step that fails on its last try tells the app's team; its next success tells them it recovered.
            "on_failure_callback": StepNotifier(app=spec.name),
            "on_success_callback": StepNotifier(app=spec.name),
        },
        user_defined_macros={"conveyor_run": run_macro(spec), **registry_macros(spec)},
        user_defined_filters={"conveyor_label": label_value, "conveyor_tag": image_tag_value},
        max_active_runs=spec.limits.max_active_runs,
    )
    with dag:
        tasks = [_task(step, pipeline, ctx, templates, shared) for step in pipeline.steps]
        chain(*tasks)
    # The params after the tasks: Airflow deep-copies the DAG's params into each operator it makes (three times
    # for ours, once per class), a fifth of the DAG file's time; a task's params are the DAG's merged with its
    # own when it runs (process_params), so the copies would hold nothing the task needs.
    dag.params = dag_params(spec)  # type: ignore[assignment]  # attrs converts it to a ParamsDict
    return dag


def spec_errors_message(errors: list[SpecError]) -> str:
    return "\n\n".join(
        f"Failed to build DAG '{Path(e.file).stem}' from '{e.file}':\n" + "\n".join(f"  - {p}" for p in e.problems)
        for e in errors
    )


def check_specs(folder: Path | None = None, *, team: str | None = None) -> None:
    """Raise one error listing every invalid app spec (the body of dags/conveyor_spec_check.py).

    Airflow keeps import errors per DAG file and hides the DAGs of a file that has one.
    So the apps' DAGs come from one file that never fails on a bad spec, and the bad
    specs are reported by this second, DAG-less file: its import error names each spec
    file and field, and it clears itself on the next parse once the specs are fixed.
    In a team's bundle (``team``) it reports the specs of that team, and those whose team
    cannot be read.
    """
    _, errors = load_apps(folder)
    errors = [e for e in errors if team is None or _declared_team(e.file) in (team, None)]
    if errors:
        raise InvalidSpecs(spec_errors_message(errors))


def _declared_team(file: str) -> str | None:
    """The ``team:`` a spec file names, read without validating it (None when it cannot be read)."""
    import yaml

    try:
        data = yaml.safe_load(Path(file).read_text())
    except (OSError, yaml.YAMLError):
        return None
    team = data.get("team") if isinstance(data, dict) else None
    return team if isinstance(team, str) else None


def register_apps(namespace: dict[str, Any], folder: Path | None = None, *, team: str | None = None) -> dict[str, DAG]:
    """Build a DAG for every app spec into ``namespace`` (a DAG file's ``globals()``); in a team's Dag
    bundle (``team``, Airflow's multi-team mode) only for the specs of that team.

    A bad spec breaks only its own DAG: the others load, and dags/conveyor_spec_check.py
    reports the bad one as its import error. In strict mode (``[conveyor] strict``) any
    bad spec fails this file too, for CI.
    """
    from airflow.sdk import get_parsing_context

    strict = settings.strict()  # read first: a mistyped value is an import error even when every spec is good
    # A task's process parses this file to run one task of one DAG: Airflow says which, so only that app's spec is
    # read and only its DAG built (with hundreds of apps, every step would otherwise pay for all of them).
    specs, errors = load_apps(folder, only=get_parsing_context().dag_id)
    if team is not None:
        specs = [s for s in specs if s.team == team]
        errors = [e for e in errors if _declared_team(e.file) in (team, None)]
    if errors and strict:
        raise (
            errors[0]
            if len(errors) == 1
            else SpecError(", ".join(e.file for e in errors), [p for e in errors for p in e.problems])
        )
    dags: dict[str, DAG] = {}
    shared = DagSettings.read() if specs else None
    for spec in specs:
        dag = build_dag(spec, shared=shared)
        namespace[f"conveyor_{spec.name.replace('-', '_')}"] = dag
        dags[spec.name] = dag
    for error in errors:
        log.error("%s", spec_errors_message([error]))
    return dags
