"""Appointment reminders: which appointments need a reminder message, and the message text.

The second sample service. It has no Dockerfile: Conveyor builds its image by
Source-to-Image (image.strategy: source) from the Python runtime image.
GET /healthz, GET /version, POST /reminders {"patient": ..., "at": ISO time}.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reminder_text(patient: str, at: datetime) -> str:
    """The message a patient receives the day before an appointment."""
    if not patient.strip():
        raise ValueError("a reminder needs the patient's name")
    return f"Dear {patient.strip()}, this is a reminder of your appointment on {at:%A %d %B at %H:%M}."


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        elif self.path == "/version":
            self._send(200, {"version": os.environ.get("APP_VERSION") or "dev"})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/reminders":
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            text = reminder_text(str(body.get("patient", "")), datetime.fromisoformat(str(body.get("at"))))
        except (ValueError, TypeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        self._send(201, {"message": text})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        print(f"{self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"reminders listening on :{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
