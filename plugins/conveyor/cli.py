"""The ``conveyor`` command line: validate app specs, render manifests, show a pipeline's pods."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from conveyor import apps, settings
from conveyor.exceptions import ConveyorError, SpecError
from conveyor.pipeline import RunValues, build_pipeline
from conveyor.render import manifest_variables, render_folder
from conveyor.spec import AppSpec, Environment, load_spec, spec_files
from conveyor.teams import load_platform, team_ci

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Conveyor: app specs in, pipeline DAGs of pod steps out.",
)

SAMPLE_DIGEST = "sha256:" + "0" * 64


class _LiteralDumper(yaml.SafeDumper):
    """YAML with multi-line strings (step scripts, manifests) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=120)


def _find_spec(name: str) -> AppSpec:
    folder = settings.apps_folder()
    if apps.spec_path(name) is not None:
        return apps.load_app(name)
    known = ", ".join(p.stem for p in spec_files(folder)) or "none"
    raise typer.BadParameter(f"no app named {name!r} in {folder} (apps: {known})", param_hint="APP")


def _environment(spec: AppSpec, name: str) -> Environment:
    try:
        return spec.environment(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="--env") from None


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="spec files; default: every spec in the apps folder")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="also render every environment's manifests and check the step images")
    ] = False,
) -> None:
    """Check app specs; every problem of a file is listed with its field and how to fix it."""
    paths = files or spec_files(settings.apps_folder())
    if not paths:
        _fail(f"no app specs found in {settings.apps_folder()}; add include/apps/<app>.yaml")
    bad = 0
    images = settings.load_step_images() if strict else None
    platform = load_platform()
    for path in paths:
        try:
            spec = load_spec(Path(path), settings.manifests_folder())
            apps.check_app(spec, str(path), platform, settings.manifests_folder())
            if strict:
                _strict_checks(spec, images)
        except SpecError as exc:
            bad += 1
            typer.secho(f"✗ {exc}", fg=typer.colors.RED, err=True)
            continue
        except ConveyorError as exc:
            bad += 1
            typer.secho(f"✗ {path}: {exc}", fg=typer.colors.RED, err=True)
            continue
        steps = " → ".join(build_pipeline(spec).step_ids)
        typer.echo(f"✓ {path}: app {spec.name} (team {spec.team}): {steps}")
    if bad:
        _fail(f"{bad} of {len(paths)} spec(s) invalid")
    typer.echo(f"{len(paths)} spec(s) valid")


def _strict_checks(spec: AppSpec, images: settings.StepImages | None) -> None:
    if images is not None:
        for image in (spec.builder, spec.sonar.image if spec.sonar.enabled else "toolbox"):
            if "/" not in image and image not in images.refs:
                raise ConveyorError(
                    f"image {image!r} is neither in {settings.images_file()} nor a full reference; add it there"
                )


def _registry_host(spec: AppSpec, registry: str | None) -> str:
    if registry:
        return registry
    try:
        from airflow.models.connection import Connection

        from conveyor.credentials import registry_host

        return registry_host(Connection.get_connection_from_secrets(spec.registry.connection))
    except ConveyorError:
        raise
    except Exception as exc:
        raise ConveyorError(
            f"cannot read the registry connection '{spec.registry.connection}' ({type(exc).__name__}: {exc}); "
            "pass --registry HOST, or create the connection (e.g. AIRFLOW_CONN_"
            f"{spec.registry.connection.upper()})"
        ) from None


@app.command()
def render(
    name: Annotated[str, typer.Argument(metavar="APP", help="the app's name")],
    env: Annotated[str | None, typer.Option("--env", help="an environment of the app; default: the first")] = None,
    registry: Annotated[str | None, typer.Option(help="registry host; default: the registry connection's host")] = None,
    build_number: Annotated[int, typer.Option(help="$BUILD_NUMBER")] = 1,
    branch: Annotated[str | None, typer.Option(help="$BRANCH_NAME; default: the spec's branch")] = None,
    tag_name: Annotated[str, typer.Option(help="$TAG_NAME (the environments after the first)")] = "",
    digest: Annotated[str, typer.Option(help="the image digest $IMAGE is pinned to")] = SAMPLE_DIGEST,
) -> None:
    """Print an environment's manifests as a deploy would apply them."""
    try:
        spec = _find_spec(name)
        environment = spec.environments[0] if env is None else _environment(spec, env)
        variables = manifest_variables(
            spec,
            registry=_registry_host(spec, registry),
            build_number=str(build_number),
            branch=branch or spec.git.branch,
            tag_name=tag_name,
            digest=digest,
        )
        host = variables["REGISTRY"]
        policy = apps.image_policy(spec, host, digest, load_platform())
        typer.echo(f"# {spec.name} → {env} (namespace {environment.namespace})")
        typer.echo(render_folder(settings.manifests_folder() / environment.manifests, variables, policy), nl=False)
    except ConveyorError as exc:
        _fail(str(exc))


