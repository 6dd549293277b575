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
from airflow.sdk import BaseOperatorLink, BaseSensorOperator, Variable
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from conveyor import gate as gate_core
from conveyor import release
from conveyor.credentials import sync_secrets
from conveyor.exceptions import ConveyorError
from conveyor.pipeline import SecretRef
from conveyor.settings import approval_signing_key
from conveyor.spec import ApprovalPolicy, git_ref_problem
from conveyor.timefmt import format_duration

NOT_A_RELEASE = (
    "Skipped: this run is not a release. Step {step} runs only when the run has a tag_name "
    "(trigger the run with the param tag_name set, e.g. v1.2.3) or the app sets release.auto_tag."
)
BUILD_NUMBERS_KEEP = 500


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
    :param environment: deploy steps: the environment they deploy to (what they deploy is kept as
        the baseline the decision page diffs the next release against)
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
        environment: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.environment = environment
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
        if self.step_kind == "deploy" and self.environment:
            self._record_deployed(context)
        return result

    def _record_deployed(self, context: Any) -> None:
        """Keep what now runs in the environment: the next gate diffs its manifests against it."""
        from datetime import UTC, datetime

        from airflow.sdk import BaseHook

        ti = context["ti"]
        checkout, build = release.run_results(ti)
        try:
            spec = release.load_app(self.app)
            registry = release.spec_registry(spec, BaseHook.get_connection)
            manifests = release.render_environment(spec, str(self.environment), checkout, build, registry)
        except Exception as exc:  # the deploy succeeded; only the decision page's baseline is missing
            self.log.warning("Could not keep the deployed manifests as the next diff's baseline: %s", exc)
            return
        deployed = release.Deployed(
            run_id=context["run_id"],
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            commit=str(checkout.get("commit") or ""),
            digest=str(build.get("digest") or ""),
            tag=str(checkout.get("release_tag") or "") if self.environment == "prod" else "",
            manifests=manifests,
        )
        Variable.set(
            release.deployed_key(self.app, str(self.environment)),
            deployed.to_json(),
            description=f"What Conveyor last deployed to {self.environment} of {self.app}.",
        )

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


class DecisionPageLink(BaseOperatorLink):
    """The "Decision page" button of a gate task in the Airflow UI."""

    name = "Decision page"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return release.decision_link(ti_key.dag_id, ti_key.run_id, ti_key.task_id)


