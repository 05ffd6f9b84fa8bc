"""What `%mirai log` and `%mirai replay` do (declared in commands.py): the call log, in a cell."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ..text import clip
from .render import show_note
from .status import Listing, show_table

_COLUMNS = (
    "time",
    "cell",
    "profile/model",
    "tokens",
    "latency",
    "tries",
    "outcome",
    "prompt",
    "answer",
)


def log_row(call: dict[str, Any]) -> tuple[str, ...]:
    """One call as table cells (pure)."""
    tokens = f"{_num(call['tokens_in'])} → {_num(call['tokens_out'])}"
    flags = [name for name in ("replayed", "offline") if call.get(name)]
    if call.get("degraded_from"):
        flags.append(f"degraded from {call['degraded_from']}")
    if call.get("retry_reasons"):
        flags.append("retried " + ",".join(call["retry_reasons"]))
    outcome = call["error_code"] or "ok"
    prompts = [m for m in call.get("messages") or [] if m.get("role") == "user"]
    prompt = str(prompts[-1].get("content", "")) if prompts else ""
    return (
        time.strftime("%H:%M:%S", time.localtime(call["time"])),
        call.get("cell") or "",
        f"{call['profile']}/{call['model']}",
        tokens,
        f"{call['latency_ms'] or 0:,.0f} ms",
        str(call["attempts"]),
        " · ".join([outcome, *flags]),
        clip(prompt, 40),
        clip(call["error"] or call["response"] or "", 40),
    )


def log_listing(session: Any, limit: int = 10) -> Listing:
    """The last ``limit`` calls of the session's call log (dicts, oldest first) as a table."""
    from ..calllog import main_log_path, read_calls

    path = main_log_path(session.config)
    if not session.config.observability.call_log.enabled:
        off = "the call log is off (observability.call_log.enabled: false)"
        return Listing("call log", _COLUMNS, [], [], off)
    session.flush_logs()
    calls = read_calls(path, limit)
    rows = [log_row(c) for c in calls]
    empty = f"no calls logged yet in {path}"
    return Listing(f"last {len(calls)} call(s) in {path}", _COLUMNS, rows, calls, empty)


def show_log(session: Any, limit: int = 10, as_json: bool = False) -> Listing | None:
    """`%mirai log`: the calls as a Listing (shown when it ends the cell), or JSON printed."""
    calls = log_listing(session, limit)
    if as_json:
        print(json.dumps(list(calls), indent=2, ensure_ascii=False))
        return None
    return calls


def replay_command(session: Any, arg: str, fallthrough: bool = False) -> None:
    """Turn replay on from the path ``arg`` (strict unless fallthrough), ``off``, or ``status``."""
    from ..replay import Replay, recording_path, replay_mode

    if arg == "status":
        return replay_status(session)
    if arg == "off":
        session.set_replay(None)
        return show_note("replay off: calls go to the live endpoint")
    if recording_path():
        return show_note(f"recording to {recording_path()} (MIRAI_RECORD is set): replay stays off")
    mode = "fallthrough" if fallthrough else os.environ.get("MIRAI_REPLAY_MODE")
    replay = Replay(arg, replay_mode(mode))
    count = replay.count()  # fails here, not at the first call, when the file is wrong
    session.set_replay(replay)
    show_note(f"replaying {count} recorded answer(s) from {arg} ({replay.mode})")


def replay_status(session: Any) -> None:
    from ..replay import recording_path

    replay = session.replay
    rows = [("recording to", recording_path() or "off")]
    if replay is None:
        rows.insert(0, ("replay", "off"))
    else:
        rows[:0] = [
            ("replay", replay.mode),
            ("file", replay.shown_path),
            ("recorded answers", str(replay.count())),
            ("hits / misses", f"{replay.hits} / {replay.misses}"),
        ]
    show_table("mirai replay", rows)


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:,}"
