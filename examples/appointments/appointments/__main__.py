"""Runs the appointments API: `python3 -m appointments` (port from $PORT, default 8080)."""

from __future__ import annotations

import os

from appointments.server import serve

if __name__ == "__main__":
    serve(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8080")))
