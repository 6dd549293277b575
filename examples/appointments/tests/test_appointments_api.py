"""Tests the appointments API over real HTTP on a free local port."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from appointments.server import app_version, make_server


@pytest.fixture()
def base_url() -> Iterator[str]:
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def call(url: str, method: str = "GET", body: object | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz(base_url: str) -> None:
    assert call(base_url + "/healthz") == (200, {"status": "ok"})


def test_version_from_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_VERSION", "9.9.9-test")
    assert call(base_url + "/version") == (200, {"version": "9.9.9-test"})


def test_version_from_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_VERSION", raising=False)
    assert app_version() not in ("", "unknown")


def test_book_and_list(base_url: str) -> None:
    status, created = call(
        base_url + "/appointments", "POST", {"patient": "Ada", "doctor": "Dr. Who", "time": "2030-01-31T09:30"}
    )
    assert status == 201
    assert created == {"id": 1, "patient": "Ada", "doctor": "Dr. Who", "time": "2030-01-31T09:30"}
    assert call(base_url + "/appointments") == (200, [created])
    assert call(base_url + "/appointments/1") == (200, created)


def test_unknown_appointment_is_404(base_url: str) -> None:
    assert call(base_url + "/appointments/42")[0] == 404


def test_double_booking_is_refused(base_url: str) -> None:
    slot = {"patient": "Ada", "doctor": "Dr. Who", "time": "2030-01-31T09:30"}
    assert call(base_url + "/appointments", "POST", slot)[0] == 201
    status, body = call(base_url + "/appointments", "POST", {**slot, "patient": "Grace"})
    assert status == 409
    assert "already booked" in body["error"]  # type: ignore[index]


def test_invalid_booking_lists_every_error(base_url: str) -> None:
    status, body = call(base_url + "/appointments", "POST", {"patient": "", "time": "tomorrow", "room": 3})
    assert status == 400
    errors = body["errors"]  # type: ignore[index]
    assert any(e.startswith("patient") for e in errors)
    assert any(e.startswith("doctor") for e in errors)
    assert any(e.startswith("time") for e in errors)
    assert any("room" in e for e in errors)
