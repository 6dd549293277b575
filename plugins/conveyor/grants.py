"""What the platform grants, checked against the app specs.

The platform team's file (:mod:`conveyor.teams`) says which connections each team's apps may use for
git, the registry, each environment's cluster, SonarQube and chat notices, and who may approve their
releases. A spec can only use what its team is granted: :func:`spec_problems` lists what it oversteps,
and the DAG builder reports those as the spec's errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from conveyor.pipeline import Step, build_pipeline
from conveyor.spec import AppSpec
from conveyor.teams import PRODUCTION, Platform, Team


@dataclass(frozen=True)
class GrantProblem:
    field: str
    message: str


def _host(url: str) -> str:
    if "://" not in url and "@" in url:  # scp-like git@host:path
        return url.split("@", 1)[1].split(":", 1)[0]
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def spec_problems(spec: AppSpec, platform: Platform) -> list[GrantProblem]:
    """What the spec uses that its team is not granted (empty when it stays within its grants)."""
    team = platform.teams.get(spec.team)
    if team is None:
        declared = ", ".join(sorted(platform.teams)) or "none"
        return [
            GrantProblem(
                "team",
                f"team '{spec.team}' is not declared in the platform file (teams: {declared}); "
                "ask the platform team to add it",
            )
        ]
    problems: list[GrantProblem] = []
    if team.apps is not None and spec.name not in team.apps:
        listed = ", ".join(team.apps) or "none"
        problems.append(
            GrantProblem(
                "team",
                f"'{spec.name}' is not one of team {spec.team}'s apps in the platform file (its apps: {listed}); "
                "the platform team adds an app to its team",
            )
        )
    git = [g for g in team.git if g.connection == spec.git.connection]
    if not git:
        problems.append(
            GrantProblem(
                "git.connection",
                f"team {spec.team} may not use the connection "
                f"'{spec.git.connection}' for git (granted: {_names(team.git)})",
            )
        )
    elif not any(spec.git.url.startswith(g.url_prefix) for g in git):
        prefixes = ", ".join(g.url_prefix for g in git)
        problems.append(
            GrantProblem(
                "git.url",
                f"the credentials of '{spec.git.connection}' may only be sent to "
                f"{prefixes}; {spec.git.url} is elsewhere (host {_host(spec.git.url)})",
            )
        )
    registry = [r for r in team.registries if r.connection == spec.registry.connection]
    if not registry:
        problems.append(
            GrantProblem(
                "registry.connection",
                f"team {spec.team} may not use the registry connection "
                f"'{spec.registry.connection}' (granted: {_names(team.registries)})",
            )
        )
    elif not any(spec.registry.project in r.projects for r in registry):
        projects = ", ".join(p for r in registry for p in r.projects)
        problems.append(
            GrantProblem(
                "registry.project",
                f"team {spec.team} may push only to the projects {projects} "
                f"of '{spec.registry.connection}', not to '{spec.registry.project}'",
            )
        )
    if spec.environments[0].name == PRODUCTION:
        problems.append(
            GrantProblem(
                f"environments.{PRODUCTION}",
                f"{PRODUCTION} gets releases only, so it cannot be the app's first environment (whose deploy runs "
                f"for every approved build): list dev (or another environment) before {PRODUCTION}",
            )
        )
    for env in spec.environments:
        env_name, where = env.name, f"environments.{env.name}"
        if env.cluster in platform.ci_connections():
            problems.append(
                GrantProblem(
                    f"{where}.cluster",
                    f"'{env.cluster}' is the CI cluster, where pipelines run "
                    "with their credentials; it is never a deploy target",
                )
            )
            continue
        if env_name != PRODUCTION and env.cluster in platform.all_cluster_connections(PRODUCTION):
            problems.append(
                GrantProblem(
                    f"{where}.cluster",
                    f"'{env.cluster}' is a production cluster (granted for {PRODUCTION}); {env_name} may not "
                    "deploy to it",
                )
            )
            continue
        clusters = [c for c in team.clusters.get(env_name, []) if c.connection == env.cluster]
        if not clusters:
            problems.append(
                GrantProblem(
                    f"{where}.cluster",
                    f"team {spec.team} may not deploy to '{env.cluster}' in "
                    f"{env_name} (granted: {_names(team.clusters.get(env_name, []))})",
                )
            )
        elif not any(env.namespace in c.namespaces for c in clusters):
            namespaces = ", ".join(n for c in clusters for n in c.namespaces)
            problems.append(
                GrantProblem(
                    f"{where}.namespace",
                    f"team {spec.team} may deploy to the namespaces "
                    f"{namespaces} of '{env.cluster}', not to '{env.namespace}'",
                )
            )
    if spec.sonar.enabled and spec.sonar.connection not in team.sonar:
        problems.append(
            GrantProblem(
                "sonar.connection",
                f"team {spec.team} may not use the SonarQube connection "
                f"'{spec.sonar.connection}' (granted: {', '.join(team.sonar) or 'none'})",
            )
        )
    problems += approval_problems(spec, team)
    hooks = list(spec.notifications.webhooks)
    for gate in build_pipeline(spec).gates():
        if gate.policy is not None and gate.policy.notify is not None:
            hooks += gate.policy.notify.webhooks
    for hook in dict.fromkeys(hooks):
        if hook not in team.webhooks:
            problems.append(
                GrantProblem(
                    "notifications.webhooks",
                    f"team {spec.team} may not send notices through "
                    f"'{hook}' (granted: {', '.join(team.webhooks) or 'none'})",
                )
            )
    return problems


def _policy_field(spec: AppSpec, gate: Step) -> str:
    """Where the spec sets the policy of a gate."""
    if gate.policy is spec.approvals.approve:
        return "approvals.approve"
    if gate.policy is spec.approvals.approve_prod:
        return "approvals.approve_prod"
    return f"environments.{gate.releases_to[0]}.approval"


def approval_problems(spec: AppSpec, team: Team) -> list[GrantProblem]:
    """Each gate's policy against the team's approvers of the environments it releases to: a spec cannot
    name its own approvers, lower the quorum or allow self-approval beyond what the platform grants."""
    problems: list[GrantProblem] = []
    for gate in build_pipeline(spec).gates():
        policy = gate.policy
        assert policy is not None  # every gate carries its policy
        where = _policy_field(spec, gate)
        for env in gate.releases_to:
            grant = team.approvers.get(env)
            if grant is None:
                problems.append(
                    GrantProblem(
                        where,
                        f"the platform file names no approvers for {env} of team "
                        f"{spec.team}; ask the platform team to add them",
                    )
                )
                continue
            extra_users = sorted(set(policy.users) - set(grant.users))
            extra_roles = sorted(set(policy.roles) - set(grant.roles))
            if extra_users or extra_roles:
                named = ", ".join([*(f"user {u}" for u in extra_users), *(f"role {r}" for r in extra_roles)])
                allowed = ", ".join([*(f"user {u}" for u in grant.users), *(f"role {r}" for r in grant.roles)])
                problems.append(
                    GrantProblem(
                        where,
                        f"{named} may not approve releases to {env} of team {spec.team} "
                        f"(the platform allows: {allowed or 'nobody'})",
                    )
                )
            if policy.required < grant.min_required:
                problems.append(
                    GrantProblem(
                        f"{where}.required",
                        f"releases to {env} need at least "
                        f"{grant.min_required} approvals; this gate asks for {policy.required}",
                    )
                )
            if policy.allow_self_approval and not grant.allow_self_approval:
                problems.append(
                    GrantProblem(
                        f"{where}.allow_self_approval",
                        f"team {spec.team} may not let people "
                        f"approve their own change to {env}; remove allow_self_approval",
                    )
                )
    return problems


def pusher_recorded(spec: AppSpec, platform: Platform) -> bool:
    """Whether the spec's Git server records pushers where clients cannot forge them (see GitGrant)."""
    team = platform.teams.get(spec.team)
    return team is not None and any(
        g.connection == spec.git.connection and spec.git.url.startswith(g.url_prefix) and g.records_pusher
        for g in team.git
    )


# The Airflow connection types each use of a connection accepts.
CONNECTION_TYPES = {
    "git": {"http", "https", "git", "generic"},
    "registry": {"docker", "generic"},
    "kubeconfig": {"kubernetes"},
    "sonar": {"http", "https", "generic", "sonarqube"},
}


def connection_type_problem(kind: str, conn_id: str, conn_type: str | None) -> str | None:
    """Why a connection of this type cannot serve as a ``kind`` credential (None when it can)."""
    accepted = CONNECTION_TYPES.get(kind)
    if accepted is None or (conn_type or "") in accepted:
        return None
    return (
        f"The connection '{conn_id}' is of type '{conn_type or 'none'}', but it is used as a {kind} credential, "
        f"which needs one of: {', '.join(sorted(accepted))}. Fix the connection's type, or the spec."
    )


def _names(grants: list[Any]) -> str:
    return ", ".join(g.connection for g in grants) or "none"