@app.command()
def show(
    name: Annotated[str, typer.Argument(metavar="APP", help="the app's name")],
    step: Annotated[str | None, typer.Option(help="only this step")] = None,
) -> None:
    """Print the app's steps and each step's pod spec, as the pod operator's dry run would.

    Values known only while a run executes ({{ ... }}) are shown as the templates that
    stand for them.
    """
    from kubernetes.client import ApiClient

    from conveyor.steps import PodContext, build_step_pod

    try:
        spec = _find_spec(name)
        pipeline = build_pipeline(spec)
        ctx = PodContext(
            ci=team_ci(load_platform(), spec.team), images=settings.load_step_images(), values=RunValues.airflow(spec)
        )
        typer.echo(f"# {spec.name}: " + " → ".join(pipeline.step_ids))
        for s in pipeline.steps:
            if step and s.id != step:
                continue
            typer.echo(f"---\n# step {s.id}: {s.doc}" + (" (release only)" if s.release_only else ""))
            if s.is_gate:
                assert s.policy is not None  # gates carry their policy
                typer.echo(to_yaml({"gate": s.id, "releases_to": list(s.releases_to), "policy": s.policy.model_dump()}))
            else:
                typer.echo(to_yaml(ApiClient().sanitize_for_serialization(build_step_pod(pipeline, s, ctx))))
        if step and step not in pipeline.step_ids:
            _fail(f"{spec.name} has no step {step!r}; its steps are {', '.join(pipeline.step_ids)}")
    except ConveyorError as exc:
        _fail(str(exc))


spec_app = typer.Typer(
    no_args_is_help=True,
    help="The app spec's documentation, generated from its models (`make docs` writes both into docs/).",
)
app.add_typer(spec_app, name="spec")

OutputFile = Annotated[Path | None, typer.Option("--output", "-o", help="write it to this file instead of stdout")]


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


@spec_app.command("schema")
def spec_schema(output: OutputFile = None) -> None:
    """Print the JSON Schema (draft 2020-12) of an app spec, for editors."""
    from conveyor.spec_docs import json_schema_text

    _emit(json_schema_text(), output)


@spec_app.command("reference")
def spec_reference(output: OutputFile = None) -> None:
    """Print the reference of every app spec field (markdown)."""
    from conveyor.spec_docs import reference

    _emit(reference(), output)


teams_app = typer.Typer(
    no_args_is_help=True,
    help="The teams of the platform file in Airflow's multi-team mode (run by the platform's start-up).",
)
app.add_typer(teams_app, name="teams")


def _platform() -> Any:
    try:
        return load_platform()
    except ConveyorError as exc:
        _fail(str(exc))


@teams_app.command("users")
def teams_users() -> None:
    """Print Airflow's core.simple_auth_manager_users: each admin and team member with role and teams."""
    from conveyor.teams import simple_auth_users

    try:
        typer.echo(simple_auth_users(_platform()))
    except ConveyorError as exc:
        _fail(str(exc))


@teams_app.command("bundles")
def teams_bundles(
    root: Annotated[Path, typer.Argument(help="the folder that gets a Dag bundle folder per team")],
) -> None:
    """Write each team's Dag bundle folder under ROOT; print dag_processor.dag_bundle_config_list."""
    import json

    from conveyor.team_setup import write_bundles

    typer.echo(json.dumps(write_bundles(_platform(), root)))


@teams_app.command("sync")
def teams_sync(
    connections: Annotated[
        Path | None, typer.Option(help="a folder of <conn_id>.json connections to store, team-scoped")
    ] = None,
) -> None:
    """Create the platform file's teams in Airflow's database and store the connections with their team."""
    from conveyor.team_setup import sync_airflow

    try:
        for line in sync_airflow(_platform(), connections):
            typer.echo(line)
    except ConveyorError as exc:
        _fail(str(exc))


