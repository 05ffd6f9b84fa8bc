"""Replay mode: answer chat calls from a recorded call log or cassette, with no network.

A request is looked up by :func:`~mirai_magics.calllog_rows.request_key` (model, redacted
messages without the memory block, parameters). Only live answers count as recordings: the
rows a replay run adds to the main call log are skipped. When the same request was recorded
several times, the n-th identical call gets the n-th recorded answer of the latest recording
run that made it, so a notebook replays exactly. A miss raises :class:`ReplayMissError`
naming the cell (strict mode) or lets the live call proceed (``MIRAI_REPLAY_MODE=fallthrough``).
A recorded answer that asked for tool calls replays them on ``Reply.tool_calls`` (as stored:
redacted); a log written before the ``tool_calls`` column replays them as none, and a row
whose ``tool_calls`` are not JSON (a damaged file) is one ConfigError naming the file and
the row, as a file that is not a call log is.
While ``MIRAI_RECORD`` is set replay stays off: a recording run always calls the live model.
The session does not search the notebook memory while replaying (badge: ``memory: off
(replay)``): the recording was hashed without its memory block.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .calllog import BUSY_TIMEOUT_MS
from .calllog_rows import calls_from, current_cell, last_user_text, prompt_key, request_key
from .errors import ConfigError, ReplayMissError
from .redact import DEFAULT_SECRET_NAMES, redact, secret_env_values
from .text import clip
from .tools import with_calls

MODES = ("strict", "fallthrough")
_RECORDED = "kind = 'chat' AND error IS NULL AND response IS NOT NULL AND replayed = 0"
_LOOKUP = f"""
SELECT session, response, tokens_in, tokens_out, finish_reason, offline, id, seq, {{calls}}
FROM calls WHERE request_hash = ? AND {_RECORDED}
ORDER BY seq
"""


@dataclass(frozen=True)
class Recording:
    """One recorded answer."""

    text: str
    tokens_in: int | None
    tokens_out: int | None
    finish_reason: str | None
    offline: bool
    call_id: str
    tool_calls: tuple[dict[str, Any], ...] = ()


def replay_mode(value: str | None) -> str:
    """``MIRAI_REPLAY_MODE`` → strict (default) or fallthrough; anything else is an error."""
    mode = (value or "strict").strip().lower()
    if mode not in MODES:
        raise ConfigError(
            f"MIRAI_REPLAY_MODE={value!r} is not a replay mode",
            hint="use strict (default) or fallthrough",
        )
    return mode


def recording_path() -> str | None:
    """The MIRAI_RECORD cassette path, when recording."""
    return os.environ.get("MIRAI_RECORD") or None


def replay_from_env() -> Replay | None:
    """A Replay for ``MIRAI_REPLAY`` (None when unset or while MIRAI_RECORD is recording)."""
    path = os.environ.get("MIRAI_REPLAY")
    if not path or recording_path():
        return None
    return Replay(path, replay_mode(os.environ.get("MIRAI_REPLAY_MODE")))


def chunks(text: str, pieces: int = 4) -> list[str]:
    """``text`` cut at spaces into about ``pieces`` parts whose concatenation is ``text``."""
    size = max(1, len(text) // pieces)
    out: list[str] = []
    start = 0
    while start < len(text):
        end = text.find(" ", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


class Replay:
    """The ``client.replay`` seam: ``await answer(record, params, messages, on_text)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "strict",
        secret_names: tuple[str, ...] = DEFAULT_SECRET_NAMES,
    ):
        self.path = Path(path).expanduser().resolve()
        self.shown_path = str(path)
        self.mode = replay_mode(mode)
        self.secret_names = secret_names
        self.hits = 0
        self.misses = 0
        self._seen: Counter[str] = Counter()
        self._conn: sqlite3.Connection | None = None
        self._lookup = ""  # the lookup query, fitted to the file's columns when it is opened

    def __repr__(self) -> str:
        return f"<mirai Replay {self.shown_path} ({self.mode}, {self.hits} hits)>"

    async def answer(
        self,
        record: Any,
        params: dict[str, Any],
        messages: list[dict[str, Any]],
        on_text: Any = None,
    ) -> str | None:
        """The recorded answer (record filled in), None to go live, or ReplayMissError."""
        # Hashed redacted, as the recording was: an answer that came back redacted from the
        # cassette hashes the same as the original in the history of the next cell.
        key = request_key(params, messages, secret_env_values(self.secret_names))
        found = self.lookup(key, self._seen[key])
        if found is None:
            self.misses += 1
            if self.mode == "fallthrough":
                return None
            raise ReplayMissError(self._miss_message(record, messages))
        self._seen[key] += 1
        self.hits += 1
        _fill(record, found)
        if on_text is not None:
            for piece in chunks(found.text):
                on_text(piece)
                await asyncio.sleep(0)
        return with_calls(found.text, found.tool_calls)

    def lookup(self, key: str, occurrence: int = 0) -> Recording | None:
        """The ``occurrence``-th answer to ``key`` in the latest run that recorded it."""
        conn = self._connection()
        rows = conn.execute(self._lookup, (key,)).fetchall()
        if not rows:
            return None
        latest = [row for row in rows if row[0] == rows[-1][0]]
        _session, text, tokens_in, tokens_out, finish, offline, call_id, seq, calls = latest[
            min(occurrence, len(latest) - 1)
        ]
        try:
            found = tuple(calls_from(calls))
        except (ValueError, TypeError) as exc:  # a damaged row: say which, as for a bad file
            raise ConfigError(
                f"replay file {self.path}: row {seq} (call {call_id}) has tool calls that "
                f"are not JSON ({exc})",
                hint="record that cell again with MIRAI_RECORD, or delete the row",
            ) from None
        return Recording(text, tokens_in, tokens_out, finish, bool(offline), call_id, found)

    def count(self) -> int:
        """How many recorded answers (successful live chat calls) the file holds."""
        query = f"SELECT COUNT(*) FROM calls WHERE {_RECORDED}"
        return int(self._connection().execute(query).fetchone()[0])

    def _miss_message(self, record: Any, messages: list[dict[str, Any]]) -> str:
        cell = current_cell()
        where = f"cell {cell}" if cell else "this request"
        secrets = secret_env_values(self.secret_names)
        prompt = redact(clip(last_user_text(messages), 60), secrets)
        rows = self._connection().execute(
            f"SELECT COUNT(*) FROM calls WHERE prompt_hash = ? AND {_RECORDED}",
            (prompt_key(messages, secrets),),
        )
        why = (
            "the prompt was recorded, but with other history, system prompt or options"
            if rows.fetchone()[0]
            else "this prompt was never recorded"
        )
        return (
            f"replay: no recording for {where} ({record.profile}/{record.model}: "
            f'"{prompt}") in {self.path.name}: {why}'
        )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_cassette(self.path)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(calls)")}
            calls = "tool_calls" if "tool_calls" in columns else "NULL"  # NULL: an older log
            self._lookup = _LOOKUP.format(calls=calls)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def open_cassette(path: Path) -> sqlite3.Connection:
    """A read-only connection to a call log or cassette; ConfigError when it is missing,
    a directory or not a file."""
    if not path.is_file():
        message, hint = _not_a_file(path)
        raise ConfigError(message, hint=hint)
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
    try:
        conn.execute("SELECT request_hash, prompt_hash FROM calls LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(
            f"replay file {path} is not a mirai call log ({exc})",
            hint="point MIRAI_REPLAY or `%mirai replay` at a file written by MIRAI_RECORD",
        ) from None
    return conn


def _not_a_file(path: Path) -> tuple[str, str]:
    """Why ``path`` cannot be replayed from, and what to do (message, hint)."""
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.sqlite")) if p.name != "memory.sqlite"]
        example = f" (e.g. {found[0]})" if found else ""
        return f"replay path {path} is a directory", f"name the recording file in it{example}"
    if path.exists():
        return f"replay path {path} is not a file", "name a file written by MIRAI_RECORD"
    return (
        f"replay file {path} does not exist",
        "record one with MIRAI_RECORD=path, or fix the path",
    )


def _fill(record: Any, found: Recording) -> None:
    record.tokens_in, record.tokens_out = found.tokens_in, found.tokens_out
    record.finish_reason, record.offline = found.finish_reason, found.offline
    record.replayed, record.attempts = True, 1
    record.replayed_from = found.call_id
