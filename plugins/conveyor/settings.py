"""Conveyor's settings, read from the Airflow config section ``[conveyor]``.

Every value is read through a function when it is needed, never at import time, so
``AIRFLOW__CONVEYOR__*`` environment variables set by a test or a deployment apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from conveyor.exceptions import ConfigurationError


def _conf_get(key: str, fallback: str) -> str:
    env = os.environ.get(f"AIRFLOW__CONVEYOR__{key.upper()}")
    if env is not None:
        return env
    try:
        from airflow.sdk import conf
    except ImportError:  # pragma: no cover - Airflow is a hard dependency
        return fallback
    value = conf.get("conveyor", key, fallback=fallback)
    return fallback if value is None else str(value)


def conveyor_home() -> Path:
    """The root of the Conveyor checkout (holds include/, images/)."""
    env = os.environ.get("CONVEYOR_HOME")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2]


def airflow_home() -> Path:
    """Airflow's home folder (``AIRFLOW_HOME``, as Airflow defaults it): Conveyor's own files beside Airflow's."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def check_cache_folder() -> Path:
    """Where the results of checks whose inputs have not changed are kept (conveyor.check_cache)."""
    return Path(_conf_get("check_cache_folder", str(airflow_home() / "conveyor-cache")))


def apps_folder() -> Path:
    """Where the app specs live (``[conveyor] apps_folder``)."""
    return Path(_conf_get("apps_folder", str(conveyor_home() / "include" / "apps")))


def manifests_folder() -> Path:
    """Where the manifests of every app live (``[conveyor] manifests_folder``)."""
    return Path(_conf_get("manifests_folder", str(conveyor_home() / "include" / "manifests")))


def images_file() -> Path:
    """The file that pins the step images (``[conveyor] images_file``)."""
    return Path(_conf_get("images_file", str(conveyor_home() / "images" / "images.yaml")))


def platform_file() -> Path:
    """The platform team's file: what each team may use, allowed images, people's git identities
    (``[conveyor] platform_file``)."""
    return Path(_conf_get("platform_file", str(conveyor_home() / "config" / "platform.yaml")))


# The spellings of a yes/no setting: Airflow's conf.getboolean knows only t/true/1 and f/false/0 (and raises its own
# error); Conveyor has always taken yes and on, so it reads its flags itself, through _conf_get.
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _flag(key: str, default: bool) -> bool:
    """A yes/no setting from ``[conveyor] <key>``: true/false, 1/0, yes/no or on/off, in any case. Anything else
    is a ConfigurationError, never a silent false (``ture`` must not switch a mode off)."""
    return parse_flag(key, _conf_get(key, "true" if default else "false"), default)


def parse_flag(key: str, raw: str | None, default: bool) -> bool:
    """``raw`` as the yes/no setting ``[conveyor] <key>`` reads it (None: unset, ``default``)."""
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    accepted = ", ".join(f"{yes}/{no}" for yes, no in zip(_TRUE, _FALSE, strict=True))
    raise ConfigurationError(
        f"[conveyor] {key} is {raw!r}, not true or false. Set [conveyor] {key} in airflow.cfg, or "
        f"AIRFLOW__CONVEYOR__{key.upper()}, to one of {accepted} (any case); unset, it is "
        f"{str(default).lower()}."
    )


def strict() -> bool:
    """In strict mode one bad app spec fails the whole DAG file (for CI)."""
    return _flag("strict", default=False)


def _seconds(key: str, default: str) -> float:
    """A positive number of seconds from ``[conveyor] <key>``."""
    raw = _conf_get(key, default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"[conveyor] {key} is {raw!r}, not a number of seconds; set it to e.g. {default}."
        ) from None
    if value <= 0:
        raise ConfigurationError(f"[conveyor] {key} must be positive, got {raw!r}.")
    return value


def gate_deferrable() -> bool:
    """Whether a waiting gate defers to the triggerer (the default) or, where no triggerer runs, is a sensor in
    reschedule mode that looks every ``gate_poll_interval`` (a worker process each time: set it to 10 s or more)."""
    return _flag("gate_deferrable", default=True)


def gate_poll_interval() -> float:
    """Seconds between two looks of a waiting gate's trigger at the records (one small query each)."""
    return _seconds("gate_poll_interval", "1")


