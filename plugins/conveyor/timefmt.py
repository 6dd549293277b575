"""Durations as people write them in specs and read them in messages."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``86400`` → ``24h``, ``5400`` → ``1h30m``, ``45`` → ``45s``."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"
