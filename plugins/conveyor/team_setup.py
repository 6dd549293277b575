"""Puts the platform file's teams into Airflow's multi-team mode: a Dag bundle folder per team, the teams
in Airflow's database, and each connection scoped to the team the platform file grants it to.

Run by ``conveyor teams ...`` when the platform starts (scripts/airflow/up); changes to teams and users
take effect when Airflow restarts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from conveyor import settings
from conveyor.exceptions import ConfigurationError
from conveyor.teams import PLATFORM_TEAM, Platform, bundle_configs, connection_teams, platform_connections

# The DAG files of a team's bundle; each finds its team from the name of the folder it is copied into.
BUNDLE_FILES = ("conveyor_apps.py", "conveyor_spec_check.py")
# Written into every bundle folder Conveyor made, so a folder of a team no longer in the file is removed
# and nothing else ever is.
MARKER = ".conveyor-team-bundle"


def bundle_templates() -> Path:
    return settings.conveyor_home() / "config" / "team-bundle"


def write_bundles(platform: Platform, root: Path, templates: Path | None = None) -> list[dict[str, Any]]:
    """Make ``root/<team>/`` for each team with the bundle's DAG files, remove the folders of teams that are
    gone, and return ``[dag_processor] dag_bundle_config_list``."""
    templates = templates or bundle_templates()
    root.mkdir(parents=True, exist_ok=True)
    for team in platform.teams:
        folder = root / team
        folder.mkdir(exist_ok=True)
        for name in BUNDLE_FILES:
            shutil.copyfile(templates / name, folder / name)
        (folder / MARKER).write_text(f"{team}\n")
    for folder in root.iterdir():
        if folder.is_dir() and folder.name not in platform.teams and (folder / MARKER).is_file():
            shutil.rmtree(folder)
    return bundle_configs(platform, root)


def sync_airflow(platform: Platform, connections: Path | None) -> list[str]:
    """Create the teams Airflow lacks and upsert each ``<conn_id>.json`` of ``connections`` (Airflow's JSON
    connection format) with the team it is granted to. A file no team is granted is not stored: in Airflow a
    connection without a team is every team's, so credentials are shared only where someone said so (an
    admin can still make such a connection). The platform's own connections (``platform_connections()``) belong
    to the reserved team ``platform``, which no task runs as. Returns what it did, a line each. Needs Airflow's database
    (``airflow db migrate`` first)."""
    from airflow.models.connection import Connection
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    owners = {**connection_teams(platform), **dict.fromkeys(platform_connections(), PLATFORM_TEAM)}
    done: list[str] = []
    with create_session() as session:
        existing = Team.get_all_team_names(session=session)
        for team in sorted({*platform.teams, PLATFORM_TEAM} - existing):
            session.add(Team(name=team))
            done.append(f"team {team} created")
        for team in sorted(existing - {*platform.teams, PLATFORM_TEAM}):
            done.append(f"team {team} is in Airflow but not in the platform file (left as it is)")
        session.flush()
        for file in sorted(connections.glob("*.json")) if connections else []:
            conn_id = file.stem
            owner = owners.get(conn_id)
            if owner is None:
                done.append(f"connection {conn_id}: granted to no team in the platform file, not stored")
                continue
            try:
                value = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"{file} is not a JSON connection ({exc}); fix or remove it.") from None
            new = Connection.from_json(json.dumps(value), conn_id=conn_id)
            old = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            if old is None:
                new.team_name = owner
                session.add(new)
            else:
                for field in ("conn_type", "host", "schema", "login", "port", "description"):
                    setattr(old, field, getattr(new, field))
                old.password = new.password
                old.extra = new.extra
                old.team_name = owner
            done.append(f"connection {conn_id} -> team {owner}")
    return done
