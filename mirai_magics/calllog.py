"""The call log: every call (success or failure) appended to SQLite, secrets redacted.

One row per call with its request (parameters, messages unless ``include_prompts`` is
off), the answer, usage, latency, attempts, retry reasons, degradation and error. The
main log lives in ``<home>/calls.sqlite`` (WAL, so two kernels can append at once);
``MIRAI_RECORD=path`` adds a *cassette*: the same table holding only live chat calls,
in rollback-journal mode so the file can be committed next to a notebook.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .background import BackgroundWorker
from .redact import DEFAULT_SECRET_NAMES, redact, secret_env_values

log = logging.getLogger(__name__)
FILE_NAME = "calls.sqlite"
BUSY_TIMEOUT_MS = 10_000
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


# --- pure helpers ---------------------------------------------------------------------


def canonical(value: Any) -> str:
    """Stable JSON text: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(params: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    """SHA-256 of (model, messages, parameters): what replay looks a recording up by."""
    body = {"model": params.get("model"), "messages": messages, "params": params}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else canonical(content)
    return ""


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """SHA-256 of the last user message alone (to explain a replay miss)."""
    return hashlib.sha256(last_user_text(messages).encode()).hexdigest()


def current_cell() -> str | None:
    """The running notebook cell as ``[n]`` (IPython's execution count), if any."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    inputs = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    # In[] already holds the running cell; execution_count is bumped before or after the
    # cell runs depending on the IPython version, so it is not used.
    return f"[{len(inputs) - 1}]" if isinstance(inputs, list) and len(inputs) > 1 else None


def row_values(
    record: Any, messages: list[dict[str, Any]] | None, text: str | None, **ids: Any
) -> dict[str, Any]:
    """One call log row (unredacted) from a CallRecord, its messages and answer."""
    return {
        "id": record.id,
        "time": record.started_at,
        "kind": record.kind,
        "profile": record.profile,
        "requested_profile": record.requested_profile,
        "model": record.model,
        "request_hash": request_key(record.params, messages) if messages else None,
        "prompt_hash": prompt_key(messages) if messages else None,
        "params": canonical(record.params),
        "messages": canonical(messages) if messages is not None else None,
        "response": text,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "latency_ms": round(record.latency_ms, 3),
        "attempts": record.attempts,
        "retry_reasons": canonical(record.retry_reasons),
        "degraded_from": record.degraded_from,
        "degraded_reason": record.degraded_reason,
        "finish_reason": record.finish_reason,
        "offline": int(record.offline),
        "streamed": int(record.streamed),
        "replayed": int(record.replayed),
        "error": record.error,
        "error_code": record.error_code,
        "user": record.user,
        **ids,
    }


def new_session_id() -> str:
    return f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"


# --- the SQLite file -------------------------------------------------------------------


def connect(path: Path, *, wal: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a call log file with its schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    return conn


def read_calls(path: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The last ``limit`` rows of a call log, oldest first (empty when there is no file)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM calls ORDER BY seq DESC LIMIT ?", (max(limit, 0),)
        ).fetchall()
    finally:
        conn.close()
    return [_decoded(dict(row)) for row in reversed(rows)]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for name in ("params", "messages", "retry_reasons"):
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    for name in ("offline", "streamed", "replayed"):
        row[name] = bool(row[name])
    return row


class CallLog:
    """An observer for ``client.observers`` that appends every finished call to SQLite."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        include_prompts: bool = True,
        cassette: bool = False,
        session_id: str | None = None,
        secret_names: tuple[str, ...] = DEFAULT_SECRET_NAMES,
    ):
        self.path = Path(path).expanduser().resolve()
        self.include_prompts = include_prompts
        self.cassette = cassette
        self.session_id = session_id or new_session_id()
        self.secret_names = secret_names
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._conversations: OrderedDict[str, str] = OrderedDict()
        self._count = 0
        self._env_size, self._secret_values = -1, []
        self._worker = BackgroundWorker(f"mirai-call-log-{self.path.name}")

    def __repr__(self) -> str:
        kind = "cassette" if self.cassette else "call log"
        return f"<mirai {kind} {self.path}>"

    def __call__(self, event: str, record: Any, info: dict[str, Any]) -> None:
        if event != "call" or (self.cassette and (record.replayed or record.kind != "chat")):
            return
        # Written by a background thread: the caller gets its answer without waiting on disk.
        args = (record, info.get("messages"), info.get("text"), current_cell())
        self._worker.submit(self._write_logged, *args)

    def _write_logged(self, *args: Any) -> None:
        try:
            self.write(*args)
        except (sqlite3.Error, OSError) as exc:  # the log must never break the call itself
            log.warning("mirai: call log %s not written: %s", self.path, exc)

    def flush(self) -> None:
        """Wait until every call observed so far is on disk."""
        self._worker.flush()

    def write(
        self,
        record: Any,
        messages: list[dict[str, Any]] | None,
        text: str | None,
        cell: str | None = None,
    ) -> None:
        """Append one call (secrets redacted), now, on the calling thread."""
        row = row_values(
            record,
            messages,
            text,
            session=self.session_id,
            conversation=self._conversation(messages, text),
            cell=cell if cell is not None else current_cell(),
        )
        if not self.include_prompts:
            row["messages"] = None
        secrets = self._secrets()
        values = [_redacted(value, secrets) for value in row.values()]
        insert = f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        with self._lock:
            self._connection().execute(insert, values)

    def _secrets(self) -> list[str]:
        """Secret env values, re-read whenever a variable is added or removed (cheap check)."""
        if self._env_size != len(os.environ):
            self._secret_values = secret_env_values(self.secret_names)
            self._env_size = len(os.environ)
        return self._secret_values

    def _conversation(self, messages: list[dict[str, Any]] | None, text: str | None) -> str:
        """Same id as the call whose answer ends this request's history, else a new one."""
        previous = [m for m in (messages or [])[:-1] if m.get("role") == "assistant"]
        key = _text_key(previous[-1].get("content")) if previous else None
        conversation = self._conversations.get(key) if key else None
        if conversation is None:
            self._count += 1
            conversation = f"{self.session_id}/{self._count}"
        if text:
            self._conversations[_text_key(text)] = conversation
            while len(self._conversations) > 1000:
                self._conversations.popitem(last=False)
        return conversation

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, wal=not self.cassette)
        return self._conn

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` calls in this file (all sessions), oldest first."""
        self.flush()
        return read_calls(self.path, limit)

    def close(self) -> None:
        """Write what is queued, then close the file; a later write reopens it."""
        self._worker.stop()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _text_key(text: Any) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()


def _redacted(value: Any, secrets: list[str]) -> Any:
    return redact(value, secrets) if isinstance(value, str) else value


# --- wiring -------------------------------------------------------------------------------


def open_call_logs(config: Any, session_id: str | None = None) -> list[CallLog]:
    """The session's call log (when enabled) and the MIRAI_RECORD cassette (when set)."""
    settings = config.observability.call_log
    common: dict[str, Any] = {
        "include_prompts": settings.include_prompts,
        "session_id": session_id or new_session_id(),
        "secret_names": tuple(config.security.redact_env_names),
    }
    logs: list[CallLog] = []
    if settings.enabled:
        logs.append(CallLog(main_log_path(config), **common))
    if os.environ.get("MIRAI_RECORD"):
        logs.append(CallLog(os.environ["MIRAI_RECORD"], cassette=True, **common))
    return logs


def attach_call_logs(client: Any, config: Any, previous: list[CallLog]) -> list[CallLog]:
    """Replace ``previous`` logs among the client's observers by fresh ones (config reload)."""
    for item in previous:
        item.close()
        if item in client.observers:
            client.observers.remove(item)
    session_id = previous[0].session_id if previous else None
    logs = open_call_logs(config, session_id)
    client.observers.extend(logs)
    return logs


def main_log_path(config: Any) -> Path:
    """Where the session's call log is (whether or not it is enabled)."""
    from .config import home_dir

    return home_dir(config) / FILE_NAME