class ApprovalSensor(BaseSensorOperator):
    """Waits for an authorised, signed decision on this exact build: commit SHA, image digest and
    the rendered manifests of the environments it releases to.

    Opens on enough distinct approvals; fails on a reject (with its reason), on its timeout
    (expiry counts as a rejection) and when a newer run of the app reaches the same gate
    (superseded). Decisions are made through Conveyor's approval API; this sensor only reads
    and verifies them, notifies people when the gate opens and ends, and runs in reschedule
    mode so it holds no worker slot.

    :param app: the app's name
    :param policy: the gate's approval policy (``ApprovalPolicy.model_dump()``)
    :param releases_to: the environments this decision releases to
    :param release_only: skip (with the reason in the log) unless the run is a release
    :param auto_tag: the app releases every run
    """

    template_fields: Sequence[str] = ()
    ui_color = "#fde68a"
    operator_extra_links = (DecisionPageLink(),)

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
            self._notify("expired", context, reason=message)
            raise AirflowFailException(message) from None

    def poke(self, context: Any) -> bool:
        from airflow.sdk import BaseHook

        ti = context["ti"]
        run_id = context["run_id"]
        checkout, build = release.run_results(ti)
        commit, digest = checkout.get("commit"), build.get("digest")
        link = release.decision_link(self.app, run_id, self.task_id)
        if not commit or not digest:
            self.log.info("Waiting: this run's commit and image digest are not known yet (checkout/build results).")
            return False
        spec = self._spec()
        manifests = release.release_manifests(spec, self.releases_to, checkout, build, BaseHook.get_connection)
        if manifests.error:
            raise AirflowFailException(
                f"The manifests this gate would release to {', '.join(self.releases_to)} cannot be rendered, "
                f"so there is nothing to approve: {manifests.error}"
            )
        newer = self._superseded_by(context["dag_run"])
        if newer:
            message = (
                f"Superseded by run {newer}: a newer run of {self.app} reached {self.task_id}, so only its build "
                f"is released. This run's build (commit {commit[:12]}, image {digest}) will not be deployed."
            )
            self.log.error("%s", message)
            self._notify("superseded", context, reason=message)
            raise AirflowFailException(message)
        policy = ApprovalPolicy.model_validate(self.policy)
        raw = Variable.get(gate_core.storage_key(self.app, run_id, self.task_id), default=None)
        state = gate_core.evaluate(
            gate_core.load_records(raw),
            policy=policy,
            app=self.app,
            run_id=run_id,
            gate=self.task_id,
            build=gate_core.Build(commit=commit, digest=digest, manifests=manifests.hash or ""),
            key=approval_signing_key(),
            triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None),
            author=checkout.get("author"),
        )
        if state.ignored_unsigned:
            self.log.warning(
                "Ignored %d decision record(s) not signed by Conveyor's approval API (written some other way).",
                state.ignored_unsigned,
            )
        if state.ignored_other_build:
            self.log.warning(
                "Ignored %d decision(s) made for another build (other commit, image digest or manifests): "
                "the build changed after they were made, so it must be decided again.",
                state.ignored_other_build,
            )
        if state.rejection is not None:
            r = state.rejection
            message = f"Rejected by {r.user} at {r.at}: {r.reason}"
            self.log.error("%s", message)
            self._notify("rejected", context, people=(r.user,), reason=r.reason)
            raise AirflowFailException(message)
        if state.status is gate_core.GateStatus.APPROVED:
            self.log.info(
                "Approved by %s for commit %s, image %s, manifests %s; releasing to %s.",
                ", ".join(state.approvers),
                commit,
                digest,
                manifests.hash,
                ", ".join(self.releases_to),
            )
            self._notify("approved", context, people=tuple(state.approvers))
            return True
        self._notify_opened_once(context, policy)
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

    def _spec(self) -> Any:
        try:
            return release.load_app(self.app)
        except ConveyorError as exc:
            raise AirflowFailException(
                f"The spec of {self.app} cannot be read now, so this gate cannot check the build: {exc}"
            ) from None

    def _superseded_by(self, dag_run: Any) -> str | None:
        """The newer run that reached this gate, if any; else record this run as the newest."""
        key = release.newest_key(self.app, self.task_id)
        mine = release.Newest(dag_run.run_id, dag_run.run_after)
        newest = release.Newest.parse(Variable.get(key, default=None))
        if newest is not None and newest.run_id != mine.run_id and newest.run_after > mine.run_after:
            return newest.run_id
        if newest is None or newest.run_id != mine.run_id:
            Variable.set(key, mine.to_json(), description=f"The newest run of {self.app} that reached {self.task_id}.")
        return None

    def _notify_opened_once(self, context: Any, policy: ApprovalPolicy) -> None:
        key = gate_core.storage_key(self.app, context["run_id"], self.task_id) + ".opened"
        if Variable.get(key, default=None):
            return
        Variable.set(key, "notified", description="Conveyor: the approvers were told this gate opened.")
        people = tuple([*policy.users, *(f"role {r}" for r in policy.roles)])
        self._notify("opened", context, people=people)

    def _notify(self, kind: str, context: Any, *, people: tuple[str, ...] = (), reason: str = "") -> None:
        """Tell people; a notification that cannot be sent is logged and never fails the gate."""
        try:
            from conveyor import notify

            ti = context["ti"]
            checkout, build = release.run_results(ti)
            tag, number = checkout.get("release_tag"), checkout.get("build_number")
            version = f"{tag} (build {number})" if tag else (f"build {number}" if number else "")
            event = notify.GateEvent(
                kind=kind,  # type: ignore[arg-type]
                app=self.app,
                run_id=context["run_id"],
                gate=self.task_id,
                releases_to=tuple(self.releases_to),
                link=release.decision_link(self.app, context["run_id"], self.task_id),
                commit=str(checkout.get("commit") or ""),
                message=str(checkout.get("message") or ""),
                author=str(checkout.get("author") or ""),
                digest=str(build.get("digest") or ""),
                version=version,
                people=people,
                reason=reason,
            )
            channels = notify.gate_channels(release.load_app(self.app), self.task_id, kind)
            for line in notify.notify(event, channels, self.log):
                self.log.info("Notification (%s): %s", kind, line)
        except Exception as exc:  # never let telling people stop the release
            self.log.warning("Could not send the %s notification: %s. The gate is not affected.", kind, exc)
