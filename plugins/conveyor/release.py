"""What one run releases: its rendered manifests per environment, the build a gate shows, and the
facts the gate's rules are assessed on. Shared by the approval sensor, the deploy steps, the
approval API and the decision page, so all of them see the same bytes and the same facts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from conveyor import settings
from conveyor.credentials import registry_host
from conveyor.exceptions import ConveyorError
from conveyor.gate import Assessment, GateFacts, assess, change_owners
from conveyor.pipeline import Pipeline, Step, build_pipeline
from conveyor.records import AppRecords, Built, CheckedOut, GateOpened, RunRecords, RunStarted
from conveyor.render import manifest_variables, render_folder
from conveyor.spec import AppSpec


def render_environment(spec: AppSpec, environment: str, checkout: CheckedOut, built: Built, registry: str) -> str:
    """The manifests of one environment, rendered with a run's checkout and build."""
    from conveyor.apps import image_policy
    from conveyor.teams import load_platform

    env = spec.environment(environment)
    variables = manifest_variables(
        spec,
        registry=registry,
        build_number=str(checkout.build_number),
        branch=checkout.branch,
        tag_name=checkout.release_tag if spec.is_release_environment(environment) else "",
        digest=built.digest,
    )
    policy = image_policy(spec, registry, built.digest, load_platform())
    return render_folder(settings.manifests_folder() / env.manifests, variables, policy)


def spec_registry(spec: AppSpec, get_connection: Callable[[str], Any]) -> str:
    return registry_host(get_connection(spec.registry.connection))


