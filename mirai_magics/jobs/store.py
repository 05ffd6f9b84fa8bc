"""The job store: background cells and batch items in SQLite (WAL), one row per item.

Each result is committed the moment it arrives (a WAL commit with ``synchronous=NORMAL``
survives a SIGKILL of the kernel), so a kernel restart loses nothing that finished, and
``pending`` tells a resume exactly what is left. An item's result is written once: the
update only matches a row still pending, so a retried or re-delivered call (a worker that
died after sending) cannot store a second answer. Prompts are stored redacted.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..calllog_rows import redacted
from ..errors import JobError
from ..memory.home import make_home
from ..redact import redact_all

BUSY_TIMEOUT_MS = 5000
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- cell | batch
    state TEXT NOT NULL,           -- queued | running | done | failed | cancelled
    profile TEXT NOT NULL,
    backend TEXT NOT NULL,         -- inprocess | arq
    created REAL NOT NULL,
    updated REAL NOT NULL,
    total INTEGER NOT NULL,
    label TEXT NOT NULL,           -- the prompt's first words (or the template)
    options TEXT NOT NULL,         -- JSON: format, overrides, input kind and index
    owner TEXT NOT NULL,           -- the process running it (pid:token)
    error TEXT
);
CREATE TABLE IF NOT EXISTS items (
    job TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
    payload TEXT NOT NULL,         -- JSON: the messages to send (redacted)
    text TEXT,
    data TEXT,                     -- JSON: the parsed answer (format json)
    error TEXT,
    error_code TEXT,
    record TEXT,                   -- JSON: the CallRecord (profile, model, tokens, attempts…)
    attempts INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    finished REAL,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS items_pending ON items(job, state);
"""
OWNER = f"{os.getpid()}:{secrets.token_hex(4)}"  # this process, this import
FINISHED = ("done", "failed", "cancelled")


@dataclass
class JobRow:
    """One job as `%mirai jobs` lists it."""

    id: str
    kind: str
    state: str
    profile: str
    backend: str
    created: float
    updated: float
    total: int
    label: str
    options: dict[str, Any]
    owner: str
    error: str | None
    done: int = 0
    failed: int = 0
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def settled(self) -> int:
        return self.done + self.failed

    @property
    def orphaned(self) -> bool:
        """Unfinished, and the process that ran it is gone (a restarted kernel)."""
        return not self.finished and self.owner != OWNER


