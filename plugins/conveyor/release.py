"""What one run would release: its app spec, its rendered manifests per environment, and the
hash an approval is bound to. Shared by the deploy steps, the approval API and the sensor,
so all three see the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conveyor import settings
from conveyor.credentials import registry_host
from conveyor.exceptions import ConveyorError, RenderError
from conveyor.render import manifest_variables, render_folder
from conveyor.spec import AppSpec, load_spec


def spec_path(app: str) -> Path | None:
    """The spec file of an app in the apps folder, or None."""
    for suffix in (".yaml", ".yml"):
        path = settings.apps_folder() / f"{app}{suffix}"
        if path.is_file():
            return path
    return None


def load_app(app: str) -> AppSpec:
    """The app's spec as it is now (raises SpecError when invalid, ConveyorError when missing)."""
    path = spec_path(app)
    if path is None:
        raise ConveyorError(f"'{app}' is not a Conveyor app (no spec in {settings.apps_folder()}).")
    return load_spec(path, settings.manifests_folder())


def render_environment(
    spec: AppSpec, environment: str, checkout: Mapping[str, Any], build: Mapping[str, Any], registry: str
) -> str:
    """The manifests of one environment, rendered with a run's checkout and build results."""
    if not checkout.get("commit") or not build.get("digest"):
        raise RenderError(
            "This run's checkout or build result is missing, so the manifests cannot be rendered; "
            "clear and rerun the run from 'checkout'."
        )
    env = getattr(spec.environments, environment)
    variables = manifest_variables(
        spec,
        registry=registry,
        build_number=str(checkout["build_number"]),
        branch=str(checkout["branch"]),
        tag_name=str(checkout.get("release_tag") or "") if environment == "prod" else "",
        digest=str(build["digest"]),
    )
    return render_folder(settings.manifests_folder() / env.manifests, variables)


def run_results(ti: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What this run's ``checkout`` and ``build`` steps handed on (empty until they ran)."""
    return ti.xcom_pull(task_ids="checkout") or {}, ti.xcom_pull(task_ids="build") or {}


def spec_registry(spec: AppSpec, get_connection: Callable[[str], Any]) -> str:
    return registry_host(get_connection(spec.registry.connection))


def manifests_hash(rendered: Mapping[str, str]) -> str:
    """``sha256:<hex>`` over the rendered manifests of the environments, by environment name."""
    payload = json.dumps(dict(sorted(rendered.items())), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseManifests:
    """The rendered manifests of the environments a gate releases to, or why they could not be."""

    rendered: dict[str, str]
    error: str | None = None

    @property
    def hash(self) -> str | None:
        return manifests_hash(self.rendered) if self.error is None else None


def release_manifests(
    spec: AppSpec,
    environments: Iterable[str],
    checkout: Mapping[str, Any],
    build: Mapping[str, Any],
    get_connection: Callable[[str], Any],
) -> ReleaseManifests:
    try:
        registry = spec_registry(spec, get_connection)
        rendered = {env: render_environment(spec, env, checkout, build, registry) for env in environments}
    except ConveyorError as exc:
        return ReleaseManifests({}, str(exc))
    except Exception as exc:  # a missing registry connection surfaces as Airflow's own error type
        return ReleaseManifests({}, f"{type(exc).__name__}: {exc}")
    return ReleaseManifests(rendered)


def deployed_key(app: str, environment: str) -> str:
    """The Airflow Variable that keeps what Conveyor last deployed to an environment of an app."""
    return f"conveyor.deployed.{app}.{environment}"


def newest_key(app: str, gate: str) -> str:
    """The Airflow Variable naming the newest run that reached a gate of an app."""
    return f"conveyor.gate.{app}.{gate}.newest"


def decision_link(app: str, run_id: str, gate: str) -> str:
    """The decision page of one gate, as people open it."""
    parts = "/".join(quote(part, safe=":") for part in (app, run_id, gate))
    return f"{settings.ui_base_url()}/conveyor/gates/{parts}"


def _json_object(raw: str | None) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Deployed:
    """What Conveyor last deployed to one environment of an app (kept by the deploy step)."""

    run_id: str
    at: str
    commit: str
    digest: str
    tag: str
    manifests: str

    @classmethod
    def parse(cls, raw: str | None) -> Deployed | None:
        data = _json_object(raw)
        if data is None or not isinstance(data.get("manifests"), str):
            return None
        return cls(
            run_id=str(data.get("run_id", "")),
            at=str(data.get("at", "")),
            commit=str(data.get("commit", "")),
            digest=str(data.get("digest", "")),
            tag=str(data.get("tag", "")),
            manifests=data["manifests"],
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def describe(self) -> str:
        version = f"{self.tag} " if self.tag else ""
        return f"{version}deployed by run {self.run_id} at {self.at}".strip()


@dataclass(frozen=True)
class Newest:
    """The newest run that reached a gate of an app: older runs still waiting there are superseded."""

    run_id: str
    run_after: datetime

    @classmethod
    def parse(cls, raw: str | None) -> Newest | None:
        data = _json_object(raw)
        if data is None:
            return None
        try:
            when = datetime.fromisoformat(str(data["run_after"]))
        except (KeyError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(run_id=str(data.get("run_id", "")), run_after=when)

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "run_after": self.run_after.isoformat()})
