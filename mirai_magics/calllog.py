"""The call log: every call (success or failure) appended to SQLite, secrets redacted.

One row per call with its request (parameters, messages unless ``include_prompts`` is
off), the answer and the tool calls it asked for, usage, latency, attempts, retry reasons,
degradation, `auto` route, the model version (sent, reported by the API, canary), error, its
cost in USD (``pricing.py``; NULL when unknown) and the notebook that made it
(``memory/identity.py``) — the row itself is built by :mod:`mirai_magics.calllog_rows`; an
older file gains newer columns on open.
``cost_totals`` sums costs per model (a notebook's, or a day's for ``limits.budget_usd``).
The main log lives in ``<home>/calls.sqlite`` (WAL, so two kernels can append at once);
``MIRAI_RECORD=path`` adds a *cassette*: the same table holding only live chat calls, in
rollback-journal mode so the file can be committed next to a notebook.

A row whose JSON column does not decode (a file edited by hand, or written by a version
that redacted JSON as text) is skipped by ``read_calls`` with one warning line naming it;
the other rows read as usual.

Calls are written in batches (one transaction per ~50 ms burst). A row that cannot be
built or stored (bad data in one call) is dropped alone, with one warning line: the batch
is then written row by row, so the other calls of the burst are kept.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .background import BatchWriter
from .calllog_rows import calls_from, current_cell, new_session_id, row_values, text_key
from .client.observers import Messages, Observer
from .client.records import CallRecord
from .errors import ConfigError
from .memory.home import make_home
from .memory.identity import notebook_identity
from .pricing import ModelSpend, Prices
from .redact import DEFAULT_SECRET_NAMES, redact, secret_env_values
from .text import clip

log = logging.getLogger(__name__)
FILE_NAME = "calls.sqlite"
BATCH_LINGER_S = 0.05  # how long the writer lets calls gather before one transaction
BUSY_TIMEOUT_MS = 10_000
MAX_REMEMBERED_SECRETS = 100
# What one call's data can make building or inserting its row raise (a value SQLite
# cannot bind, text UTF-8 cannot encode, an int over 64 bits): that row is dropped alone.
ROW_ERRORS = (sqlite3.ProgrammingError, ValueError, TypeError, OverflowError)
SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT, time REAL, session TEXT, conversation TEXT, cell TEXT,
    kind TEXT, profile TEXT, requested_profile TEXT, model TEXT,
    request_hash TEXT, prompt_hash TEXT,         -- sha256 hex: whole request, last user message
    params TEXT, messages TEXT, response TEXT,   -- JSON, JSON (NULL without prompts), text
    tokens_in INTEGER, tokens_out INTEGER, latency_ms REAL, attempts INTEGER,
    retry_reasons TEXT, degraded_from TEXT, degraded_reason TEXT, finish_reason TEXT,
    offline INTEGER, streamed INTEGER, replayed INTEGER,
    error TEXT, error_code TEXT, user TEXT
);
CREATE INDEX IF NOT EXISTS calls_request_hash ON calls(request_hash);
CREATE INDEX IF NOT EXISTS calls_prompt_hash ON calls(prompt_hash);
"""
# The JSON columns and what each decodes to; a row where one does not is skipped by readers.
JSON_SHAPES = {"params": dict, "messages": list, "retry_reasons": list, "tool_calls": list}
# Columns added after the first layout: an older file gets them on open (_ensure_columns).
ADDED_COLUMNS = {
    "response_model": "TEXT",  # the model the API reported answering
    "canary": "TEXT",  # the canary model version the call was sent to
    "route_profile": "TEXT",  # what `auto` chose (NULL: a profile was named)
    "route_reason": "TEXT",  # and why: "code generation", "spam filtering", …
    "cost": "REAL",  # USD of its usage (pricing.py); NULL: no usage or no price
    "notebook": "TEXT",  # the notebook identity of the kernel (memory/identity.py)
    "tool_calls": "TEXT",  # JSON of the answer's tool calls, redacted; NULL: none
}


# --- the SQLite file -------------------------------------------------------------------


