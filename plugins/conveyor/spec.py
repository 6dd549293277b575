"""The app spec: one YAML file per application, validated into an :class:`AppSpec`.

Every problem of a file is reported at once, each with the file, the field path and
how to fix it. Nothing in a spec can run code: YAML is read with ``safe_load``, and
every value that reaches a pod is validated or passed as an argument list.
"""

from __future__ import annotations

import re
import shlex
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from conveyor.exceptions import SpecError, SpecProblem
from conveyor.reports import DEFAULT_PATTERNS as DEFAULT_REPORT_PATTERNS

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
RELEASE_TAG = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z]+(\.[0-9A-Za-z]+)*)?$")
# repository[:tag][@digest] with an optional registry host; no whitespace, no shell characters.
IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # a name from images/images.yaml
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
GIT_URL = re.compile(r"^(https?|ssh|git)://[^\s'\"`$\\]+$|^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:[^\s'\"`$\\]+$")
USERNAME = re.compile(r"^[^\s,]{1,256}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

APP_NAME_MAX = 40  # leaves room in pod names (<app>-<step>-<suffix>) and label values


def git_ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not a valid git branch name (``git check-ref-format --branch``), or None."""
    if not ref:
        return "is empty"
    if ref.startswith("-") or ref.startswith("/") or ref.endswith("/") or ref.endswith("."):
        return "must not start with '-' or '/' or end with '/' or '.'"
    if ref == "@" or "@{" in ref or ".." in ref or "//" in ref:
        return "must not be '@' or contain '@{', '..' or '//'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\" for c in ref):
        return "must not contain spaces, control characters or any of ~^:?*[\\"
    if any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        return "no part may start with '.' or end with '.lock'"
    if len(ref) > 200:
        return "is longer than 200 characters"
    return None


def validate_git_ref(ref: str) -> str:
    problem = git_ref_problem(ref)
    if problem:
        raise ValueError(
            f"{ref!r} is not a valid git branch name: it {problem}. Use a name like 'main' or 'feature/login'."
        )
    return ref


def validate_release_tag(tag: str) -> str:
    if not RELEASE_TAG.match(tag):
        raise ValueError(f"{tag!r} is not a release tag; use the form v1.2.3 or v1.2.3-rc.1.")
    return tag


def parse_duration(value: str | int) -> int:
    """Seconds in a duration like ``90``, ``45m``, ``24h`` or ``1d12h``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a duration; write whole seconds (90) or a duration like 30m, 24h or 1d12h.")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} is not a positive number of seconds.")
        return value
    match = DURATION.match(value.strip())
    if not value.strip() or not match:
        raise ValueError(f"{value!r} is not a duration; write it like 30m, 24h, 2d or 1d12h.")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"{value!r} is zero; give a positive duration such as 24h.")
    return total


def _split_command(value: Any) -> Any:
    """A command may be written as a list of arguments or as one string split like a shell would
    split words (no shell runs it: pipes and variables are not interpreted)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into arguments ({exc}); write it as a list") from None
    return value


def _connection_id(value: str) -> str:
    if not CONNECTION_ID.match(value):
        raise ValueError(f"{value!r} is not an Airflow connection id; use letters, digits, '_', '.' and '-' only.")
    return value


def _dns_label(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name (DNS-1123 label): use at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit."
        )
    return value


def _image(value: str) -> str:
    if not (IMAGE_NAME.match(value) or IMAGE_REF.match(value)):
        raise ValueError(
            f"{value!r} is not an image reference; use a name from images/images.yaml (e.g. 'python') or "
            "a full reference like 'registry.example.com/team/builder:1.0'."
        )
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value or value.startswith("-"):
        raise ValueError(f"{value!r} must be a relative path inside the repository, without '..'.")
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"{value!r} contains control characters.")
    return value


ConnectionId = Annotated[str, AfterValidator(_connection_id)]
DnsLabel = Annotated[str, AfterValidator(_dns_label)]
ImageName = Annotated[str, AfterValidator(_image)]
RelativePath = Annotated[str, AfterValidator(_relative_path)]
GitRef = Annotated[str, AfterValidator(validate_git_ref)]
Duration = Annotated[int, BeforeValidator(parse_duration)]
Command = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_split_command), Field(min_length=1)]


class _At(ValueError):
    """A problem a model validator finds in one field: ``loc`` is where, for the problem's location."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# The pod steps: a spec may give each a timeout of its own, and a push rule may stop after one (``until``);
