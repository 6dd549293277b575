"""The two operators Conveyor's DAGs are made of: a thin KubernetesPodOperator for pod steps
and the approval sensor.

``ConveyorPodOperator`` adds only what the stock operator cannot know: skipping steps that
run only for a release (with the reason in the log), the app's build number, and the
Secrets made from Airflow connections that the pod mounts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseSensorOperator, Variable
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from conveyor import gate as gate_core
from conveyor.credentials import sync_secrets
from conveyor.pipeline import SecretRef
from conveyor.settings import approval_signing_key, ui_base_url
from conveyor.spec import ApprovalPolicy, git_ref_problem

NOT_A_RELEASE = (
    "Skipped: this run is not a release. Step {step} runs only when the run has a tag_name "
    "(trigger the run with the param tag_name set, e.g. v1.2.3) or the app sets release.auto_tag."
)
BUILD_NUMBERS_KEEP = 500


def format_duration(seconds: float) -> str:
    """``86400`` → ``24h``, ``5400`` → ``1h30m``, ``45`` → ``45s``."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


def is_release(params: dict[str, Any], auto_tag: bool) -> bool:
    return bool(params.get("tag_name")) or auto_tag


def release_tag(params: dict[str, Any], auto_tag: bool, auto_tag_prefix: str, build_number: int) -> str:
    if params.get("tag_name"):
        return str(params["tag_name"])
    return f"{auto_tag_prefix}.{build_number}" if auto_tag else ""


def next_build_number(stored: str | None, run_id: str) -> tuple[int, str]:
    """The run's build number and the counter's new stored value (a rerun keeps its number)."""
    try:
        data = json.loads(stored) if stored else {}
    except ValueError:
        data = {}
    last = int(data.get("last", 0)) if isinstance(data, dict) else 0
    runs = data.get("runs", {}) if isinstance(data, dict) else {}
    if not isinstance(runs, dict):
        runs = {}
    if run_id in runs:
        return int(runs[run_id]), json.dumps({"last": last, "runs": runs})
    number = last + 1
    runs[run_id] = number
    if len(runs) > BUILD_NUMBERS_KEEP:
        runs = dict(sorted(runs.items(), key=lambda item: item[1])[-BUILD_NUMBERS_KEEP:])
    return number, json.dumps({"last": number, "runs": runs})