@teams_app.command("names")
def teams_names() -> None:
    """Print the platform file's team names, one a line (each team's deferred gates need a triggerer of its own)."""
    for name in sorted(_platform().teams):
        typer.echo(name)


@teams_app.command("namespaces")
def teams_namespaces() -> None:
    """Print what a cluster needs for the teams: "ci|deploy NAMESPACE CONNECTION" a line each."""
    from conveyor.teams import cluster_namespaces

    for kind, namespace, connection in cluster_namespaces(_platform()):
        typer.echo(f"{kind} {namespace} {connection}")


@teams_app.command("registries")
def teams_registries() -> None:
    """Print each team's registry connections: "TEAM CONNECTION" a line each (each team pushes with its own
    account)."""
    for name, team in sorted(_platform().teams.items()):
        for connection in sorted({grant.connection for grant in team.registries}):
            typer.echo(f"{name} {connection}")


@teams_app.command("who")
def teams_who() -> None:
    """Who is who: each admin and member, their Airflow role, teams and what they may approve."""
    platform = _platform()
    for admin in platform.admins:
        typer.echo(f"{admin:10} platform admin: every team")
    people: dict[str, list[str]] = {}
    for name, team in sorted(platform.teams.items()):
        for user, role in team.members.items():
            envs = [env for env, grant in team.approvers.items() if user in grant.users or role.value in grant.roles]
            may = f", may approve {'/'.join(sorted(envs))}" if envs else ""
            people.setdefault(user, []).append(f"{role.value} in {name}{may}")
    for user, roles in sorted(people.items()):
        if user not in platform.admins:
            typer.echo(f"{user:10} {'; '.join(roles)}")