# the gates have their approval timeout and are no place to stop at.
# Which ids exist depends on the app (sonar, its environments' deploy_<name>): AppSpec checks them.
StepId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")]
REF_PATTERN = re.compile(r"^[A-Za-z0-9._/*?-]{1,200}$")


def _ref_patterns(value: list[str]) -> list[str]:
    for pattern in value:
        if not REF_PATTERN.match(pattern) or pattern.startswith(("-", "/", "refs/")):
            raise ValueError(
                f"{pattern!r} is not a branch or tag pattern; write a name like 'main', or a glob like "
                "'feature/*', 'release-*' or '*' (letters, digits and . _ / - * ? only, no 'refs/' prefix)"
            )
    return value


RefPatterns = Annotated[list[str], AfterValidator(_ref_patterns)]


class PushRule(_Model):
    """Which pushes start a run, and how far that run goes. Patterns are globs matched against the whole
    branch or tag name (``*`` also matches ``/``); the first rule that matches a push decides."""

    branches: RefPatterns = Field(default_factory=list, description="branch patterns, e.g. [main, 'feature/*']")
    tags: RefPatterns = Field(
        default_factory=list,
        description="tag patterns, e.g. ['v*']; a matching tag releases (tag_name), so it must look like v1.2.3",
    )
    until: StepId | None = Field(
        default=None, description="the last step a run of this rule runs; none = the whole pipeline"
    )

    @model_validator(mode="after")
    def _matches_something(self) -> PushRule:
        if not self.branches and not self.tags:
            raise ValueError("a push rule needs 'branches' or 'tags' (patterns such as main, 'feature/*', 'v*')")
        return self

    def matches(self, branch: str | None, tag: str | None) -> bool:
        from fnmatch import fnmatchcase

        if branch is not None:
            return any(fnmatchcase(branch, p) for p in self.branches)
        return tag is not None and any(fnmatchcase(tag, p) for p in self.tags)


class GitSource(_Model):
    """Where the application's code lives."""

    url: str = Field(description="HTTP(S) or SSH URL of the repository")
    branch: GitRef = Field(default="main", description="branch built when a run names none")
    connection: ConnectionId = Field(default="git_default", description="Airflow connection with the git credentials")
    push: list[PushRule] | None = Field(
        default=None,
        description="which pushes start a run (the push webhook); none = a push to 'branch' runs the whole "
        "pipeline; [] = pushes start nothing",
    )

    def push_rules(self) -> list[PushRule]:
        """The rules in force: the spec's, or a push to ``branch`` running the whole pipeline."""
        return list(self.push) if self.push is not None else [PushRule(branches=[self.branch])]

    def push_rule(self, branch: str | None, tag: str | None) -> PushRule | None:
        """The rule a push of ``branch`` (or ``tag``) falls under: the first that matches."""
        return next((r for r in self.push_rules() if r.matches(branch, tag)), None)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not GIT_URL.match(v):
            raise ValueError(
                f"{v!r} is not a git URL; use https://host/group/repo.git, http://host/repo.git or "
                "ssh://git@host/repo.git (no spaces or quotes)."
            )
        return v


class Resources(_Model):
    """Container resources of the steps that run the app's own tools."""

    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, str]) -> dict[str, str]:
        for key, quantity in v.items():
            if not QUANTITY.match(str(quantity)):
                raise ValueError(
                    f"{key}: {quantity!r} is not a Kubernetes quantity; write e.g. 500m or 1 (cpu), 512Mi (memory)."
                )
        return v