class ConveyorPodOperator(KubernetesPodOperator):
    """A pipeline step that runs as a pod built by ``conveyor.steps``.

    :param app: the app's name
    :param step_kind: the step's kind (``checkout``, ``build``, ...)
    :param release_only: skip (with the reason in the log) unless the run is a release
    :param auto_tag: the app releases every run (``release.auto_tag``)
    :param auto_tag_prefix: automatic release tags are ``<prefix>.<build number>``
    :param secret_refs: ``(kind, connection id)`` pairs to turn into Secrets before the pod starts
    """

    template_fields: Sequence[str] = tuple(KubernetesPodOperator.template_fields)

    def __init__(
        self,
        *,
        app: str,
        step_kind: str,
        release_only: bool = False,
        auto_tag: bool = False,
        auto_tag_prefix: str = "v1.0",
        secret_refs: Sequence[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.step_kind = step_kind
        self.release_only = release_only
        self.auto_tag = auto_tag
        self.auto_tag_prefix = auto_tag_prefix
        self.secret_refs = [tuple(r) for r in secret_refs]

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # A step that will skip (not a release) must not fail first on rendering values,
        # such as this run's image digest, that a non-release run may never produce.
        if self.release_only and not is_release(context["params"], self.auto_tag):
            return
        super().render_template_fields(context, jinja_env)

    def execute(self, context: Any) -> Any:
        params = context["params"]
        if self.release_only and not is_release(params, self.auto_tag):
            raise AirflowSkipException(NOT_A_RELEASE.format(step=self.task_id))
        build_number = None
        if self.step_kind == "checkout":
            problem = git_ref_problem(str(params.get("branch") or ""))
            if problem:
                raise AirflowFailException(
                    f"The branch {params.get('branch')!r} is not a valid git branch name: it {problem}. "
                    "Trigger the run with an existing branch."
                )
            build_number = self._allocate_build_number(context["run_id"])
            self.log.info("Build #%s of %s", build_number, self.app)
        self._sync_secrets()
        result = super().execute(context)
        if self.step_kind == "checkout":
            result = dict(result or {})
            result["build_number"] = build_number
            result["release_tag"] = release_tag(params, self.auto_tag, self.auto_tag_prefix, build_number or 0)
            self.log.info(
                "Build #%s works on commit %s of branch %s%s",
                build_number,
                result.get("commit"),
                result.get("branch"),
                f"; releases as {result['release_tag']}" if result["release_tag"] else "",
            )
        return result

    def _allocate_build_number(self, run_id: str) -> int:
        # The checkout step of an app never runs twice at once (max_active_tis_per_dag=1),
        # so this read-modify-write of the app's counter cannot race with itself.
        key = f"conveyor.build_numbers.{self.app}"
        number, stored = next_build_number(Variable.get(key, default=None), run_id)
        Variable.set(key, stored, description=f"Conveyor's build counter of {self.app}; do not edit.")
        return number

    def _sync_secrets(self) -> None:
        if not self.secret_refs:
            return
        from airflow.sdk import BaseHook

        refs = [SecretRef(kind, conn_id) for kind, conn_id in self.secret_refs]
        namespace = self.namespace or self.hook.get_namespace() or "default"
        names = sync_secrets(self.client, namespace, refs, BaseHook.get_connection)
        self.log.info("Credentials handed to the pod by reference: Secrets %s in %s", ", ".join(names), namespace)


class ApprovalSensor(BaseSensorOperator):
    """Waits for an authorised, signed decision on this exact build (commit SHA and image digest).

    Opens on enough distinct approvals, fails on a reject (with its reason) and on its
    timeout. Decisions are made through Conveyor's approval API; this sensor only reads
    and verifies them, and runs in reschedule mode so it holds no worker slot.

    :param app: the app's name
    :param policy: the gate's approval policy (``ApprovalPolicy.model_dump()``)
    :param releases_to: the environments this decision releases to
    :param release_only: skip (with the reason in the log) unless the run is a release
    :param auto_tag: the app releases every run
    """

    template_fields: Sequence[str] = ()
    ui_color = "#fde68a"

    def __init__(
        self,
        *,
        app: str,
        policy: dict[str, Any],
        releases_to: Sequence[str],
        release_only: bool = False,
        auto_tag: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.app = app
        self.policy = policy
        self.releases_to = list(releases_to)
        self.release_only = release_only
        self.auto_tag = auto_tag

    def execute(self, context: Any) -> Any:
        if self.release_only and not is_release(context["params"], self.auto_tag):
            raise AirflowSkipException(NOT_A_RELEASE.format(step=self.task_id))
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            # Expiry is a rejection, said in the people's words, not the sensor's.
            message = (
                f"Expired after {format_duration(float(self.timeout))} without the required approvals: "
                "the gate counts as rejected. Trigger a new run to ask again."
            )
            self.log.error("%s", message)
            raise AirflowFailException(message) from None

    def poke(self, context: Any) -> bool:
        ti = context["ti"]
        run_id = context["run_id"]
        checkout = ti.xcom_pull(task_ids="checkout") or {}
        build = ti.xcom_pull(task_ids="build") or {}
        commit, digest = checkout.get("commit"), build.get("digest")
        link = f"{ui_base_url()}/conveyor/gates/{self.app}/{run_id}/{self.task_id}"
        if not commit or not digest:
            self.log.info("Waiting: this run's commit and image digest are not known yet (checkout/build results).")
            return False
        policy = ApprovalPolicy.model_validate(self.policy)
        raw = Variable.get(gate_core.storage_key(self.app, run_id, self.task_id), default=None)
        state = gate_core.evaluate(
            gate_core.load_records(raw),
            policy=policy,
            app=self.app,
            run_id=run_id,
            gate=self.task_id,
            build=gate_core.Build(commit=commit, digest=digest),
            key=approval_signing_key(),
            triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None),
        )
        if state.ignored_unsigned:
            self.log.warning(
                "Ignored %d decision record(s) not signed by Conveyor's approval API (written some other way).",
                state.ignored_unsigned,
            )
        if state.ignored_other_build:
            self.log.warning("Ignored %d decision(s) made for another build.", state.ignored_other_build)
        if state.rejection is not None:
            r = state.rejection
            message = f"Rejected by {r.user} at {r.at}: {r.reason}"
            self.log.error("%s", message)
            raise AirflowFailException(message)
        if state.status is gate_core.GateStatus.APPROVED:
            self.log.info(
                "Approved by %s for commit %s, image %s; releasing to %s.",
                ", ".join(state.approvers),
                commit,
                digest,
                ", ".join(self.releases_to),
            )
            return True
        self.log.info(
            "Waiting for %d of %d approval(s) for commit %s, image %s (approved so far: %s). Decide at %s",
            policy.required - len(state.approvals),
            policy.required,
            commit[:12],
            digest,
            ", ".join(state.approvers) or "nobody",
            link,
        )
        return False