def manifests_hash(rendered: Mapping[str, str]) -> str:
    """``sha256:<hex>`` over the rendered manifests of the environments, by environment name."""
    payload = json.dumps(dict(sorted(rendered.items())), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseManifests:
    """The rendered manifests of some environments, or why they could not be rendered."""

    rendered: dict[str, str]
    error: str | None = None

    @property
    def hash(self) -> str | None:
        return manifests_hash(self.rendered) if self.error is None else None


def release_manifests(
    spec: AppSpec,
    environments: Iterable[str],
    checkout: CheckedOut,
    built: Built,
    get_connection: Callable[[str], Any],
) -> ReleaseManifests:
    try:
        registry = spec_registry(spec, get_connection)
        rendered = {env: render_environment(spec, env, checkout, built, registry) for env in environments}
    except ConveyorError as exc:
        return ReleaseManifests({}, str(exc))
    except Exception as exc:  # a missing registry connection surfaces as Airflow's own error type
        return ReleaseManifests({}, f"{type(exc).__name__}: {exc}")
    return ReleaseManifests(rendered)


def decision_link(app: str, run_id: str, gate: str) -> str:
    """The decision page of one gate, as people open it."""
    parts = "/".join(quote(part, safe=":") for part in (app, run_id, gate))
    return f"{settings.ui_base_url()}/conveyor/gates/{parts}"


# --- a run's release, from its records -------------------------------------------------


class NotStarted(ConveyorError):
    """A run has no start record: its checkout step never ran under Conveyor."""


@dataclass(frozen=True)
class RunRelease:
    """One run as its records tell it: the spec it started with and its pipeline."""

    records: AppRecords
    run: RunRecords
    started: RunStarted
    spec: AppSpec
    pipeline: Pipeline

    @classmethod
    def of(cls, records: AppRecords, run_id: str) -> RunRelease:
        run = records.run(run_id)
        if run.started is None:
            raise NotStarted(
                f"Run {run_id} of {records.app} has no start record: its checkout step never ran (or ran before "
                "Conveyor kept records). Start a new run."
            )
        spec = run.started.app_spec()
        return cls(records, run, run.started, spec, build_pipeline(spec))

    def gate(self, gate_id: str) -> Step:
        step = self.pipeline.step(gate_id)  # KeyError names the steps there are
        if not step.is_gate or step.policy is None:
            raise KeyError(f"'{gate_id}' is a step of {self.spec.name}, not an approval gate.")
        return step

    def covering_gate(self, environment: str) -> Step:
        """The gate whose decision releases to an environment (the last one before its deploy)."""
        gates = [g for g in self.pipeline.gates() if environment in g.releases_to]
        if not gates:
            raise ConveyorError(f"No gate of {self.spec.name} releases to {environment}.")
        return gates[-1]

    def checks(self) -> list[str]:
        """The test and quality steps of this run's pipeline, whose pods must have passed before a gate opens."""
        return [step for step in ("unit_test", "sonar") if step in self.pipeline.step_ids]

    def missing_checks(self) -> list[str]:
        """The checks with no recorded pass on this run's commit (e.g. a failed step marked success by hand)."""
        return [step for step in self.checks() if not self.run.has_passed(step)]

    def render(self, environments: Iterable[str], get_connection: Callable[[str], Any]) -> ReleaseManifests | None:
        """The manifests of these environments rendered now with this run's build (None before the build)."""
        checkout, built = self.run.checked_out, self.run.built
        if checkout is None or built is None:
            return None
        return release_manifests(self.spec, environments, checkout, built, get_connection)

    def shown_build(self, gate_id: str, manifests: ReleaseManifests) -> GateOpened | None:
        """The build a gate shows now, with the manifests it releases (None before the build)."""
        checkout, built = self.run.checked_out, self.run.built
        if checkout is None or built is None or manifests.hash is None:
            return None
        return GateOpened(
            run_id=self.run.run_id,
            gate=gate_id,
            commit=checkout.commit,
            digest=built.digest,
            manifests_hash=manifests.hash,
            manifests=dict(manifests.rendered),
            run_after=self.started.run_after,
            build_number=checkout.build_number,
            release_tag=checkout.release_tag,
            branch=checkout.branch,
            message=checkout.message,
            author=checkout.author,
            author_email=checkout.author_email,
            committer_email=checkout.committer_email,
            pusher=checkout.pusher,
            change_emails=list(checkout.change_emails),
            change_pushers=list(checkout.change_pushers),
            change_commits=checkout.change_commits,
            change_truncated=checkout.change_truncated,
        )

    def assess(self, gate_id: str, *, now: datetime | None = None, task_state: str | None = None) -> Assessment:
        """The gate's outcome now (conveyor.gate.assess on :meth:`facts`), without the task's state."""
        return assess(self.facts(gate_id, now=now or datetime.now(UTC), task_state=task_state))

    def facts(self, gate_id: str, *, now: datetime, task_state: str | None) -> GateFacts:
        """What the gate's rules need, from the records (and the gate task's state, when it matters)."""
        from conveyor import teams

        step = self.gate(gate_id)
        assert step.policy is not None  # gate() checked
        shown = self.run.gate_shown(gate_id)
        newest = self.records.newest_at_gate(gate_id)
        people = teams.load_platform().people
        owners = change_owners(
            triggered_by=self.started.triggered_by,
            pushers=[shown.pusher, *shown.change_pushers] if shown else [],
            emails=[shown.author_email, shown.committer_email, *shown.change_emails] if shown else [],
            people={user: p.emails for user, p in people.items()},
            git_users={p.git_user: user for user, p in people.items() if p.git_user},
        )
        return GateFacts(
            app=self.spec.name,
            run_id=self.run.run_id,
            gate=gate_id,
            policy=step.policy,
            build=shown.build if shown else None,
            decisions=tuple(self.run.decisions.get(gate_id, ())),
            owners=owners,
            now=now,
            opened_at=self.run.gate_opened_at(gate_id),
            newest_run=(newest.run_id, newest.run_after_at) if newest else None,
            run_after=self.started.run_after_at,
            task_state=task_state,
        )


@dataclass(frozen=True)
class Shown:
    """What a gate shows after :func:`show_build`: the build kept for approvers, or why there is none yet."""

    build: GateOpened | None
    new: bool = False
    waiting_for: str = ""  # the build is not recorded yet
    error: str = ""  # the manifests cannot be rendered: nothing to approve


def show_build(
    app: str, run_id: str, gate_id: str, get_connection: Callable[[str], Any], *, at: datetime | None = None
) -> Shown:
    """Render what a gate releases with the run's recorded build and keep it, once, as the build the
    gate shows (the approval sensor does this on each look; a changed build is kept anew)."""
    from conveyor import records

    run = RunRelease.of(records.load(app), run_id)
    step = run.gate(gate_id)
    manifests = run.render(step.releases_to, get_connection)
    if manifests is None:
        return Shown(None, waiting_for="this run's commit and image digest are not recorded yet (checkout, build)")
    missing = run.missing_checks()
    if missing:
        checkout = run.run.checked_out
        commit = checkout.commit[:12] if checkout else "?"
        return Shown(
            None,
            error=f"{', '.join(missing)} has no recorded pass on commit {commit} (its pod did not succeed here: a task "
            "state set by hand, or a run from before Conveyor kept results); start a new run",
        )
    if manifests.error:
        return Shown(
            None,
            error=f"the manifests this gate releases to {', '.join(step.releases_to)} cannot be rendered: "
            f"{manifests.error}",
        )
    candidate = run.shown_build(gate_id, manifests)
    assert candidate is not None  # rendered, so the checkout and the build are recorded
    shown, new = records.open_gate(app, candidate, at=at)
    return Shown(shown, new=new)