def _active_runs(dag_id: str) -> set[str]:
    """The app's runs that Airflow has queued or running (their images may still be shown or deployed)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        states = [DagRunState.QUEUED, DagRunState.RUNNING]
        return set(session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.state.in_(states))))


def _team_connection(conn_id: str, team: str) -> Any:
    """An Airflow connection as the app's team sees it (in multi-team mode a team's connections are found
    only under its name)."""
    from airflow.configuration import conf
    from airflow.models.connection import Connection

    multi_team = conf.getboolean("core", "multi_team", fallback=False)
    return Connection.get_connection_from_secrets(conn_id, team_name=team if multi_team else None)


@app.command()
def prune(
    name: Annotated[str | None, typer.Option("--app", metavar="APP", help="only this app; default: every app")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="delete; without it nothing is deleted (a dry run)")] = False,
    registry_url: Annotated[
        str | None,
        typer.Option(help="http(s)://host:port of the registry as this machine reaches it; default: the connection's"),
    ] = None,
) -> None:
    """Delete old SNAPSHOT images of the apps from the registry, by the retention policy.

    A dry run unless --yes: prints every image with what happens to it and why. Space comes back after
    the registry's garbage collection (scripts/registry/gc on the local platform).
    """
    from datetime import UTC, datetime

    from conveyor import records, retention
    from conveyor.registry import RegistryClient, delete_planned

    try:
        specs, invalid = ([_find_spec(name)], []) if name else apps.load_apps()
        default = retention.platform_policy()
    except ConveyorError as exc:
        _fail(str(exc))
    for error in invalid:
        typer.secho(f"skipped {error.file}: its spec is invalid (see bin/conveyor validate)", fg="yellow", err=True)
    failed = deleted = 0
    for spec in specs:
        # <project>/<app>: where the build step pushes (steps/build.py image_repository)
        repository = f"{spec.registry.project}/{spec.name}"
        policy = retention.app_policy(spec, default)
        try:
            facts = retention.facts_from_records(records.load(spec.name))
            active = _active_runs(spec.name)
            client = RegistryClient.from_connection(_team_connection(spec.registry.connection, spec.team), registry_url)
            plan = retention.plan(repository, client.images(repository), facts, active, policy, datetime.now(UTC))
        except Exception as exc:  # one app's trouble (records, Airflow, registry) must not stop the others
            failed += 1
            typer.secho(f"✗ {spec.name}: nothing deleted: {exc}", fg=typer.colors.RED, err=True)
            continue
        typer.echo(f"# {spec.name}: {client.base_url}/{repository}: {policy.describe()}")
        for verdict in plan.verdicts:
            typer.echo(f"  {verdict.describe()}")
        if not yes:
            doomed = len(plan.to_delete)
            typer.echo(f"  {doomed} of {len(plan.verdicts)} image(s) would be deleted (a dry run: --yes deletes)")
            continue
        try:
            for done in delete_planned(client, plan):
                deleted += done.deleted
                typer.echo(f"  {'deleted' if done.deleted else done.why}: {done.verdict.digest}")
        except ConveyorError as exc:
            failed += 1
            typer.secho(f"✗ {spec.name}: {exc}", fg=typer.colors.RED, err=True)
    if yes:
        typer.echo(
            f"{deleted} image(s) deleted; the registry frees their space in its garbage collection "
            "(scripts/registry/gc on the local platform, Harbor's GC schedule)"
        )
    if failed:
        _fail(f"{failed} app(s) failed; see above")


cache_app = typer.Typer(no_args_is_help=True, help="The apps' build caches (pip, Maven, image layers).")
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
def cache_clear(name: Annotated[str, typer.Argument(metavar="APP", help="the app whose caches to empty")]) -> None:
    """Empty every cache of an app (a pod in its team's CI namespace does it); its next build fills them again."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    from conveyor.steps import caches

    spec = _find_spec(name)
    ci = team_ci(load_platform(), spec.team)
    pod = caches.clear_pod(spec.name, ci.namespace, settings.load_step_images().ref("toolbox"), ci.image_pull_secret)
    try:
        typer.echo(caches.clear(KubernetesHook(conn_id=ci.connection_id).core_v1_client, pod).strip())
    except ConveyorError as exc:
        _fail(str(exc))


records_app = typer.Typer(
    no_args_is_help=True,
    help="Conveyor's records: archive the oldest to files (bounded, not lost) and verify archive and database.",
)
app.add_typer(records_app, name="records")

ArchiveFolder = Annotated[
    Path | None, typer.Option("--folder", help="where the archive files are; default: $AIRFLOW_HOME/conveyor-archive")
]
AppOption = Annotated[str | None, typer.Option("--app", metavar="APP", help="only this app; default: every app")]


def _record_apps(name: str | None) -> list[str]:
    from conveyor import records

    return [name] if name else records.apps()


@records_app.command("archive")
def records_archive(
    name: AppOption = None,
    older_than: Annotated[int, typer.Option(help="archive only records older than this many days", min=30)] = 365,
    folder: ArchiveFolder = None,
    yes: Annotated[bool, typer.Option("--yes", help="archive; without it nothing changes (a dry run)")] = False,
) -> None:
    """Move each app's oldest records to compressed JSON Lines files; what the live code still needs stays."""
    from datetime import UTC, datetime, timedelta

    from conveyor import archive, records

    folder = folder or archive.default_folder()
    failed = 0
    for app_name in _record_apps(name):
        try:
            done = archive.archive_app(
                records._ledger(),
                app_name,
                folder,
                datetime.now(UTC),
                timedelta(days=older_than),
                _active_runs(app_name),
                write=yes,
            )
        except Exception as exc:  # one app's trouble must not stop the others
            failed += 1
            typer.secho(f"✗ {app_name}: {exc}", fg=typer.colors.RED, err=True)
            continue
        if not done.records and not done.dropped:
            typer.echo(f"{app_name}: nothing to archive ({done.cut.why})")
        elif not yes:
            typer.echo(f"{app_name}: would archive records up to {done.cut.through} ({done.cut.why}; --yes archives)")
        else:
            typer.echo(f"{app_name}: archived records up to {done.cut.through} to {done.file or folder / app_name}")
    if failed:
        _fail(f"{failed} app(s) failed; see above")


@records_app.command("verify")
def records_verify(name: AppOption = None, folder: ArchiveFolder = None) -> None:
    """Check each app's archive files and records in the database as one chain, from its first record."""
    from conveyor import archive, records

    folder = folder or archive.default_folder()
    failed = 0
    for app_name in _record_apps(name):
        try:
            verified = archive.verify_app(records._ledger(), app_name, folder)
        except ConveyorError as exc:
            failed += 1
            typer.secho(f"✗ {app_name}: {exc}", fg=typer.colors.RED, err=True)
            continue
        typer.echo(f"✓ {app_name}: {verified.archived} archived and {verified.live} live records form one chain")
    if failed:
        _fail(f"{failed} app(s) failed verification")


def main() -> None:
    app(prog_name="conveyor")