class JobStore:
    """``jobs.sqlite`` under the memory dir; safe to use from any thread (one lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        make_home(self.path.parent)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(SCHEMA)

    # --- writing ---------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        profile: str,
        payloads: list[dict[str, Any]],
        *,
        backend: str = "inprocess",
        label: str = "",
        options: dict[str, Any] | None = None,
    ) -> str:
        """A new job with one pending item per payload, in one transaction; its id."""
        job_id = kind[0] + secrets.token_hex(3)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, profile, backend, created, updated, total,"
                " label, options, owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind,
                    profile,
                    backend,
                    now,
                    now,
                    len(payloads),
                    redact_all(label),
                    json.dumps(options or {}),
                    OWNER,
                ),
            )
            self._db.executemany(
                "INSERT INTO items (job, idx, payload) VALUES (?, ?, ?)",
                [(job_id, i, _json(stored(p))) for i, p in enumerate(payloads)],
            )
        return job_id

    def store_result(self, job_id: str, index: int, result: dict[str, Any]) -> bool:
        """Commit one item's result now; False when it already had one (stored once)."""
        record = result.get("record") or {}
        with self._lock:
            cursor = self._db.execute(
                "UPDATE items SET state = ?, text = ?, data = ?, error = ?, error_code = ?,"
                " record = ?, attempts = ?, tokens_in = ?, tokens_out = ?, finished = ?"
                " WHERE job = ? AND idx = ? AND state = 'pending'",
                (
                    "failed" if result.get("error") else "done",
                    _redacted(result.get("text")),
                    _json_redacted(result.get("data")),
                    _redacted(result.get("error")),
                    result.get("error_code"),
                    json.dumps(redacted(record), default=str),
                    int(record.get("attempts") or 0),
                    int(record.get("tokens_in") or 0),
                    int(record.get("tokens_out") or 0),
                    time.time(),
                    job_id,
                    index,
                ),
            )
            return cursor.rowcount == 1

    def set_state(self, job_id: str, state: str, error: str | None = None) -> None:
        """Move a job to ``state`` (taking it over: its owner becomes this process)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated = ?, owner = ? WHERE id = ?",
                (state, error, time.time(), OWNER, job_id),
            )

    def cancel_pending(self, job_id: str, reason: str = "cancelled") -> int:
        """Mark the items still pending as failed with ``reason``; how many."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE items SET state = 'failed', error = ?, error_code = 'cancelled',"
                " finished = ? WHERE job = ? AND state = 'pending'",
                (reason, time.time(), job_id),
            )
            return cursor.rowcount

    # --- reading -----------------------------------------------------------------------

    def job(self, job_id: str) -> JobRow:
        """One job with its counts; JobError naming the known ids when there is none."""
        rows = self._jobs("WHERE j.id = ?", (job_id,))
        if not rows:
            known = ", ".join(r.id for r in self.jobs(limit=5)) or "none yet"
            raise JobError(f"no job {job_id!r} in {self.path} (recent: {known})")
        return rows[0]

    def jobs(self, limit: int = 20) -> list[JobRow]:
        """The most recent jobs first."""
        return self._jobs("ORDER BY j.created DESC LIMIT ?", (limit,))

    def latest(self, kind: str | None = None) -> JobRow | None:
        rows = [r for r in self.jobs(limit=50) if kind is None or r.kind == kind]
        return rows[0] if rows else None

    def _jobs(self, tail: str, args: tuple[Any, ...]) -> list[JobRow]:
        query = (
            "SELECT j.*, "
            " (SELECT COUNT(*) FROM items i WHERE i.job = j.id AND i.state = 'done') AS done,"
            " (SELECT COUNT(*) FROM items i WHERE i.job = j.id AND i.state = 'failed') AS failed,"
            " (SELECT COALESCE(SUM(attempts), 0) FROM items i WHERE i.job = j.id) AS attempts,"
            " (SELECT COALESCE(SUM(tokens_in), 0) FROM items i WHERE i.job = j.id) AS tokens_in,"
            " (SELECT COALESCE(SUM(tokens_out), 0) FROM items i WHERE i.job = j.id)"
            " AS tokens_out FROM jobs j " + tail
        )
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        out = []
        for row in rows:
            values = dict(row)
            values["options"] = json.loads(values["options"] or "{}")
            out.append(JobRow(**values))
        return out

    def pending(self, job_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Items without a result: (index, payload), in input order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, payload FROM items WHERE job = ? AND state = 'pending' ORDER BY idx",
                (job_id,),
            ).fetchall()
        return [(row["idx"], json.loads(row["payload"])) for row in rows]

    def results(self, job_id: str) -> list[dict[str, Any] | None]:
        """Every item's stored result in input order (None: not finished yet)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, state, text, data, error, error_code, record FROM items"
                " WHERE job = ? ORDER BY idx",
                (job_id,),
            ).fetchall()
        out: list[dict[str, Any] | None] = []
        for row in rows:
            if row["state"] == "pending":
                out.append(None)
                continue
            out.append(
                {
                    "text": row["text"],
                    "data": json.loads(row["data"]) if row["data"] is not None else None,
                    "error": row["error"],
                    "error_code": row["error_code"],
                    "record": json.loads(row["record"]) if row["record"] else None,
                }
            )
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def stored(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as written to disk: every message's text redacted (secrets the user
    interpolated were sent as asked, but never stored). A resume after a restart sends this."""
    messages = [{**m, "content": _content(m.get("content"))} for m in payload.get("messages", [])]
    return {**payload, "messages": messages}


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return redact_all(content)
    if isinstance(content, list):  # content parts: redact the text ones
        texts = [isinstance(part.get("text"), str) for part in content]
        return [
            {**part, "text": redact_all(part["text"])} if text else part
            for part, text in zip(content, texts, strict=True)
        ]
    return content


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)


def _json_redacted(data: Any) -> str | None:
    """A parsed JSON answer as stored: every string in it redacted."""
    return None if data is None else json.dumps(redacted(data), ensure_ascii=False)


def _redacted(text: str | None) -> str | None:
    return redact_all(text) if text else text
