"""The platform file (``[conveyor] platform_file``): the teams, who is in them, and what they may use.

It belongs to the platform team, not to the app specs. For each team it names the members and their
role (developer, approver, viewer), the CI namespace its pipelines run in, and the connections its
apps may use (git, registry, each environment's cluster, SonarQube, chat webhooks) with who may
approve releases; besides the teams, the platform admins, the images manifests may name by tag and
each person's git identities. Airflow's multi-team mode is configured from it: one Dag bundle per
team, team-scoped connections, the users of the Simple auth manager with their teams
(:func:`simple_auth_users`, :func:`bundle_configs`, :func:`connection_teams`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conveyor import settings
from conveyor.exceptions import ConfigurationError
from conveyor.spec import DNS1123_LABEL, ENV_NAME_MAX

# The environment whose clusters are production: no other environment of any app may deploy to them.
PRODUCTION = "prod"

# Airflow's team names are 3-50 letters, digits, '-' and '_'; a team name is also part of environment
# variable names (AIRFLOW_CONN__<TEAM>___<ID>), where '-' cannot appear, and of Kubernetes names,
# where '_' cannot: so lowercase letters and digits only.
TEAM_NAME = re.compile(r"^[a-z][a-z0-9]{2,29}$")
# The platform's own Airflow team: it owns the connections only the platform reads (PLATFORM_CONNECTIONS, such as
# the push webhook's secret), so no team's tasks can read them; no app, member or bundle is ever its.
PLATFORM_TEAM = "platform"
PLATFORM_CONNECTIONS = ("conveyor_webhook",)


def platform_connections() -> set[str]:
    """The connections only the platform reads: the defaults and the configured webhook connection."""
    return {*PLATFORM_CONNECTIONS, settings.webhook_connection_id()}


# The Simple auth manager's user list is "name:role:team1|team2,...": none of ":,|" in a name.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Airflow connection ids as the platform file may name them (they also name files of the local platform).
CONNECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class TeamRole(StrEnum):
    """What a member may do in their team's pipelines."""

    DEVELOPER = "developer"
    APPROVER = "approver"
    VIEWER = "viewer"


# The Airflow role each team role maps to (Simple auth manager; a Keycloak realm gives the same).
# Developers and approvers trigger, clear and mark their team's runs; who approves a release is the
# gate's policy, which may name the team role "approver". Nobody in a team edits connections,
# variables or pools: those are the platform's (Airflow's Op role), and never a record of Conveyor's.
AIRFLOW_ROLE: dict[TeamRole, str] = {
    TeamRole.DEVELOPER: "user",
    TeamRole.APPROVER: "user",
    TeamRole.VIEWER: "viewer",
}
ADMIN_ROLE = "admin"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Person(_Model):
    """One Airflow user's verified git identities."""

    emails: list[str] = Field(default_factory=list, description="git author/committer e-mails that are this user's")
    git_user: str | None = Field(default=None, description="their user on the Git server, if it differs")


class GitGrant(_Model):
    connection: str
    url_prefix: str = Field(
        description="repositories these credentials may be sent to, e.g. https://git.example.com/team/"
    )
    records_pusher: bool = Field(
        default=False,
        description="the Git server records who pushed each commit where no client can write it (Conveyor's own "
        "Git server does); only then does the self-approval rule trust the pusher",
    )


def _dns_labels(values: list[str], what: str) -> list[str]:
    for value in values:
        if not DNS1123_LABEL.match(value) or len(value) > 63:
            raise ValueError(f"'{value}' is not a {what} name (lowercase letters, digits, '-'; at most 63)")
    return values


class RegistryGrant(_Model):
    connection: str
    projects: list[str]

    @field_validator("projects")
    @classmethod
    def _projects(cls, v: list[str]) -> list[str]:
        return _dns_labels(v, "registry project")


class ClusterGrant(_Model):
    connection: str
    namespaces: list[str]

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        return _dns_labels(v, "Kubernetes namespace")


class CiGrant(_Model):
    """Where a team's pipeline pods run: its own namespace of the CI cluster, through its own connection."""

    connection: str = Field(description="the team's connection to the CI cluster (its ServiceAccount's token)")
    namespace: str = Field(description="the team's namespace there")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _dns_labels([v], "Kubernetes namespace")[0]


class ApproverGrant(_Model):
    """Who may release one environment of a team's apps, and the least an app's gate must ask for."""

    users: list[str] = Field(default_factory=list, description="the users a gate may name")
    roles: list[str] = Field(default_factory=list, description="the roles a gate may name")
    min_required: int = Field(default=1, ge=1, le=20, description="the fewest distinct approvals a gate may ask for")
    allow_self_approval: bool = Field(default=False, description="may a gate let people approve their own change")


