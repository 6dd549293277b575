"""HTTP API for booking clinic appointments, kept in memory.

GET  /healthz              liveness/readiness probe
GET  /version              {"version": ...} from $APP_VERSION or the VERSION file
GET  /appointments         all appointments, ordered by time
POST /appointments         book one: {"patient", "doctor", "time" (ISO 8601)}
GET  /appointments/<id>    one appointment
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION_FILE = Path(__file__).resolve().parent.parent / "VERSION"
MAX_BODY = 64 * 1024


def app_version() -> str:
    """The running version: $APP_VERSION wins over the VERSION file."""
    env = os.environ.get("APP_VERSION", "").strip()
    if env:
        return env
    try:
        return VERSION_FILE.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Appointment:
    id: int
    patient: str
    doctor: str
    time: str


class ValidationError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class SlotTaken(Exception):
    pass


class AppointmentBook:
    """In-memory appointments; one doctor cannot be booked twice for the same time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Appointment] = {}
        self._next_id = 1

    def list(self) -> list[Appointment]:
        with self._lock:
            return sorted(self._items.values(), key=lambda a: (a.time, a.id))

    def get(self, appointment_id: int) -> Appointment | None:
        with self._lock:
            return self._items.get(appointment_id)

    def book(self, data: object) -> Appointment:
        patient, doctor, when = validate(data)
        with self._lock:
            for existing in self._items.values():
                if existing.doctor == doctor and existing.time == when:
                    raise SlotTaken(f"{doctor} is already booked at {when}")
            appointment = Appointment(self._next_id, patient, doctor, when)
            self._items[appointment.id] = appointment
            self._next_id += 1
            return appointment


def validate(data: object) -> tuple[str, str, str]:
    """Returns (patient, doctor, normalised ISO time) or raises ValidationError with every problem."""
    if not isinstance(data, dict):
        raise ValidationError(["body must be a JSON object with patient, doctor and time"])
    errors: list[str] = []
    unknown = sorted(set(data) - {"patient", "doctor", "time"})
    if unknown:
        errors.append(f"unknown fields: {', '.join(unknown)}")
    names: dict[str, str] = {}
    for field in ("patient", "doctor"):
        value = data.get(field)
        if not isinstance(value, str) or not value.strip():
            errors.append(f"{field}: required, a non-empty string")
        elif len(value) > 200:
            errors.append(f"{field}: at most 200 characters")
        else:
            names[field] = value.strip()
    when = ""
    raw = data.get("time")
    if not isinstance(raw, str):
        errors.append("time: required, an ISO 8601 date and time such as 2030-01-31T09:30")
    else:
        try:
            when = datetime.fromisoformat(raw).isoformat(timespec="minutes")
        except ValueError:
            errors.append(f"time: {raw!r} is not an ISO 8601 date and time such as 2030-01-31T09:30")
    if errors:
        raise ValidationError(errors)
    return names["patient"], names["doctor"], when


class Handler(BaseHTTPRequestHandler):
    server_version = "appointments"
    book: AppointmentBook  # set by make_server()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if os.environ.get("ACCESS_LOG", "1") != "0":
            super().log_message(format, *args)

    def _json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/version":
            self._json(200, {"version": app_version()})
        elif path == "/appointments":
            self._json(200, [asdict(a) for a in self.book.list()])
        elif path.startswith("/appointments/"):
            raw_id = path.removeprefix("/appointments/")
            found = self.book.get(int(raw_id)) if raw_id.isdigit() else None
            if found is None:
                self._json(404, {"error": f"no appointment {raw_id}"})
            else:
                self._json(200, asdict(found))
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0].rstrip("/") != "/appointments":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._json(413 if length > MAX_BODY else 400, {"error": f"body must be 0..{MAX_BODY} bytes"})
            return
        try:
            data = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._json(400, {"errors": ["body is not valid JSON"]})
            return
        try:
            appointment = self.book.book(data)
        except ValidationError as exc:
            self._json(400, {"errors": exc.errors})
        except SlotTaken as exc:
            self._json(409, {"error": str(exc)})
        else:
            self._json(201, asdict(appointment))


def make_server(host: str = "0.0.0.0", port: int = 8080) -> ThreadingHTTPServer:
    handler = type("AppointmentsHandler", (Handler,), {"book": AppointmentBook()})
    ThreadingHTTPServer.daemon_threads = True
    return ThreadingHTTPServer((host, port), handler)


def serve(host: str = "0.0.0.0", port: int = 8080) -> None:
    server = make_server(host, port)
    print(f"appointments {app_version()} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
