"""`%mirai metrics [--port N] [--stop]`: serve the session's Prometheus metrics on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

USAGE = "usage: %mirai metrics [--port N] [--stop]"


def parse_metrics_args(rest: list[str]) -> tuple[int | None, bool]:
    """(port or None, stop) from the words after `%mirai metrics` (pure)."""
    port: int | None = None
    stop = False
    words = list(rest)
    while words:
        word = words.pop(0)
        if word == "--stop":
            stop = True
        elif word == "--port" and words:
            port = _port(words.pop(0))
        elif word.startswith("--port="):
            port = _port(word.partition("=")[2])
        else:
            raise UsageError(f"unexpected {word!r}", hint=USAGE)
    return port, stop


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise UsageError(f"--port needs a number 0–65535, got {text!r}", hint=USAGE)
    return int(text)


def metrics_command(session: Any, rest: list[str]) -> str:
    """Start (idempotently) or stop the `/metrics` endpoint; returns the note shown."""
    from .render import show_note

    port, stop = parse_metrics_args(rest)
    note = _stop(session) if stop else _serve(session, port)
    show_note(note)
    return note


def _stop(session: Any) -> str:
    telemetry = getattr(session, "telemetry", None)
    if telemetry is not None and telemetry.stop():
        return "metrics endpoint stopped"
    return "metrics endpoint was not running"


def _serve(session: Any, port: int | None) -> str:
    if getattr(session, "telemetry", None) is None:
        session.client  # noqa: B018 — building the client creates the session's telemetry
    wanted = session.config.observability.metrics.port if port is None else port
    try:
        bound = session.telemetry.serve(wanted)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on 127.0.0.1:{wanted} ({exc.strerror or exc})",
            hint="pick another port with `%mirai metrics --port N`",
        ) from None
    return f"Prometheus metrics at http://127.0.0.1:{bound}/metrics (stop: %mirai metrics --stop)"