def approval_signing_key() -> bytes:
    """The secret that signs approval decisions, shared by the api-server and the workers."""
    key = _conf_get("approval_signing_key", "")
    if len(key) < 16:
        raise ConfigurationError(
            "Conveyor's approval signing key is not set (or shorter than 16 characters). Set "
            "[conveyor] approval_signing_key (AIRFLOW__CONVEYOR__APPROVAL_SIGNING_KEY) to the same long "
            "random string on the api-server and on every worker, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return key.encode()


def records_database_url(default: str) -> str:
    """The database of Conveyor's own records (``[conveyor] sql_alchemy_conn``): a SQLAlchemy URL that
    the api-server and every worker reach, e.g. ``postgresql+psycopg://user:pw@host/conveyor``."""
    return _conf_get("sql_alchemy_conn", "").strip() or default


def ui_base_url() -> str:
    """The URL people open Airflow at, for links in notifications and logs."""
    try:
        from airflow.sdk import conf

        base = conf.get("api", "base_url", fallback="") or ""
    except ImportError:  # pragma: no cover
        base = ""
    return (base or "http://localhost:8080").rstrip("/")


def smtp_connection_id() -> str:
    """The Airflow SMTP connection that notices (gates, failed and recovered steps) are e-mailed through
    (``[conveyor] smtp_connection_id``)."""
    return _conf_get("smtp_connection_id", "smtp_default").strip() or "smtp_default"


def webhook_connection_id() -> str:
    """The Airflow connection whose password is the push webhook's secret (``[conveyor] webhook_connection_id``)."""
    return _conf_get("webhook_connection_id", "conveyor_webhook").strip() or "conveyor_webhook"


def notification_timeout() -> float:
    """The longest a gate notice may take to send, in seconds; a slower channel is reported as failed."""
    return _seconds("notification_timeout", "10")


@dataclass(frozen=True)
class CiCluster:
    """Where pipeline pods run: the CI cluster's connection and namespace."""

    connection_id: str
    namespace: str
    image_pull_secret: str | None
    service_account: str | None


def ci_cluster() -> CiCluster:
    pull_secret = _conf_get("image_pull_secret", "conveyor-registry").strip()
    service_account = _conf_get("ci_service_account", "").strip()
    return CiCluster(
        connection_id=_conf_get("ci_connection_id", "k8s_ci"),
        namespace=_conf_get("ci_namespace", "conveyor-ci"),
        image_pull_secret=pull_secret or None,
        service_account=service_account or None,
    )


@dataclass(frozen=True)
class StepImages:
    """The step images, resolved to full references: ``registry/repository:tag``."""

    registry: str
    refs: dict[str, str]

    def ref(self, name: str) -> str:
        """The full reference of a named image, or ``name`` itself when it is already a reference."""
        if name in self.refs:
            return f"{self.registry}/{self.refs[name]}" if self.registry else self.refs[name]
        return name

    def is_own(self, reference: str) -> bool:
        """Whether ``reference`` is one of these pinned images (Conveyor's own), not one an app spec names."""
        return any(reference == self.ref(name) for name in self.refs)

    def __hash__(self) -> int:  # dict field: hash by content
        return hash((self.registry, tuple(sorted(self.refs.items()))))


def load_step_images(path: Path | None = None) -> StepImages:
    """Read the image pins file (``images/images.yaml``), once per version of the file in a process (the DAG file
    asks for every app)."""
    path = path or images_file()
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    return _read_step_images(path, (stat.st_mtime_ns, stat.st_size) if stat else None)


@lru_cache(maxsize=8)
def _read_step_images(path: Path, _version: tuple[int, int] | None) -> StepImages:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"The step images file {path} does not exist. Restore images/images.yaml or point "
            "[conveyor] images_file at your copy."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise ConfigurationError(f"{path} must have an 'images:' mapping of name to repository:tag.")
    registry = str(data.get("registry") or "").rstrip("/")
    refs = {str(k): str(v) for k, v in data["images"].items()}
    return StepImages(registry=registry, refs=refs)


def snapshot_retention() -> tuple[int, int]:
    """The platform's SNAPSHOT image retention: how many builds per branch to keep at least
    (``[conveyor] snapshot_keep``, default 10) and for how many days every build is kept
    (``[conveyor] snapshot_days``, default 30). :mod:`conveyor.retention` applies it."""
    values = []
    for key, default in (("snapshot_keep", "10"), ("snapshot_days", "30")):
        raw = _conf_get(key, default).strip()
        try:
            values.append(int(raw))
        except ValueError:
            raise ConfigurationError(
                f"[conveyor] {key} is {raw!r}, not a whole number; set it to e.g. {default}."
            ) from None
    return values[0], values[1]