class Team(_Model):
    """One team: its members and what its apps may use."""

    members: dict[str, TeamRole] = Field(default_factory=dict, description="user -> developer, approver or viewer")
    apps: list[str] | None = Field(
        default=None,
        description="the apps that are this team's: a spec naming the team must be one of them (the platform "
        "decides who owns an app, not whoever writes its spec); unset: any spec may name the team",
    )
    ci: CiGrant | None = Field(default=None, description="the team's CI namespace; default: [conveyor] ci_*")
    git: list[GitGrant] = Field(default_factory=list)
    registries: list[RegistryGrant] = Field(default_factory=list)
    clusters: dict[str, list[ClusterGrant]] = Field(default_factory=dict, description="environment -> clusters")
    sonar: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)
    approvers: dict[str, ApproverGrant] = Field(
        default_factory=dict, description="environment -> who may approve releases there (the floor of every gate)"
    )

    @field_validator("clusters", "approvers")
    @classmethod
    def _environments(cls, v: dict[str, Any]) -> dict[str, Any]:
        for env in v:
            if not isinstance(env, str) or not DNS1123_LABEL.match(env) or len(env) > ENV_NAME_MAX:
                raise ValueError(
                    f"{env!r} is not an environment name; use the names the apps' specs give their environments "
                    f"(lowercase letters, digits and '-', at most {ENV_NAME_MAX} characters), e.g. dev, staging, prod"
                )
        return v

    @field_validator("members")
    @classmethod
    def _members(cls, v: dict[str, TeamRole]) -> dict[str, TeamRole]:
        for user in v:
            _check_user(user)
        return v

    @model_validator(mode="after")
    def _connection_ids(self) -> Team:
        for connection in sorted(self.connections()):
            if not CONNECTION_ID.match(connection):
                raise ValueError(f"'{connection}' is not a connection id (letters, digits, '_', '.', '-')")
            if connection in platform_connections():
                raise ValueError(
                    f"'{connection}' is the platform's own connection (the push webhook's secret): no team may be "
                    "granted it, or its pods could read it; grant the team a connection of its own"
                )
        return self

    def connections(self) -> set[str]:
        """Every connection the team's apps and pipelines may use."""
        names = {g.connection for g in self.git} | {r.connection for r in self.registries}
        names |= {c.connection for grants in self.clusters.values() for c in grants}
        names |= set(self.sonar) | set(self.webhooks)
        return names | ({self.ci.connection} if self.ci else set())


class Images(_Model):
    allowed: list[str] = Field(
        default_factory=list, description="image patterns manifests may name by tag (fnmatch); others need @sha256:"
    )


def _check_user(user: str) -> str:
    if not USER_NAME.match(user):
        raise ValueError(f"'{user}' is not a user name (letters, digits, '.', '_', '@', '-'; at most 64)")
    return user


class Platform(_Model):
    """The platform team's file."""

    ci_cluster: str = Field(default="k8s_ci", description="the CI cluster's connection: never a deploy target")
    admins: list[str] = Field(default_factory=list, description="platform admins: Airflow's Admin, every team")
    images: Images = Field(default_factory=Images)
    people: dict[str, Person] = Field(default_factory=dict)
    teams: dict[str, Team] = Field(default_factory=dict)

    @field_validator("teams")
    @classmethod
    def _team_names(cls, v: dict[str, Team]) -> dict[str, Team]:
        for name in v:
            if not TEAM_NAME.match(name):
                raise ValueError(
                    f"team '{name}' must be 3-30 lowercase letters and digits, starting with a letter "
                    "(it becomes part of Airflow's team-scoped environment variables and of Kubernetes names)"
                )
            if name == PLATFORM_TEAM:
                raise ValueError(
                    f"team '{name}' is reserved: it owns the platform's own connections (such as the push "
                    "webhook's secret); give the team another name"
                )
        return v

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        return [_check_user(u) for u in v]

    @model_validator(mode="after")
    def _one_team_per_app(self) -> Platform:
        owner: dict[str, str] = {}
        for name, team in sorted(self.teams.items()):
            for app in team.apps or []:
                if app in owner:
                    raise ValueError(f"the app '{app}' is listed by teams {owner[app]} and {name}; an app has one team")
                owner[app] = name
        return self

    def image_allowed(self, image: str, registry: str) -> bool:
        """Whether manifests may name ``image`` by tag; a pattern may start with ``$REGISTRY``, the app's registry."""
        return any(
            fnmatch.fnmatchcase(image, pattern.replace("${REGISTRY}", registry).replace("$REGISTRY", registry))
            for pattern in self.images.allowed
        )

    def all_cluster_connections(self, environment: str) -> set[str]:
        return {g.connection for t in self.teams.values() for g in t.clusters.get(environment, [])}

    def ci_connections(self) -> set[str]:
        """The connections to the CI cluster: the platform's default one and each team's own."""
        return {self.ci_cluster} | {t.ci.connection for t in self.teams.values() if t.ci}

    def team_roles(self, user: str, team: str) -> tuple[str, ...]:
        """The user's role in ``team`` (as a gate policy may name it), or nothing when not a member."""
        found = self.teams.get(team)
        role = found.members.get(user) if found else None
        return (role.value,) if role else ()