def connect(path: Path, *, wal: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a call log file with its schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        _ensure_columns(conn, ADDED_COLUMNS)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _ensure_columns(conn: sqlite3.Connection, columns: dict[str, str]) -> None:
    """``ALTER TABLE calls ADD COLUMN`` for each of ``columns`` (name → type) it lacks."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
    for name, kind in columns.items():
        if name in have:
            continue
        try:
            conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as exc:  # another kernel added it a moment ago
            if "duplicate column" not in str(exc):
                raise


def read_calls(path: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The last ``limit`` rows of a call log, oldest first (empty when there is no file)."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.row_factory = sqlite3.Row
            query = "SELECT * FROM calls ORDER BY seq DESC LIMIT ?"
            rows = conn.execute(query, (max(limit, 0),)).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # corrupt, not SQLite, or another table layout
        raise ConfigError(
            f"call log {path} cannot be read ({exc})",
            hint=f"rename it (e.g. to {path.name}.broken): the next call starts a new log",
        ) from None
    decoded = (_readable(row, path) for row in reversed(rows))
    return [row for row in decoded if row is not None]


def cost_totals(
    path: Path,
    *,
    notebook: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> dict[str, ModelSpend]:
    """Live answered calls per model (calls, cost, unpriced) of one notebook and/or started
    in [since, until); empty without a file or before the cost column."""
    # a failed call counts when it reported usage or was billed for streams cut before theirs
    answered = "(error IS NULL OR tokens_in IS NOT NULL OR cost IS NOT NULL)"
    where, args = ["replayed = 0", answered], []
    for clause, value in (("notebook = ?", notebook), ("time >= ?", since), ("time < ?", until)):
        if value is not None:
            where.append(clause)
            args.append(value)
    query = (
        "SELECT model, COUNT(*), TOTAL(cost), COUNT(*) - COUNT(cost) FROM calls "
        f"WHERE {' AND '.join(where)} GROUP BY model ORDER BY MIN(seq)"
    )
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            rows = conn.execute(query, args).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:  # an older file without the columns: nothing
        if "no such column" in str(exc):
            return {}
        raise
    return {model: ModelSpend(calls, cost, unpriced) for model, calls, cost, unpriced in rows}


def _insert(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (same columns) in one transaction; all or none."""
    names = list(rows[0])
    insert = f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    conn.execute("BEGIN")
    try:
        conn.executemany(insert, [[row[name] for name in names] for row in rows])
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _readable(row: sqlite3.Row, path: Path) -> dict[str, Any] | None:
    """``row`` decoded, or None (with one warning line) when a JSON column of it is not JSON."""
    try:
        return _decoded(dict(row))
    except ValueError as exc:
        log.warning("mirai: call log %s: row %s skipped: %s", path, row["seq"], exc)
        return None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its JSON columns decoded; ValueError naming the one that does not."""
    for name, shape in JSON_SHAPES.items():
        try:
            if name == "tool_calls":
                row[name] = calls_from(row.get(name))  # NULL or an older log: none
            elif row.get(name) is not None:
                row[name] = json.loads(row[name])
                if not isinstance(row[name], shape):
                    raise ValueError(f"{clip(row[name], 40)} is not a JSON {shape.__name__}")
        except (ValueError, TypeError) as exc:  # TypeError: a number stored in its place
            raise ValueError(f"its {name} column does not decode ({exc})") from None
    for name in ("offline", "streamed", "replayed"):
        row[name] = bool(row[name])
    return row


class CallLog(Observer):
    """An observer for ``client.observers`` that appends every finished call to SQLite."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        include_prompts: bool = True,
        cassette: bool = False,
        session_id: str | None = None,
        secret_names: tuple[str, ...] = DEFAULT_SECRET_NAMES,
        prices: Prices | None = None,
        notebook: str | None = None,
    ):
        self.path = Path(path).expanduser().resolve()
        self.prices = prices or Prices()
        self.notebook = notebook or notebook_identity()
        self.include_prompts = include_prompts
        self.cassette = cassette
        self.session_id = session_id or new_session_id()
        self.secret_names = secret_names
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._conversations: OrderedDict[str, str] = OrderedDict()
        self._count = 0
        self._known_secrets: dict[str, None] = {}  # every secret value seen, oldest first
        self._secrets()
        self._failing = False
        # Written by a background thread, in batches: the caller gets its answer without
        # waiting on disk, and a burst of calls costs one transaction.
        self._writer = BatchWriter(
            f"mirai-call-log-{self.path.name}", self._write_logged, BATCH_LINGER_S
        )

    def __repr__(self) -> str:
        kind = "cassette" if self.cassette else "call log"
        return f"<mirai {kind} {self.path}>"

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        if self.cassette and (record.replayed or record.kind != "chat"):
            return
        self._writer.add((record, messages, text, current_cell()))

    def _write_logged(self, batch: list[tuple[Any, ...]]) -> None:
        try:
            self.write_many(batch)
        except (sqlite3.Error, OSError, *ROW_ERRORS) as exc:  # never break the call itself
            if not self._failing:  # once per outage, not once per call
                log.warning("mirai: call log %s not written: %s", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def flush(self) -> None:
        """Wait until every call observed so far is on disk."""
        self._writer.flush()

    def write(
        self,
        record: Any,
        messages: list[dict[str, Any]] | None,
        text: str | None,
        cell: str | None = None,
    ) -> None:
        """Append one call (secrets redacted), now, on the calling thread."""
        self.write_many([(record, messages, text, cell)])

    def write_many(self, calls: list[tuple[Any, ...]]) -> None:
        """Append calls ``(record, messages, text, cell)`` in one transaction; when that
        fails on a row's data, row by row, dropping (with a warning) only the bad rows."""
        secrets = self._secrets()
        rows = [row for call in calls if (row := self._built(secrets, call)) is not None]
        if not rows:
            return
        with self._lock:
            conn = self._connection()
            try:
                _insert(conn, rows)
            except ROW_ERRORS:
                for row in rows:
                    try:
                        _insert(conn, [row])
                    except ROW_ERRORS as exc:
                        log.warning("mirai: call %s not logged: %s", row.get("id"), exc)

    def _built(self, secrets: list[str], call: tuple[Any, ...]) -> dict[str, Any] | None:
        try:
            return self._row(secrets, *call)
        except ROW_ERRORS as exc:
            log.warning("mirai: call %s not logged: %s", getattr(call[0], "id", "?"), exc)
            return None

    def _row(self, secrets: list[str], record: Any, messages: Any, text: Any, cell: Any) -> dict:
        row = row_values(
            record,
            messages,
            text,
            secrets,
            session=self.session_id,
            conversation=self._conversation(messages, text, secrets),
            cell=cell if cell is not None else current_cell(),
            cost=self.prices.cost(record),
            notebook=self.notebook,
        )
        if not self.include_prompts:
            row["messages"] = None
        return row

    def _secrets(self) -> list[str]:
        """Secret env values now, plus earlier ones: a value rotated away is still redacted."""
        for value in secret_env_values(self.secret_names):
            self._known_secrets.pop(value, None)
            self._known_secrets[value] = None
        while len(self._known_secrets) > MAX_REMEMBERED_SECRETS:
            del self._known_secrets[next(iter(self._known_secrets))]
        return sorted(self._known_secrets, key=len, reverse=True)

    def _conversation(
        self, messages: list[dict[str, Any]] | None, text: str | None, secrets: list[str]
    ) -> str:
        """Same id as the call whose answer ends this request's history, else a new one
        (answers compared redacted: the history keeps them so)."""
        previous = [m for m in (messages or [])[:-1] if m.get("role") == "assistant"]
        key = text_key(redact(str(previous[-1].get("content")), secrets)) if previous else None
        conversation = self._conversations.get(key) if key else None
        if conversation is None:
            self._count += 1
            conversation = f"{self.session_id}/{self._count}"
        if text:
            self._conversations[text_key(redact(text, secrets))] = conversation
            while len(self._conversations) > 1000:
                self._conversations.popitem(last=False)
        return conversation

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.cassette:  # the call log may be the first to make .mirai/
                make_home(self.path.parent)
            self._conn = connect(self.path, wal=not self.cassette)
        return self._conn

    def close(self) -> None:
        """Write what is queued, then close the file; a later write reopens it."""
        self._writer.stop()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# --- wiring -------------------------------------------------------------------------------


def open_call_logs(config: Any, session_id: str | None = None) -> list[CallLog]:
    """The session's call log (when enabled) and the MIRAI_RECORD cassette (when set)."""
    settings = config.observability.call_log
    common: dict[str, Any] = {
        "include_prompts": settings.include_prompts,
        "session_id": session_id or new_session_id(),
        "secret_names": tuple(config.security.redact_env_names),
        "prices": Prices.from_config(config),
    }
    logs: list[CallLog] = []
    if settings.enabled:
        logs.append(CallLog(main_log_path(config), **common))
    if os.environ.get("MIRAI_RECORD"):
        logs.append(CallLog(os.environ["MIRAI_RECORD"], cassette=True, **common))
    return logs


def reopen_call_logs(config: Any, previous: list[CallLog]) -> list[CallLog]:
    """Close ``previous`` logs and open them again from ``config`` (construction, reload);
    the session id carries over, so one notebook session stays one session in the log."""
    for item in previous:
        item.close()
    session_id = previous[0].session_id if previous else None
    return open_call_logs(config, session_id)


def main_log_path(config: Any) -> Path:
    """Where the session's call log is (whether or not it is enabled)."""
    from .config import home_dir

    return home_dir(config) / FILE_NAME