def _report_patterns(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _report_pattern(value: str) -> str:
    from conveyor.reports import pattern_problem

    problem = pattern_problem(value)
    if problem is None and not re.match(r"^[A-Za-z0-9._/*?\[\]-]+$", value):
        problem = f"{value!r} may only contain letters, digits and . _ / - * ? [ ]"
    if problem:
        raise ValueError(problem)
    return value


ReportPatterns = Annotated[list[Annotated[str, AfterValidator(_report_pattern)]], BeforeValidator(_report_patterns)]


class TestStep(_Model):
    """How the app's unit tests run."""

    __test__ = False  # not a pytest test class

    command: Command = Field(description="the test command, as a list of arguments")
    env: dict[str, str] = Field(default_factory=dict)
    report: ReportPatterns = Field(
        default_factory=lambda: list(DEFAULT_REPORT_PATTERNS),
        description="where the command writes its JUnit XML reports (globs relative to the repository); "
        "shown on the run and decision pages",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name; use letters, digits and '_'.")
        return v


class PackageStep(_Model):
    """An optional compile/package command run before the image build (e.g. ``mvn package``)."""

    command: Command


class ImageStrategy(StrEnum):
    DOCKERFILE = "dockerfile"
    SOURCE = "source"  # Source-to-Image: a language builder writes the Dockerfile
    BINARY = "binary"  # Binary-to-Image: an artifact (e.g. a JAR) on a runtime image


class Language(StrEnum):
    PYTHON = "python"
    JAVA = "java"


class ImageBuild(_Model):
    """How the app's image is built (daemonless, in a pod)."""

    strategy: ImageStrategy = ImageStrategy.DOCKERFILE
    dockerfile: RelativePath = "Dockerfile"
    context: RelativePath = "."
    language: Language | None = Field(default=None, description="for strategy 'source'")
    artifact: str | None = Field(default=None, description="for strategy 'binary', e.g. target/app.jar")
    port: int = Field(default=8080, ge=1, le=65535, description="port the app listens on (source/binary)")
    command: Command | None = Field(default=None, description="the image's start command (source/binary)")

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _relative_path(v)
        if not re.match(r"^[A-Za-z0-9_./*-]+$", v):
            raise ValueError(f"{v!r} may only contain letters, digits and _ . / * -")
        return v

    @model_validator(mode="after")
    def _strategy_fields(self) -> ImageBuild:
        if self.strategy is ImageStrategy.SOURCE and self.language is None:
            raise ValueError("strategy 'source' needs 'language' (python or java) to pick the builder")
        if self.strategy is ImageStrategy.BINARY and not self.artifact:
            raise ValueError("strategy 'binary' needs 'artifact', the path of the built file, e.g. target/app.jar")
        return self


class Sonar(_Model):
    """SonarQube analysis and quality gate."""

    enabled: bool = False
    connection: ConnectionId = "sonar_default"
    project_key: str | None = None
    image: ImageName = "sonar-scanner"

    @field_validator("project_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.:-]{1,400}$", v):
            raise ValueError(f"{v!r} is not a SonarQube project key; use letters, digits and _ . : -")
        return v

    @model_validator(mode="after")
    def _needs_key(self) -> Sonar:
        if self.enabled and not self.project_key:
            raise ValueError("sonar is enabled but 'project_key' is missing; add the SonarQube project key")
        return self


class Registry(_Model):
    """The image registry (Harbor or any OCI registry)."""

    connection: ConnectionId = Field(default="registry", description="Airflow connection: host, login, password")
    project: str = Field(description="the registry project, known to manifests as $HARBOR_NAMESPACE")

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$", v):
            raise ValueError(f"{v!r} is not a registry project name; use lowercase letters, digits and . _ -")
        return v


class Notifications(_Model):
    """Where the app's notices go (approval gates, and steps that fail or recover): e-mail addresses (sent
    through the SMTP connection of ``[conveyor] smtp_connection_id``) and chat webhooks (Airflow connections of
    type ``apprise``)."""

    email: list[str] = Field(default_factory=list, description="addresses sent e-mail through the SMTP connection")
    webhooks: list[ConnectionId] = Field(
        default_factory=list, description="Airflow connection ids (type apprise) of chat webhooks"
    )

    @field_validator("email")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for address in v:
            if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return v

    @property
    def empty(self) -> bool:
        return not self.email and not self.webhooks


class ApprovalPolicy(_Model):
    """Who may release, and how many of them must agree."""

    users: list[str] = Field(default_factory=list, description="user names allowed to decide")
    roles: list[str] = Field(default_factory=list, description="roles whose members may decide")
    required: int = Field(default=1, ge=1, le=20, description="distinct approvals needed (N of M)")
    allow_self_approval: bool = Field(default=False, description="may the person who triggered the run approve")
    timeout: Duration = Field(default=86400, description="after this the gate counts as rejected, e.g. 24h")
    notify: Notifications | None = Field(
        default=None, description="who hears that this gate waits; none = the app's notifications"
    )

    @field_validator("users", "roles")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not USERNAME.match(name):
                raise ValueError(f"{name!r} is not a user or role name (no spaces or commas)")
        return v

    @model_validator(mode="after")
    def _reachable(self) -> ApprovalPolicy:
        if not self.users and not self.roles:
            raise ValueError("nobody could approve: list at least one user in 'users' or one role in 'roles'")
        if not self.roles and self.required > len(set(self.users)):
            raise ValueError(
                f"'required' is {self.required} but only {len(set(self.users))} user(s) are listed; "
                "lower 'required' or add approvers"
            )
        return self


ENV_NAME_MAX = 20  # leaves room in task ids (approve_<env>, deploy_<env>) and pod names
ENVIRONMENTS_MAX = 8
LEGACY_ENVIRONMENTS = ("dev", "prod")  # the mapping form: dev, then prod (written in any order)


class Environment(_Model):
    """One environment the app is deployed to, in the order of ``environments``: its cluster, namespace and
    manifests, and the approval gate before its deploy."""

    name: DnsLabel = Field(description="the environment's name, e.g. dev, staging, prod: its step is deploy_<name>")
    cluster: ConnectionId = Field(description="Airflow connection (type kubernetes) of the target cluster")
    namespace: DnsLabel
    manifests: RelativePath = Field(description="folder under include/manifests/ with this environment's manifests")
    rollout_timeout: Duration = Field(default=300, description="how long a rollout may take, e.g. 5m")
    gate: bool = Field(
        default=True,
        description="an approval gate of its own before this deploy (approve_<name>; the first environment's is "
        "approve and is always there); false: the gate before the previous environment releases this one too",
    )
    approval: ApprovalPolicy | None = Field(
        default=None, description="who may approve this environment's gate; none = approvals.approve"
    )

    @field_validator("name")
    @classmethod
    def _short(cls, v: str) -> str:
        if len(v) > ENV_NAME_MAX:
            raise ValueError(f"{v!r} is longer than {ENV_NAME_MAX} characters; choose a shorter environment name")
        return v

    @field_validator("manifests", mode="after")
    @classmethod
    def _manifests_exist(cls, v: str, info: ValidationInfo) -> str:
        root = (info.context or {}).get("manifests_root")
        if root is not None:
            folder = Path(root) / v
            if not folder.is_dir():
                raise ValueError(f"the manifest folder {folder} does not exist; create it or fix the path")
            if not any(folder.glob("*.y*ml")):
                raise ValueError(f"the manifest folder {folder} has no .yaml files")
        return v


def _environment_list(value: Any) -> Any:
    """The two-environment mapping ``{dev: ..., prod: ...}`` as the list it stands for: dev, then prod, whose
    only gate is ``approvals.approve_prod`` when that is set (as before environments were a list)."""
    if not isinstance(value, dict):
        return value
    extra = [k for k in value if k not in LEGACY_ENVIRONMENTS]
    if extra:
        raise _At(
            (extra[0],),
            "as a mapping, environments has dev and prod only; to deploy to more environments, write them as an "
            "ordered list: '- name: dev', '- name: staging', '- name: prod', each with its cluster, namespace and "
            "manifests",
        )
    missing = [k for k in LEGACY_ENVIRONMENTS if k not in value]
    if missing:
        raise _At((missing[0],), "this field is required; add it (or write environments as a list)")
    listed = []
    for name in LEGACY_ENVIRONMENTS:
        body = value[name]
        if isinstance(body, dict):
            if "name" in body:
                raise _At((name, "name"), "the key names the environment in this form; remove 'name'")
            body = {"name": name, **({"gate": "approval" in body} if name == "prod" else {}), **body}
        listed.append(body)
    return listed


# The ordered list of environments; also written as the two-environment mapping {dev: ..., prod: ...}.
Environments = Annotated[
    list[Environment], BeforeValidator(_environment_list), Field(min_length=1, max_length=ENVIRONMENTS_MAX)
]


class Approvals(_Model):
    approve: ApprovalPolicy = Field(
        description="the gate before the first environment's deploy, guarding the release; also the policy of "
        "every other environment's gate that sets no approval of its own"
    )
    approve_prod: ApprovalPolicy | None = Field(
        default=None, description="a gate of its own before deploy_prod (the same as prod's approval)"
    )


class Release(_Model):
    """When ``tag`` and the deploys after the first environment's run."""

    auto_tag: bool = Field(default=False, description="release every run without waiting for a tag_name")
    auto_tag_prefix: str = Field(default="v1.0", description="automatic tags are <prefix>.<build number>")

    @field_validator("auto_tag_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.match(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)$", v):
            raise ValueError(f"{v!r} is not a tag prefix; use the form v1.4 (tags become v1.4.<build number>)")
        return v


class Limits(_Model):
    """How long each pipeline step may run and how many runs of the app may be in flight at once."""

    max_active_runs: int = Field(default=8, ge=1, le=32, description="runs of this app at the same time")
    step_timeout: Duration = Field(default=3600, description="how long a pod step may run, e.g. 45m (default 1h)")
    timeouts: dict[StepId, Duration] = Field(
        default_factory=dict, description="step id -> its own timeout, e.g. {build: 90m, unit_test: 20m}"
    )

    def timeout_of(self, step_id: str) -> int:
        """Seconds the step may run."""
        return self.timeouts.get(step_id, self.step_timeout)


class Retention(_Model):
    """How long the app's SNAPSHOT images stay in the registry (``conveyor prune``); unset fields take the
    platform's ``[conveyor] snapshot_keep`` / ``snapshot_days``. A deployed or tagged image always stays."""

    keep: int | None = Field(default=None, ge=1, le=1000, description="the newest SNAPSHOT builds kept per branch")
    days: int | None = Field(default=None, ge=0, le=3650, description="every build younger than this many days stays")


class AppSpec(_Model):
    """One application: where its code is, how it is built, tested, approved and deployed."""

    name: str = Field(description="the app's name: DAG id, image name and $APP_NAME")
    team: DnsLabel = Field(description="the team that owns the app")
    description: str = ""
    owner: str | None = Field(default=None, description="shown as the DAG owner; defaults to the team")
    schedule: str | None = Field(default=None, description="cron expression or preset; none = triggered only")
    git: GitSource
    builder: ImageName = Field(description="image the tests and package command run in (name or reference)")
    test: TestStep
    package: PackageStep | None = None
    image: ImageBuild = Field(default_factory=ImageBuild)
    sonar: Sonar = Field(default_factory=Sonar)
    registry: Registry
    environments: Environments = Field(
        description="where the app is deployed, in order (e.g. dev, staging, prod), each with its own gate and "
        "cluster: every run that passes the first gate deploys to the first environment; the others are released "
        "(a tag) only. The mapping {dev: ..., prod: ...} is dev, then prod.",
    )
    approvals: Approvals
    release: Release = Field(default_factory=Release)
    notifications: Notifications = Field(default_factory=Notifications)
    resources: Resources = Field(default_factory=Resources)
    retries: int = Field(
        default=2,
        ge=0,
        le=5,
        description="how often a pod step is tried again when the platform failed it (its pod could not start or "
        "was lost, its task's process or worker died: a try again finds the pod still running and goes on with "
        "it); a step whose own code failed (its script, the app's build or tests, a quality gate) or that ran past "
        "its time limit fails at once",
    )
    limits: Limits = Field(default_factory=Limits)
    retention: Retention = Field(default_factory=Retention)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        _dns_label(v)
        if len(v) > APP_NAME_MAX:
            raise ValueError(f"{v!r} is longer than {APP_NAME_MAX} characters; choose a shorter app name")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is None or v.startswith("@"):
            if v is not None and v not in {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly"}:
                raise ValueError(f"{v!r} is not a schedule preset; use @hourly, @daily, @weekly, or a cron line")
            return v
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression; write five fields like '0 3 * * 1-5'")
        return v

    @field_validator("environments")
    @classmethod
    def _environments_in_order(cls, v: list[Environment]) -> list[Environment]:
        seen: set[str] = set()
        for env in v:
            if env.name in seen:
                raise ValueError(f"the environment {env.name!r} is listed twice; give each environment its own name")
            seen.add(env.name)
        for env in v:
            if env.approval is not None and not env.gate:
                raise ValueError(f"the environment {env.name!r} has an approval but 'gate: false': remove one of them")
        if not v[0].gate:
            raise ValueError(
                f"the first environment ({v[0].name}) always has its gate (approve): it guards every release; "
                "remove 'gate: false'"
            )
        return v

    @model_validator(mode="after")
    def _one_policy_per_gate(self) -> AppSpec:
        prod = self.environment("prod") if "prod" in self.environment_names else None
        if self.approvals.approve_prod is not None and prod is None:
            raise _At(
                ("approvals", "approve_prod"),
                "is the gate before prod, but no environment is named prod; set 'approval' on the environment "
                "it should guard",
            )
        if self.approvals.approve_prod is not None and prod is not None and prod.approval is not None:
            raise _At(
                ("approvals", "approve_prod"),
                "prod has two approval policies: approvals.approve_prod and the prod environment's approval; keep one",
            )
        return self

    @model_validator(mode="after")
    def _deploys_outlast_their_rollouts(self) -> AppSpec:
        for env in self.environments:
            step = f"deploy_{env.name}"
            # applying and checking take a little besides waiting for the rollout
            if self.limits.timeout_of(step) < env.rollout_timeout + 60:
                raise _At(
                    ("limits",),
                    f"{step} may run {self.limits.timeout_of(step)}s, but its rollout may take "
                    f"{env.rollout_timeout}s ({env.name}'s rollout_timeout): give {step} at least a minute more "
                    "than that",
                )
        return self

    @model_validator(mode="after")
    def _steps_named_exist(self) -> AppSpec:
        """``git.push[].until`` and ``limits.timeouts`` name pod steps of this app's pipeline."""
        from conveyor.pipeline import build_pipeline

        steps = [s.id for s in build_pipeline(self).steps if not s.is_gate]
        for n, rule in enumerate(self.git.push or []):
            if rule.until is not None and rule.until not in steps:
                why = ", as this app runs no sonar step (sonar.enabled is false)" if rule.until == "sonar" else ""
                raise _At(
                    ("git", "push", n, "until"),
                    f"{rule.until!r} is not a step of this app{why}; stop at one of {', '.join(steps)}",
                )
        for step in self.limits.timeouts:
            if step not in steps:
                raise _At(
                    ("limits", "timeouts"),
                    f"'{step}' is not a step with a timeout of its own; use one of {', '.join(steps)} "
                    "(a gate's timeout is in approvals)",
                )
        return self

    @property
    def environment_names(self) -> list[str]:
        return [env.name for env in self.environments]

    def environment(self, name: str) -> Environment:
        """The environment called ``name``; KeyError naming the app's environments when there is none."""
        for env in self.environments:
            if env.name == name:
                return env
        names = ", ".join(self.environment_names)
        raise KeyError(f"{self.name} has no environment {name!r}; its environments are {names}")

    def is_release_environment(self, name: str) -> bool:
        """Whether deploys to the environment happen for releases only (a tag): every one after the first."""
        return name != self.environments[0].name

    def gate_policy(self, env: Environment) -> ApprovalPolicy | None:
        """The policy of the gate before ``env``'s deploy; None when the previous gate releases it too."""
        legacy = self.approvals.approve_prod if env.name == "prod" else None
        if env is self.environments[0] or env.gate or legacy is not None:
            return env.approval or legacy or self.approvals.approve
        return None

    @property
    def sonar_enabled(self) -> bool:
        return self.sonar.enabled


# --- loading ---------------------------------------------------------------------------

_FIX_BY_TYPE = {
    "missing": "this field is required; add it",
    "extra_forbidden": "is not a known field; remove it or check its spelling",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts)


def _problem_message(error: Any, model_fields: list[str] | None = None) -> str:
    kind = error["type"]
    if kind in _FIX_BY_TYPE:
        message = _FIX_BY_TYPE[kind]
        if kind == "extra_forbidden" and model_fields:
            message += f" (known fields here: {', '.join(model_fields)})"
        return message
    message = str(error["msg"])
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind == "too_short":
        return "must not be empty; give at least one item"
    message = message.replace("Input should be", "must be")
    value = error.get("input")
    if isinstance(value, str | int | float | bool) or value is None:
        message += f" (got {value!r})"
    return message


def _located(error: Any) -> tuple[int | str, ...]:
    """Where a problem is: pydantic's location, and below it the field a model validator named (:class:`_At`)."""
    raised = (error.get("ctx") or {}).get("error")
    return (*error["loc"], *raised.loc) if isinstance(raised, _At) else tuple(error["loc"])


def _as_written(loc: tuple[int | str, ...], data: dict[str, Any]) -> tuple[int | str, ...]:
    """A problem's place as the file writes it: ``environments.prod.cluster`` in the dev/prod mapping form,
    where the model sees the list it stands for (``environments[1].cluster``)."""
    if (
        len(loc) > 1
        and loc[0] == "environments"
        and isinstance(loc[1], int)
        and isinstance(data.get("environments"), dict)
    ):
        return ("environments", LEGACY_ENVIRONMENTS[loc[1]], *loc[2:])
    return loc


def _known_fields(loc: tuple[int | str, ...]) -> list[str] | None:
    """The field names allowed next to an unknown field, to help a typo get fixed."""
    model: Any = AppSpec
    for item in loc[:-1]:
        if isinstance(item, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(item)
        if field is None:
            return None
        candidates, i = [field.annotation], 0
        while i < len(candidates):  # the type itself, and inside Optional[...] and list[...]
            candidates += getattr(candidates[i], "__args__", ())
            i += 1
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(model.model_fields) if model is not None else None


def parse_spec(data: Any, file: str, manifests_root: Path | None = None) -> AppSpec:
    """Validate the parsed YAML of one spec file; raise SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(file, [SpecProblem(file, "", "the file must be a YAML mapping with the app's fields")])
    try:
        spec = AppSpec.model_validate(data, context={"manifests_root": manifests_root})
    except ValidationError as exc:
        problems = [
            SpecProblem(
                file,
                _field_path(_as_written(_located(err), data)) or "(top level)",
                _problem_message(err, _known_fields(tuple(err["loc"])) if err["type"] == "extra_forbidden" else None),
            )
            for err in exc.errors()
        ]
        raise SpecError(file, problems) from None
    stem = Path(file).stem
    if spec.name != stem:
        raise SpecError(
            file,
            [SpecProblem(file, "name", f"{spec.name!r} does not match the file name {stem!r}; rename one of them")],
        )
    return spec


# libyaml's safe loader where PyYAML has it (its wheels do): the same safe loading, about ten times faster, which
# every DAG parse needs for every app's spec and manifests. Its marks count characters as the pure-Python
# parser's do (the image pinning in conveyor.render cuts the text at them: tests/unit/test_grants.py checks
# non-ASCII text and CRLF line ends).
FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_spec(path: Path, manifests_root: Path | None = None) -> AppSpec:
    """Read and validate one app spec file."""
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(file, [SpecProblem(file, "", f"cannot read the file: {exc.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=FAST_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            file, [SpecProblem(file, where, f"YAML syntax error: {reason}; fix the indentation or quoting")]
        ) from None
    return parse_spec(data, file, manifests_root)


def spec_files(folder: Path) -> list[Path]:
    """The spec files of a folder, sorted: ``*.yaml`` and ``*.yml``, hidden files skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"} and not p.name.startswith("."))


def load_specs(folder: Path, manifests_root: Path | None = None) -> tuple[list[AppSpec], list[SpecError]]:
    """Every valid spec of a folder, and the errors of the invalid ones (one bad file spoils nothing else)."""
    specs: list[AppSpec] = []
    errors: list[SpecError] = []
    for path in spec_files(folder):
        try:
            specs.append(load_spec(path, manifests_root))
        except SpecError as exc:
            errors.append(exc)
    return specs, errors
