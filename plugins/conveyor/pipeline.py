"""The pipeline model: an app's steps, their order and what each step needs.

Plain frozen dataclasses built by pure functions from an :class:`AppSpec`; nothing
here imports Airflow, so the whole model is testable without a database or cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum

from conveyor.spec import ApprovalPolicy, AppSpec, Environment


class StepKind(StrEnum):
    CHECKOUT = "checkout"
    UNIT_TEST = "unit_test"
    SONAR = "sonar"
    BUILD = "build"
    PUSH = "push"
    GATE = "gate"
    DEPLOY = "deploy"
    TAG = "tag"


@dataclass(frozen=True)
class StepType:
    """What one kind of step is, in one place (``STEP_TYPES``): the pod builders (``conveyor.steps``), the
    Secrets, the DAG's task options and the operator's records all read it here.

    :param credentials: the kinds of credential the step's pod needs (``git``, ``registry``, ``sonar``,
        ``kubeconfig``), each made from the app's connection of that kind (``kubeconfig``: the cluster of
        the environment it deploys to)
    :param containers: which container gets which of them ("base" is the main container); a container not
        listed gets none. The containers that run code from the app's repository (unit_test's base, build's
        package and build, sonar's base) get no git, registry or cluster credential, the scanner only its
        Sonar token; those are held only by containers that run Conveyor's own scripts.
    :param result: the pod reports a result (JSON; the task's XCom and, through the operator, the records)
    :param one_at_a_time: at most one of these tasks runs per app (checkout: unique build numbers; deploy:
        one environment's deploys never overlap)
    :param reports: the pod reports a test or quality report, which the operator keeps
    :param release_check: the operator checks, right before the pod, that this run's build was approved
    """

    credentials: tuple[str, ...] = ()
    containers: dict[str, frozenset[str]] = field(default_factory=dict)
    result: bool = False
    one_at_a_time: bool = False
    reports: bool = False
    release_check: bool = False


STEP_TYPES: dict[StepKind, StepType] = {
    StepKind.CHECKOUT: StepType(
        credentials=("git",), containers={"base": frozenset({"git"})}, result=True, one_at_a_time=True
    ),
    StepKind.UNIT_TEST: StepType(
        credentials=("git",), containers={"fetch": frozenset({"git"})}, result=True, reports=True
    ),
    StepKind.SONAR: StepType(
        credentials=("git", "sonar"),
        containers={"fetch": frozenset({"git"}), "base": frozenset({"sonar"})},
        result=True,
        reports=True,
    ),
    StepKind.BUILD: StepType(
        credentials=("git", "registry"),
        containers={"fetch": frozenset({"git"}), "prepare": frozenset({"registry"}), "base": frozenset({"registry"})},
        result=True,
    ),
    StepKind.PUSH: StepType(credentials=("registry",), containers={"base": frozenset({"registry"})}),
    StepKind.TAG: StepType(
        credentials=("git", "registry"), containers={"base": frozenset({"git", "registry"})}, release_check=True
    ),
    StepKind.DEPLOY: StepType(
        credentials=("kubeconfig",),
        containers={"base": frozenset({"kubeconfig"})},
        one_at_a_time=True,
        release_check=True,
    ),
    StepKind.GATE: StepType(),  # a sensor: no pod
}


@dataclass(frozen=True)
class Step:
    """One step of a pipeline; ``id`` is the Airflow task id and part of the contract."""

    id: str
    kind: StepKind
    doc: str
    environment: str | None = None  # deploy steps: the environment they deploy to
    releases_to: tuple[str, ...] = ()  # gates: the environments their decision releases to
    release_only: bool = False  # runs only for a release (tag_name set or automatic tags)
    policy: ApprovalPolicy | None = None  # gates only

    @property
    def is_gate(self) -> bool:
        return self.kind is StepKind.GATE

    @property
    def type(self) -> StepType:
        return STEP_TYPES[self.kind]


@dataclass(frozen=True)
class Pipeline:
    """An app's steps in the order they run (a straight chain)."""

    spec: AppSpec
    steps: tuple[Step, ...]

    @property
    def app(self) -> str:
        return self.spec.name

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"{self.app} has no step {step_id!r}; its steps are {', '.join(self.step_ids)}")

    def environment(self, name: str) -> Environment:
        return self.spec.environment(name)

    def gates(self) -> list[Step]:
        return [s for s in self.steps if s.is_gate]


def build_pipeline(spec: AppSpec) -> Pipeline:
    """The steps of an app, in order: checkout → unit_test → [sonar] → build → push, then for each environment
    its gate (if it has one) and its deploy, with tag right after the first environment's deploy:
    approve → deploy_dev → tag → [approve_staging] → deploy_staging → [approve_prod] → deploy_prod.
    Every run that passes ``approve`` deploys to the first environment; the later ones are released only."""
    steps: list[Step] = [
        Step(
            "checkout",
            StepKind.CHECKOUT,
            "Resolve the branch to one commit and check the repo has what the spec needs.",
        ),
        Step(
            "unit_test", StepKind.UNIT_TEST, "Run the app's tests in its builder image; a failing test stops the run."
        ),
    ]
    if spec.sonar.enabled:
        steps.append(Step("sonar", StepKind.SONAR, "SonarQube analysis; the quality gate must pass."))
    steps += [
        Step("build", StepKind.BUILD, "Build the image without a Docker daemon and push the SNAPSHOT tags."),
        Step("push", StepKind.PUSH, "Promote the same digest to 'latest' (no rebuild)."),
    ]
    first = spec.environments[0]
    # Each gate releases to its own environment and to the following ones that have no gate of their own.
    gated = [(n, env, policy) for n, env in enumerate(spec.environments) if (policy := spec.gate_policy(env))]
    for g, (n, env, policy) in enumerate(gated):
        end = gated[g + 1][0] if g + 1 < len(gated) else len(spec.environments)
        covered = spec.environments[n:end]
        gate = Step(
            gate_id(spec, env.name),
            StepKind.GATE,
            "Wait for an authorised human decision on this exact build."
            if n == 0
            else f"A decision of its own before {env.name}.",
            releases_to=tuple(e.name for e in covered),
            release_only=n > 0,
            policy=policy,
        )
        for m, target in enumerate(covered):
            if m == 0:
                steps.append(gate)
            release = spec.is_release_environment(target.name)
            steps.append(
                Step(
                    deploy_id(target.name),
                    StepKind.DEPLOY,
                    f"Apply the manifests to {target.name}"
                    + (" with the tagged image" if release else "")
                    + " and wait for the rollout.",
                    environment=target.name,
                    release_only=release,
                )
            )
            if target is first:
                steps.append(
                    Step("tag", StepKind.TAG, "Push the git tag and tag the same image digest.", release_only=True)
                )
    return Pipeline(spec=spec, steps=tuple(steps))


def gate_id(spec: AppSpec, environment: str) -> str:
    """The task id of the gate before an environment's deploy: ``approve`` for the first environment (the
    release's gate), ``approve_<name>`` for a later one."""
    return "approve" if environment == spec.environments[0].name else f"approve_{environment}"


def deploy_id(environment: str) -> str:
    return f"deploy_{environment}"


def is_gate_id(task_id: str) -> bool:
    """Whether a task id names a gate (``approve`` or ``approve_<environment>``) of some app."""
    return task_id == "approve" or task_id.startswith("approve_")


@dataclass(frozen=True)
class RunValues:
    """Values known only while a run executes, as the strings that stand for them in a pod spec.

    In Airflow they are Jinja expressions rendered by the worker just before the pod is
    created, from Conveyor's records of the run (never from XComs, which people can edit);
    ``conveyor show`` prints them as they are.
    """

    run_id: str
    run_label: str
    build_number: str
    requested_branch: str
    requested_commit: str  # the commit the run asks for ('' = the branch's newest)
    requested_tag: str  # the release tag the run asks for ('' = none)
    branch: str
    branch_tag: str
    commit: str
    commit_label: str
    release_tag: str
    digest: str
    registry: str
    registry_tls_verify: str

    @classmethod
    def airflow(cls, spec: AppSpec) -> RunValues:
        run = "conveyor_run(ti)"
        return cls(
            run_id="{{ run_id }}",
            run_label="{{ run_id | conveyor_label }}",
            build_number=f"{{{{ {run}.build_number }}}}",
            requested_branch="{{ params.branch }}",
            requested_commit="{{ params.commit or '' }}",
            requested_tag="{{ params.tag_name or '' }}",
            branch=f"{{{{ {run}.branch }}}}",
            branch_tag=f"{{{{ {run}.branch | conveyor_tag }}}}",
            commit=f"{{{{ {run}.commit }}}}",
            commit_label=f"{{{{ {run}.commit }}}}",
            release_tag=f"{{{{ {run}.release_tag }}}}",
            digest=f"{{{{ {run}.digest }}}}",
            registry="{{ conveyor_registry() }}",
            registry_tls_verify="{{ conveyor_registry_tls_verify() }}",
        )


@dataclass(frozen=True)
class SecretRef:
    """A Kubernetes Secret, in the CI namespace, made from an Airflow connection before a step runs.

    Only the Secret's name appears in a pod spec; its values never do. A pod spec is built
    before a run exists, so it names the Secret without a run (``SecretRef(kind, connection)``).
    While a step runs, its Secrets are the ones of that one step of that one run
    (:meth:`for_step`): they are made right before its pod and deleted right after it, and two
    runs of an app at the same time never share, replace or delete each other's Secret.
    """

    kind: str  # git | registry | kubeconfig | sonar
    connection_id: str
    app: str = ""  # with run_id and step: whose Secret it is (empty: the name a pod spec is built with)
    run_id: str = ""
    step: str = ""

    @classmethod
    def for_step(cls, kind: str, connection_id: str, *, app: str, run_id: str, step: str) -> SecretRef:
        """The Secret of one step of one run of an app (what the operator makes, mounts and deletes)."""
        return cls(kind, connection_id, app=app, run_id=run_id, step=step)

    @property
    def name(self) -> str:
        """``conveyor-<kind>-<connection>-<hash>``, and for a step's Secret ``-<hash of app, run and step>``
        after it (a shorter connection part): a DNS-1123 label either way."""
        owned = bool(self.app or self.run_id or self.step)
        slug = re.sub(r"[^a-z0-9-]+", "-", self.connection_id.lower()).strip("-")[: 20 if owned else 30] or "conn"
        digest = hashlib.sha256(self.connection_id.encode()).hexdigest()[:6]
        base = f"conveyor-{self.kind}-{slug}-{digest}"
        if not owned:
            return base
        owner = hashlib.sha256("\0".join((self.app, self.run_id, self.step)).encode()).hexdigest()[:12]
        return f"{base}-{owner}"

    @property
    def template_name(self) -> str:
        """The name the pod spec was built with (before the run): what :attr:`name` replaces in it."""
        return SecretRef(self.kind, self.connection_id).name


def step_secrets(pipeline: Pipeline, step: Step, run_id: str | None = None) -> tuple[SecretRef, ...]:
    """Which connections a step needs, turned into Secret references (pure).

    Without ``run_id``: the names a pod spec is built with. With it: the Secrets of this step of
    that run (:meth:`SecretRef.for_step`), which the operator makes before the pod and deletes after it.
    """
    spec = pipeline.spec

    def ref(kind: str, connection_id: str) -> SecretRef:
        if run_id is None:
            return SecretRef(kind, connection_id)
        return SecretRef.for_step(kind, connection_id, app=pipeline.app, run_id=run_id, step=step.id)

    connections = {"git": spec.git.connection, "registry": spec.registry.connection, "sonar": spec.sonar.connection}
    if step.environment is not None:
        connections["kubeconfig"] = pipeline.environment(step.environment).cluster
    return tuple(ref(kind, connections[kind]) for kind in step.type.credentials)
