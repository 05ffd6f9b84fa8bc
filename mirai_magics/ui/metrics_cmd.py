"""What `%mirai metrics` does (declared in commands.py): serve Prometheus metrics on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError


def metrics_command(session: Any, port: int | None = None, stop: bool = False) -> str:
    """Start (idempotently) or stop the `/metrics` endpoint; returns the note shown."""
    from .render import show_note

    note = _stop(session) if stop else _serve(session, port)
    show_note(note)
    return note


def _stop(session: Any) -> str:
    if session.telemetry.stop():
        return "metrics endpoint stopped"
    return "metrics endpoint was not running"


def _serve(session: Any, port: int | None) -> str:
    wanted = session.telemetry.configured_port if port is None else port
    try:
        bound = session.telemetry.serve(wanted)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on 127.0.0.1:{wanted} ({exc.strerror or exc})",
            hint="pick another port with `%mirai metrics --port N` (0 picks a free one)",
        ) from None
    return f"Prometheus metrics at http://127.0.0.1:{bound}/metrics (stop: %mirai metrics --stop)"
