"""What `%mirai metrics` does (declared in commands.py): serve Prometheus metrics on 127.0.0.1.

When the configured port is taken (a second kernel, Prometheus itself on 9090) the session
runs without the endpoint; the magics show that once, as one line naming the port and the
setting (``endpoint_notice``), and `%mirai metrics --port 0` serves on a free port it names.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError


def metrics_command(session: Any, port: int | None = None, stop: bool = False) -> str:
    """Start (idempotently) or stop the `/metrics` endpoint; returns the note shown."""
    from .render import show_note

    note = _stop(session) if stop else _serve(session, port)
    show_note(note)
    return note


def endpoint_notice(session: Any) -> str | None:
    """``metrics off: port 9090 is busy (…): set …`` while the endpoint is down, else None
    (also before the session exists: nothing to say yet)."""
    notice = None if session is None else session.telemetry.notice
    return None if notice is None else f"metrics off: {notice}"


def _stop(session: Any) -> str:
    if session.telemetry.stop():
        return "metrics endpoint stopped"
    return "metrics endpoint was not running"


def _serve(session: Any, port: int | None) -> str:
    from ..telemetry.metrics import port_setting

    wanted = session.telemetry.configured_port if port is None else port
    try:
        bound = session.telemetry.serve(wanted)
    except OSError as exc:
        where = f"set {port_setting()}, or " if port is None else ""
        raise UsageError(
            f"cannot serve metrics on 127.0.0.1:{wanted} ({exc.strerror or exc})",
            hint=f"{where}pick another port with `%mirai metrics --port N` (0 picks a free one)",
        ) from None
    return f"Prometheus metrics at http://127.0.0.1:{bound}/metrics (stop: %mirai metrics --stop)"