def connection_teams(platform: Platform) -> dict[str, str]:
    """Each connection a team is granted -> that team. In Airflow's multi-team mode a connection belongs to
    one team (or to all), so in that mode a connection granted to two teams is an error naming both."""
    owners: dict[str, str] = {}
    for name, team in sorted(platform.teams.items()):
        for connection in sorted(team.connections()):
            if connection in owners and owners[connection] != name:
                raise ConfigurationError(
                    f"The connection '{connection}' is granted to teams {owners[connection]} and {name} in the "
                    "platform file; in multi-team mode a connection belongs to one team: give each team its own."
                )
            owners[connection] = name
    return owners


def simple_auth_users(platform: Platform) -> str:
    """``[core] simple_auth_manager_users`` for the Simple auth manager: ``name:role:team1|team2`` per user.

    The Simple auth manager gives a user one role for all their teams (so does the Keycloak auth manager: a
    realm role applies in every team group), so someone with different roles in two teams is refused."""
    teams_of: dict[str, list[str]] = {}
    role_of: dict[str, dict[str, str]] = {}
    for name, team in sorted(platform.teams.items()):
        for user, role in team.members.items():
            teams_of.setdefault(user, []).append(name)
            role_of.setdefault(user, {})[name] = AIRFLOW_ROLE[role]
    entries = [f"{admin}:{ADMIN_ROLE}" for admin in platform.admins]
    for user in sorted(set(teams_of) - set(platform.admins)):
        roles = set(role_of[user].values())
        if len(roles) > 1:
            detail = ", ".join(f"{role} in {team}" for team, role in sorted(role_of[user].items()))
            raise ConfigurationError(
                f"{user} would be Airflow {detail}: the Simple auth manager gives a user one role in all their "
                "teams. Give them the same kind of role in each team (developer and approver are both Airflow's "
                "User)."
            )
        entries.append(f"{user}:{roles.pop()}:{'|'.join(teams_of[user])}")
    if not entries:
        raise ConfigurationError("The platform file names no admins and no team members: nobody could sign in.")
    return ",".join(entries)


def bundle_name(team: str) -> str:
    return f"conveyor-{team}"


def bundle_configs(platform: Platform, root: Path) -> list[dict[str, Any]]:
    """``[dag_processor] dag_bundle_config_list``: one local Dag bundle per team, ``root/<team>``."""
    return [
        {
            "name": bundle_name(team),
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(root / team)},
            "team_name": team,
        }
        for team in sorted(platform.teams)
    ]


def load_platform(path: Path | None = None) -> Platform:
    """The platform file, validated (ConfigurationError naming the file and the field when it is wrong)."""
    path = path or settings.platform_file()
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ConfigurationError(
            f"The platform file {path} does not exist. It says what each team may use; restore "
            "config/platform.yaml or point [conveyor] platform_file at yours."
        ) from None
    return _load(str(path), stamp)


@lru_cache(maxsize=4)
def _load(path: str, _stamp: int) -> Platform:
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from None
    try:
        return Platform.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"{path} is invalid: {problems}") from None


def team_ci(platform: Platform, team: str, default: settings.CiCluster | None = None) -> settings.CiCluster:
    """Where the pipeline pods of ``team``'s apps run: the team's own CI namespace and connection when the
    platform file gives it one, else the platform's (``default``: ``[conveyor] ci_*``)."""
    default = default or settings.ci_cluster()
    found = platform.teams.get(team)
    if found is None or found.ci is None:
        return default
    return dataclasses.replace(default, connection_id=found.ci.connection, namespace=found.ci.namespace)


def cluster_namespaces(platform: Platform) -> list[tuple[str, str, str]]:
    """What a cluster needs for the teams, as ``(kind, namespace, connection)``: ``ci`` for each team's CI
    namespace (a ServiceAccount that runs pipeline pods there) and ``deploy`` for each namespace a team
    deploys to through a connection (a ServiceAccount that may deploy there only). ``make up`` makes them
    all on the local cluster; on real clusters the platform team does.
    On one cluster a namespace belongs to one team, and a CI namespace is never a deploy namespace (it holds
    the pipelines' credentials): a platform file that breaks either is refused, naming the namespace."""
    default = settings.ci_cluster()
    plan: list[tuple[str, str, str]] = []
    used: dict[str, tuple[str, str]] = {}
    for name, team in sorted(platform.teams.items()):
        ci = team.ci or CiGrant(connection=default.connection_id, namespace=default.namespace)
        mine = [("ci", ci.namespace, ci.connection)]
        for grants in team.clusters.values():
            for grant in grants:
                mine += [("deploy", namespace, grant.connection) for namespace in grant.namespaces]
        for kind, namespace, _ in mine:
            other = used.setdefault(namespace, (name, kind))
            if other[0] != name:
                raise ConfigurationError(
                    f"The namespace '{namespace}' is given to teams {other[0]} and {name} in the platform file; "
                    "on one cluster a namespace belongs to one team."
                )
            if other[1] != kind:
                raise ConfigurationError(
                    f"The namespace '{namespace}' of team {name} is both its CI namespace and a deploy namespace; "
                    "the CI namespace holds the pipelines' credentials: deploy elsewhere."
                )
        plan += mine
    return list(dict.fromkeys(plan))
