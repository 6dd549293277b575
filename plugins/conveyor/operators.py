"""The operator of Conveyor's pod steps, a thin KubernetesPodOperator. The rules every step task shares (release
runs, ``until``, run params) are :mod:`conveyor.task_rules`; the approval gate is :mod:`conveyor.gate_sensor`.

``ConveyorPodOperator`` adds only what the stock operator cannot know: skipping steps that
run only for a release (with the reason in the log), keeping what the steps found and built
in Conveyor's records, the Secrets made from Airflow connections that the pod mounts, and,
for deploy steps, the release check right before anything is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, NoReturn

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s

from conveyor import apps, records, release, settings
from conveyor import gate as gate_rules
from conveyor.credentials import bind_pod_secrets, remove_secrets, sync_secrets
from conveyor.exceptions import ConveyorError, RunSuperseded, TamperedRecords
from conveyor.pipeline import STEP_TYPES, SecretRef, StepKind
from conveyor.pod_manager import (
    STEP_END_ENV,
    STEP_RESULT_ENV,
    PromptPodManager,
    StepEnd,
    new_step_end_token,
    own_failure,
)
from conveyor.run_view import RunReportLink
from conveyor.steps.common import SCRIPTS_VOLUME, ensure_step_scripts, runs_a_step_script, scripts_config_map_name
from conveyor.task_rules import (
    NOT_A_RELEASE,
    fail,
    load_records,
    params_problem,
    past_until,
    release_tag,
    run_is_release,
)

MANIFESTS_ENV = "CONVEYOR_MANIFESTS"
MANIFESTS_SHA_ENV = "CONVEYOR_MANIFESTS_SHA256"
BASE_COMMITS_ENV = "CONVEYOR_BASE_COMMITS"


def env_literal(value: str) -> str:
    """``value`` as a container environment variable that reaches the process unchanged: Kubernetes expands
    ``$(NAME)`` in env values and turns ``$$`` into ``$``, so every ``$`` is written twice."""
    return value.replace("$", "$$")


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value if v] if isinstance(value, list) else []


class ConveyorPodOperator(KubernetesPodOperator):
    """A pipeline step that runs as a pod built by ``conveyor.steps``.

    :param app: the app's name
    :param step_kind: the step's kind (``checkout``, ``build``, ...)
    :param release_only: skip (with the reason in the log) unless the run is a release
    :param auto_tag: the app releases every run (``release.auto_tag``)
    :param auto_tag_prefix: automatic release tags are ``<prefix>.<build number>``
    :param secret_refs: ``(kind, connection id)`` pairs to turn into Secrets before the pod starts
    :param environment: deploy steps: the environment they deploy to
    :param deploy_target: deploy steps: the ``(cluster connection, namespace)`` the pod applies to, checked
        against the spec the run started with
    :param pod_template: makes the step's pod as a ``pod_template_dict`` (templates for the run's values), called
        once, when the task runs: making every step's pod whenever the DAG file is parsed was half of what
        the DAG processor spent on many apps, for pods that only a task's own process ever uses
    """

    template_fields: Sequence[str] = tuple(KubernetesPodOperator.template_fields)
    shallow_copy_attrs: Sequence[str] = ("pod_template",)  # a function of the spec, which copies never change
    # "Tests and quality" on the unit_test and sonar tasks: the run page with what their pods reported.
    operator_extra_links = (RunReportLink(),)

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
        deploy_target: tuple[str, str] | None = None,
        pod_template: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pod_template = pod_template
        self.environment = environment
        self.deploy_target = tuple(deploy_target) if deploy_target else None
        self.app = app
        self.step_kind = step_kind
        self.release_only = release_only
        self.auto_tag = auto_tag
        self.auto_tag_prefix = auto_tag_prefix
        self.secret_refs = [tuple(r) for r in secret_refs]
        self._release_manifests: str | None = None
        self._base_commits: list[str] = []
        self._killed_run_id: str | None = None

    @property
    def kind(self) -> StepKind:
        return StepKind(self.step_kind)

    @cached_property
    def pod_manager(self) -> PromptPodManager:
        """The stock PodManager, but one that notices the pod ending promptly (conveyor.pod_manager)."""
        return PromptPodManager(kube_client=self.client, callbacks=self.callbacks)

    def step_pod_template(self) -> dict[str, Any] | None:
        """The step's pod as a template dict (``pod_template_dict``), made from the spec the first time."""
        if self.pod_template_dict is None and self.pod_template is not None:
            self.pod_template_dict = self.pod_template()
        return self.pod_template_dict

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # A step that will skip (not a release, or past the run's last step) must not fail first on rendering
        # values, such as this run's image digest, that such a run may never produce.
        if self.release_only and not run_is_release(self.app, context, self.auto_tag):
            return
        if past_until(self, context["params"]):
            return
        self.step_pod_template()
        super().render_template_fields(context, jinja_env)

    def execute(self, context: Any) -> Any:
        params = context["params"]
        if skipped := past_until(self, params):
            raise AirflowSkipException(skipped)
        if self.release_only and not run_is_release(self.app, context, self.auto_tag):
            raise AirflowSkipException(NOT_A_RELEASE.format(step=self.task_id))
        problem = params_problem(params)
        if problem:
            raise fail(problem)
        kind, step_type = self.kind, STEP_TYPES[self.kind]
        started = self._start_run(context) if kind is StepKind.CHECKOUT else None
        if started is not None:
            # What earlier deployments already carried: the change this run brings is measured from there.
            self._base_commits = load_records(self.app).deployed_commits()
        before = load_records(self.app).run(context["run_id"]) if kind is StepKind.BUILD or step_type.reports else None
        deploy = None
        if kind is StepKind.DEPLOY:
            deploy = self._verify_release(context, str(self.environment), applying=True)
            self._release_manifests = deploy.manifests[str(self.environment)]
        elif step_type.release_check:
            # A release tag names an approved build only: the gate before the first environment must approve
            # this exact build.
            self._verify_release(context, None, applying=False)
        made: list[str] = []
        self._killed_run_id = context["run_id"]  # on_kill gets no context: it deletes this run's Secrets
        try:
            made = self._sync_secrets(context["run_id"])
            result = super().execute(context)
        except Exception as exc:
            if deploy is not None:
                self._record_deployed(context, deploy, "failed")
            self._fail_for_good_if_own(exc)
            raise
        finally:
            self._remove_secrets(made)
        if started is not None:
            result = self._record_checkout(params, started, result)
        if kind is StepKind.BUILD and before is not None:
            self._record_build(context, before, result)
        if step_type.reports:
            self._record_passed(context, before)
        if deploy is not None:
            self._record_deployed(context, deploy, "succeeded")
        return result

    # --- checkout and build: what the pods reported, kept where the UI cannot edit it ----

    def _start_run(self, context: Any) -> records.RunStarted:
        dag_run = context["dag_run"]
        try:
            spec = apps.load_app(self.app)
        except ConveyorError as exc:
            raise fail(f"The spec of {self.app} cannot be read, so the run cannot start: {exc}") from None
        try:
            started = records.start_run(
                self.app,
                context["run_id"],
                spec,
                triggered_by=str(getattr(dag_run, "triggering_user_name", "") or ""),
                run_after=getattr(dag_run, "run_after", None) or datetime.now(UTC),
                branch=str(context["params"].get("branch") or ""),
                tag_name=str(context["params"].get("tag_name") or ""),
            )
        except TamperedRecords as exc:
            raise fail(str(exc)) from None
        except RunSuperseded as exc:
            raise fail(str(exc)) from exc  # the notifier knows it by its cause: no failure notice
        self.log.info(
            "Build #%s of %s; this run keeps the spec it started with (%s)",
            started.build_number,
            self.app,
            started.spec_hash,
        )
        return started

    def _record_checkout(self, params: dict[str, Any], started: records.RunStarted, result: Any) -> dict[str, Any]:
        from conveyor import grants, teams

        result = dict(result or {})
        if not str(result.get("commit") or ""):
            raise fail("The checkout step handed on no commit, so the run has nothing to build. Rerun from checkout.")
        # A pusher is a verified identity only from a Git server that records it where clients cannot write.
        trusted = grants.pusher_recorded(started.app_spec(), teams.load_platform())
        tag = release_tag(params, self.auto_tag, self.auto_tag_prefix, started.build_number)
        checkout = records.CheckedOut(
            run_id=started.run_id,
            commit=str(result.get("commit") or ""),
            branch=str(result.get("branch") or ""),
            build_number=started.build_number,
            release_tag=tag,
            message=str(result.get("message") or ""),
            author=str(result.get("author") or ""),
            author_email=str(result.get("author_email") or ""),
            committer_email=str(result.get("committer_email") or ""),
            pusher=str(result.get("pusher") or "") if trusted else "",
            change_emails=_strings(result.get("change_emails")),
            change_pushers=_strings(result.get("change_pushers")) if trusted else [],
            change_commits=int(result.get("change_commits") or 1),
            change_truncated=bool(result.get("change_truncated")),
        )
        records.record(self.app, records.Kind.CHECKED_OUT, checkout)
        result.update(build_number=started.build_number, release_tag=tag)
        self.log.info(
            "Build #%s works on commit %s of branch %s%s",
            started.build_number,
            checkout.commit,
            checkout.branch,
            f"; releases as {tag}" if tag else "",
        )
        return result

    def _record_build(self, context: Any, before: records.RunRecords, result: Any) -> None:
        checkout = before.checked_out
        digest = str((result or {}).get("digest") or "")
        if checkout is None or not digest:
            raise fail("The build finished without a checkout record or an image digest; rerun from checkout.")
        built = records.Built(
            run_id=context["run_id"],
            commit=checkout.commit,
            digest=digest,
            repository=str((result or {}).get("repository") or ""),
        )
        records.record(self.app, records.Kind.BUILT, built)

    def _record_passed(self, context: Any, before: records.RunRecords | None) -> None:
        """Keep what the test or quality step's pod reported (the JUnit summary, the quality gate) in Conveyor's
        records, passed or not; then record the pass, or fail the task saying why. The pods hand on their report
        and exit 0 even when tests fail, so that it arrives: the verdict is made here, by the rules of
        :mod:`conveyor.reports`. Only a recorded pass counts for the gate (a task state can be set by hand)."""

        from conveyor import reports
        from conveyor.run_view import run_link

        checkout = before.checked_out if before else None
        if checkout is None:
            raise fail(f"{self.task_id} ran, but the run has no recorded checkout; rerun from checkout.")
        run_id = context["run_id"]
        pod_result = getattr(self, "_pod_result", None)
        failed: tuple[reports.FailedTest, ...] = ()
        if self.kind is StepKind.UNIT_TEST:
            results = reports.TestResults.from_pod(pod_result)
            kept: Any = records.TestReport(run_id, self.task_id, checkout.commit, results.to_dict(), records.now_iso())
            records.record(self.app, records.Kind.TEST_REPORT, kept)
            what, headline, failure, failed = "Unit tests", results.headline(), results.failure(), results.failed
            for problem in results.problems:
                self.log.warning("Test report: %s", problem)
        else:
            from airflow.sdk import BaseHook

            from conveyor.steps.sonar import quality_gate_of

            spec = before.started.app_spec() if before and before.started else apps.load_app(self.app)
            ref = next((r for r in self._step_secrets(run_id) if r.kind == "sonar"), None)
            if ref is None:
                gate = reports.QualityGate(-1, problem=f"{self.task_id} has no SonarQube connection; rebuild the DAG")
            else:
                gate = quality_gate_of(pod_result, ref, spec.sonar.project_key or "", BaseHook.get_connection)
            kept = records.QualityReport(run_id, self.task_id, checkout.commit, gate.to_dict(), records.now_iso())
            records.record(self.app, records.Kind.QUALITY_GATE, kept)
            what, headline, failure = "SonarQube quality gate", gate.headline(), gate.failure()
            for condition in gate.conditions:
                self.log.info("Condition %s: %s", condition.status, condition.describe())
        link = run_link(self.app, run_id)
        self.log.info("%s: %s (kept in Conveyor's records; shown at %s)", what, headline, link)
        for test in failed:
            self.log.error("Failing test (%s): %s%s", test.kind, test.name, f": {test.message}" if test.message else "")
        if failure:
            raise fail(f"{failure} See {link}")  # a verdict: the same commit tried again gets the same one
        records.record(self.app, records.Kind.PASSED, records.Passed(run_id, self.task_id, checkout.commit))

    def extract_xcom(self, pod: k8s.V1Pod, **kwargs: Any) -> Any:
        """The pod's result as its script handed it on (the pod manager reads it from the step's log), kept for
        :meth:`_record_passed`: what the unit_test and sonar pods report reaches the records straight from the pod,
        never from an XCom a person could edit.

        A result that cannot be read is kept too: :meth:`cleanup` raises it once the pod is dealt with, where the
        provider's clean-up would put its own "Pod … returned a failure" in its place."""
        from conveyor.exceptions import StepResultError

        self._result_error: StepResultError | None = None
        try:
            result = super().extract_xcom(pod, **kwargs)
        except StepResultError as exc:
            self._result_error = exc
            raise
        self._pod_result = result
        return result

    # --- deploy: the release check, right before anything is applied ---------------------

    def _gate_task_state(self, context: Any, gate: str) -> str | None:
        try:
            states = context["ti"].get_task_states(dag_id=self.dag_id, task_ids=[gate], run_ids=[context["run_id"]])
            state = (states.get(context["run_id"]) or {}).get(gate)
        except Exception:  # the state only words the message; the check itself never depends on it
            return None
        return str(getattr(state, "value", state)) if state else None

    @staticmethod
    def _xcom_build(context: Any) -> gate_rules.Build | None:
        """What the checkout and build XComs say now: never trusted, only compared with the records."""
        ti = context["ti"]
        checkout = ti.xcom_pull(task_ids="checkout") or {}
        built = ti.xcom_pull(task_ids="build") or {}
        if not isinstance(checkout, dict) or not isinstance(built, dict):
            return gate_rules.Build(str(checkout), str(built))
        if not checkout and not built:
            return None
        return gate_rules.Build(str(checkout.get("commit") or ""), str(built.get("digest") or ""))

    def _verify_release(self, context: Any, env: str | None, *, applying: bool) -> records.GateOpened:
        """The build and manifests this step may release to ``env`` (None: the first environment of the spec the
        run started with), or AirflowFailException naming what is
        missing. ``applying``: a deploy, which must also deploy where the run started to, never over a newer
        build, and records that it is applying before its pod starts (no record, no deploy)."""
        from airflow.sdk import BaseHook

        run_id = context["run_id"]
        history = load_records(self.app)
        audit = {"action": self.task_id, "run_id": run_id, "app": self.app}
        try:
            run = release.RunRelease.of(history, run_id)
        except ConveyorError as exc:
            self._refuse(audit, "", f"{self.task_id}: refused — {exc}")
        env = env or run.spec.environments[0].name
        try:
            target = run.pipeline.environment(env)
        except KeyError as exc:
            self._refuse(
                audit,
                "",
                f"{self.task_id}: refused — {exc.args[0]}. A run keeps the spec it started with: this task comes "
                "from a newer spec; start a new run.",
            )
        if applying and self.deploy_target and self.deploy_target != (target.cluster, target.namespace):
            self._refuse(
                audit,
                "",
                f"{self.task_id}: refused — this task deploys to {self.deploy_target[1]} through "
                f"'{self.deploy_target[0]}', but run {run_id} started when {env} was {target.namespace} through "
                f"'{target.cluster}'. A run keeps the spec it started with; start a new run to use the new spec.",
            )
        gate_step = run.covering_gate(env)
        facts = run.facts(gate_step.id, now=datetime.now(UTC), task_state=None)
        assessment = gate_rules.assess(facts)
        shown = run.run.gate_shown(gate_step.id)
        rendered = run.render([env], BaseHook.get_connection)
        newer = history.newer_deployment(env, run.started.run_after_at) if applying else None
        check = gate_rules.ReleaseCheck(
            step=self.task_id,
            environment=env,
            gate=gate_step.id,
            gate_task_state=self._gate_task_state(context, gate_step.id),
            build_number=run.started.build_number,
            build=run.run.current_build(),
            kept=shown.manifests.get(env) if shown else None,
            rendered_now=rendered.rendered.get(env) if rendered and not rendered.error else None,
            render_error=rendered.error if rendered else "this run has no complete checkout and build",
            newer_deployed=newer.describe() if newer else None,
            xcom_build=self._xcom_build(context),
        )
        problem = gate_rules.check_release(facts, assessment, check)
        if problem:
            self._refuse(audit, gate_step.id, problem, shown)
        assert shown is not None  # check_release refuses without a shown build
        if applying and run.spec.is_release_environment(env):
            self._check_released(run, env, gate_step.id, audit, shown)
        if applying:
            self._record_applying(context, audit, shown, env, run.started)
        else:
            self._audit(audit, gate_step.id, "verified", 200, "", shown)
        self.log.info(
            "Release verified: %s, %s; releasing exactly the build and manifests approved (%s).",
            gate_step.id,
            assessment.explain(),
            shown.manifests_hash,
        )
        return shown

    def _check_released(
        self, run: release.RunRelease, env: str, gate: str, audit: dict[str, str], shown: records.GateOpened
    ) -> None:
        """An environment after the first one gets releases only: the run must be a release (as its checkout
        recorded it, under the spec it started with, whatever the DAG says now), and the first gate must have
        approved this same build, whatever happened to that gate's task since."""
        checkout = run.run.checked_out
        if checkout is None or not checkout.release_tag:
            self._refuse(
                audit,
                gate,
                f"{self.task_id}: refused — {env} gets releases only, and run {run.run.run_id} is not a release "
                "(it has no tag_name). Trigger a run with tag_name to release.",
                shown,
            )
        first = run.covering_gate(run.spec.environments[0].name)
        if first.id == gate:
            return
        assessment = run.assess(first.id)
        approved = run.run.gate_shown(first.id)
        same = approved is not None and (approved.commit, approved.digest) == (shown.commit, shown.digest)
        if assessment.status is not gate_rules.GateStatus.APPROVED or not same:
            self._refuse(
                audit,
                gate,
                f"{self.task_id}: refused — a release reaches {env} only after {first.id} approved the same build; "
                f"{first.id} {assessment.explain()}"
                + ("" if same else f", and showed another build than {gate} does")
                + ". Start a new release run.",
                shown,
            )

    def _record_applying(
        self, context: Any, base: dict[str, str], shown: records.GateOpened, env: str, started: records.RunStarted
    ) -> None:
        """Record, before the pod starts, that this deploy is applying (with its verified audit event), in one
        append that checks again that no newer build deployed meanwhile. No record, no deploy: a rerun of an
        older build can never miss this deploy."""
        at = records.now_iso()
        applying = self._deployment(context, shown, env, started, "applying", at)
        event = self._audit_event(base, shown.gate, "verified", 200, "", shown, at)

        def compute(history: records.AppRecords) -> list[Any]:
            newer = history.newer_deployment(env, started.run_after_at)
            if newer is not None:
                raise ConveyorError(f"{env} already runs a newer build ({newer.describe()}) since the check")
            return [
                records.entry(records.Kind.AUDIT, event, gate=shown.gate),
                records.entry(records.Kind.DEPLOYED, applying),
            ]

        try:
            records.append(self.app, compute)
        except Exception as exc:
            self._refuse(base, shown.gate, f"{self.task_id}: refused — could not record that it applies: {exc}", shown)

    def _deployment(
        self,
        context: Any,
        shown: records.GateOpened,
        env: str,
        started: records.RunStarted | None,
        result: str,
        at: str | None = None,
    ) -> records.Deployed:
        run = load_records(self.app).run(context["run_id"]) if result != "applying" else None
        decisions = run.decisions.get(shown.gate, []) if run else []
        return records.Deployed(
            run_id=context["run_id"],
            environment=env,
            commit=shown.commit,
            digest=shown.digest,
            manifests=shown.manifests[env],
            manifests_hash=shown.manifests_hash,
            result=result,
            at=at or records.now_iso(),
            run_after=started.run_after if started else shown.run_after,
            build_number=shown.build_number,
            # the first environment's deploy is no release (the spec the run started with says which is first)
            tag=shown.release_tag if started is None or started.app_spec().is_release_environment(env) else "",
            approvers=list(dict.fromkeys(d.user for d in decisions if d.decision == gate_rules.APPROVE)),
        )

    def _audit(
        self,
        base: dict[str, str],
        gate: str,
        outcome: str,
        code: int,
        why: str,
        shown: records.GateOpened | None = None,
    ) -> None:
        event = self._audit_event(base, gate, outcome, code, why, shown)
        try:
            records.record(self.app, records.Kind.AUDIT, event)
        except Exception as exc:  # the refusal stands even when it cannot be recorded
            self.log.error("Could not record the audit event (%s): %s", outcome, exc)

    @staticmethod
    def _audit_event(
        base: dict[str, str],
        gate: str,
        outcome: str,
        code: int,
        why: str,
        shown: records.GateOpened | None,
        at: str | None = None,
    ) -> records.AuditEvent:
        return records.AuditEvent(
            at=at or records.now_iso(),
            app=base["app"],
            run_id=base["run_id"],
            gate=gate,
            action=base["action"],
            outcome=outcome,
            status_code=code,
            why=why,
            user="conveyor",
            commit=shown.commit if shown else "",
            digest=shown.digest if shown else "",
            manifests=shown.manifests_hash if shown else "",
        )

    def _refuse(
        self, base: dict[str, str], gate: str, message: str, shown: records.GateOpened | None = None
    ) -> NoReturn:
        self.log.error("%s", message)
        self._audit(base, gate, "refused", 403, message, shown)
        raise fail(message + " Nothing was applied.")

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        self.step_pod_template()  # rendered already when the task runs; made here for a dry run
        # The stock operator adds its XCom sidecar whenever do_xcom_push: a step's script hands on its result in
        # its log instead (conveyor.pod_manager), so the pod is built as one without, and the task still returns
        # the result (extract_xcom).
        push, self.do_xcom_push = self.do_xcom_push, False
        try:
            pod = super().build_pod_request_obj(context, dry_run=dry_run)
        finally:
            self.do_xcom_push = push
        if context is not None:  # the Secrets of this step of this run, not the names the pod was built with
            bind_pod_secrets(pod, self._step_secrets(context["run_id"]))
        for volume in pod.spec.volumes or []:
            if volume.name == SCRIPTS_VOLUME and volume.config_map is not None:
                # the scripts this worker has and puts in place (get_or_create_pod), whichever version parsed
                volume.config_map.name = scripts_config_map_name()
        base = next((c for c in pod.spec.containers if c.name == self.base_container_name), None)
        if base is None:
            return pod
        env: dict[str, str] = {}
        if runs_a_step_script(base):
            # A token for this pod alone, which marks the script's last lines: its result and its end line
            # (conveyor.pod_manager.StepEnd). In an image an app spec chose (sonar's may be) it marks the result
            # only: such a step hands on its result as before, when the XCom sidecar read the file the same
            # container wrote, but only Conveyor's own code may end a step by its word.
            own = settings.load_step_images().is_own(str(base.image))
            if own or self.do_xcom_push:
                env[STEP_END_ENV if own else STEP_RESULT_ENV] = new_step_end_token()
        if self._base_commits:
            env[BASE_COMMITS_ENV] = " ".join(self._base_commits)
        if self._release_manifests is not None:
            # The approved bytes and their hash: the step script checks one against the other before applying.
            env[MANIFESTS_ENV] = env_literal(self._release_manifests)
            env[MANIFESTS_SHA_ENV] = hashlib.sha256(self._release_manifests.encode()).hexdigest()
        base.env = [e for e in base.env or [] if e.name not in {*env, STEP_END_ENV, STEP_RESULT_ENV}] + [
            k8s.V1EnvVar(name=name, value=value) for name, value in env.items()
        ]
        return pod

    def _record_deployed(self, context: Any, shown: records.GateOpened, result: str) -> None:
        """Keep how the deployment ended: the next gate diffs against it, and it is the environment's history."""
        env = str(self.environment)
        started = load_records(self.app).run(context["run_id"]).started
        try:
            records.record(self.app, records.Kind.DEPLOYED, self._deployment(context, shown, env, started, result))
        except Exception as exc:  # the pod has run; its "applying" record already stands for it
            self.log.error("Could not keep the deployment record (%s): %s", result, exc)

    # --- credentials: Secrets of this step of this run, only while its pod runs ------------

    def _step_secrets(self, run_id: str) -> list[SecretRef]:
        return [
            SecretRef.for_step(kind, conn_id, app=self.app, run_id=run_id, step=self.task_id)
            for kind, conn_id in self.secret_refs
        ]

    def _secrets_namespace(self) -> str:
        return str(self.namespace or self.hook.get_namespace() or "default")

    def get_or_create_pod(self, pod_request_obj: k8s.V1Pod, context: Any) -> k8s.V1Pod:
        """Right before the pod: the step scripts' ConfigMap it mounts, in its namespace (one per version of the
        scripts, made by the first step that needs it)."""
        name = ensure_step_scripts(self.client, pod_request_obj.metadata.namespace)
        self.log.info("Step scripts: ConfigMap %s in %s", name, pod_request_obj.metadata.namespace)
        pod = self._ended_pod_of_an_earlier_try(pod_request_obj, context)
        if pod is None:
            pod = super().get_or_create_pod(pod_request_obj, context)  # a running one of an earlier try, or a new one
        self.pod_manager.expect_step_end(pod, self.base_container_name)  # the pod made now, or the one found
        return pod

    def _ended_pod_of_an_earlier_try(self, pod_request_obj: k8s.V1Pod, context: Any) -> k8s.V1Pod | None:
        """The pod of an earlier try of this step in this run that succeeded while no task followed it (its task's
        process died): the stock operator deletes such a pod and starts the step over, which would run its tests,
        build or deploy twice. A pod that carries a step token (this Conveyor made it) has its result in its log,
        so the try goes on with it. A pod that failed is left to the stock way (deleted, the step run again), as
        is one without a token."""
        if not self.reattach_on_restart:
            return None
        found = self.find_pod(pod_request_obj.metadata.namespace, context=context)
        status = found.status if found is not None else None
        if found is None or status is None or status.phase != "Succeeded":
            return None
        if StepEnd.of(found, self.base_container_name) is None:
            return None
        self.log.info(
            "Going on with pod %s of an earlier try, which succeeded while no task followed it: its log has the "
            "step's result, so the step is not started over",
            found.metadata.name,
        )
        return found

    def _sync_secrets(self, run_id: str) -> list[str]:
        """Make the Secrets this step's pod mounts, right before it starts."""
        from airflow.sdk import BaseHook

        refs = self._step_secrets(run_id)
        if not refs:
            return []
        from conveyor.grants import connection_type_problem

        def checked(conn_id: str) -> Any:
            conn = BaseHook.get_connection(conn_id)
            for ref in refs:
                problem = ref.connection_id == conn_id and connection_type_problem(ref.kind, conn_id, conn.conn_type)
                if problem:
                    raise fail(problem)
            return conn

        namespace = self._secrets_namespace()
        names = sync_secrets(self.client, namespace, refs, checked)
        self.log.info("Credentials handed to the pod by reference: Secrets %s in %s", ", ".join(names), namespace)
        return names

    def on_kill(self) -> None:
        super().on_kill()
        if self._killed_run_id:
            self._remove_secrets([ref.name for ref in self._step_secrets(self._killed_run_id)])

    def _remove_secrets(self, names: list[str]) -> None:
        """Delete them once the pod is over: no credential outlives the step that needed it."""
        if not names:
            return
        try:
            remove_secrets(self.client, self._secrets_namespace(), names)
            self.log.info("Deleted the step's Secrets %s", ", ".join(names))
        except Exception as exc:  # the step's own outcome stands; say what is left behind
            self.log.error(
                "Could not delete the step's Secrets %s (%s): delete them with kubectl delete secret -n %s %s",
                ", ".join(names),
                exc,
                self._secrets_namespace(),
                " ".join(names),
            )

    # --- failures: the step's own, not tried again; the last lines of a failed pod, read before it is deleted -

    log_tail: tuple[str, ...] = ()  # of this try's pod, when it failed: conveyor.notifier quotes them
    own_failure: str | None = None  # of this try's pod: what of the step's own code failed (pod_manager.own_failure)

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: Any = None, context: Any = None) -> None:
        self.own_failure = own_failure(remote_pod)
        self.log_tail = self._failed_pod_log_tail(remote_pod)
        result_error, self._result_error = getattr(self, "_result_error", None), None
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except Exception as exc:
            if result_error is None:
                raise
            raise result_error from exc  # what went wrong, rather than that the pod "returned a failure"
        if result_error is not None:
            raise result_error

    def _fail_for_good_if_own(self, exc: Exception) -> None:
        """A step whose own code failed (its script, the app's build or tests) or that ran past its time limit
        fails for good: another try would do the same again. Everything else (a pod that could not start or was
        lost, the Kubernetes API, the task's own process) is tried again, as the spec's ``retries`` say, and a
        try again finds the pod of the one before when it still runs (reattach_on_restart)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

        if isinstance(exc, AirflowFailException):
            return
        if isinstance(exc, AirflowTaskTimeout):
            raise fail(
                f"{self.task_id} ran past its time limit ({self.execution_timeout}; limits in the app spec); its pod "
                "was deleted. Not tried again: raise the limit or make the step faster, then clear the task."
            ) from exc
        if self.own_failure:
            raise fail(
                f"{exc} — {self.own_failure}: the step's own code failed (its log above says why), so it is not "
                "tried again; fix the cause and clear the task, or trigger a new run."
            ) from exc

    def _failed_pod_log_tail(self, remote_pod: k8s.V1Pod | None) -> tuple[str, ...]:
        """The last lines of the container that failed (an init container, or the step's own), as the task log
        shows them; none when the pod succeeded or its log cannot be read (the notice then goes without)."""
        from airflow.providers.cncf.kubernetes.utils.container import container_is_succeeded

        from conveyor.pod_manager import is_step_line
        from conveyor.step_notices import TAIL_LINES

        if remote_pod is None or self._killed or container_is_succeeded(remote_pod, self.base_container_name):
            return ()
        statuses = (remote_pod.status.init_container_statuses if remote_pod.status else None) or []
        failed = [s.name for s in statuses if s.state and s.state.terminated and s.state.terminated.exit_code]
        container = failed[0] if failed else self.base_container_name
        try:
            text = self.client.read_namespaced_pod_log(
                name=remote_pod.metadata.name,
                namespace=remote_pod.metadata.namespace,
                container=container,
                tail_lines=TAIL_LINES,
                _request_timeout=10,
            )
        except Exception as exc:
            self.log.warning("Could not read the last lines of container %s for the failure notice: %s", container, exc)
            return ()
        # the step's result and end lines carry its token and are for the operator only, as in the task log
        lines = (line for line in str(text or "").splitlines() if not is_step_line(line))
        return tuple(f"[{container}] {line}" for line in lines)
