"""The memory's source of truth: one SQLite file (WAL) with entries, cached vectors and files.

* ``entries``: one row per remembered cell or file chunk (redacted text, label, SHA-256 of
  the embedded text, a 63-bit key shared with the vector index, a ``version``, the notebook
  that ran the cell: see ``identity.py``; the tables are in ``tables.py``).
* ``vectors``, ``queries`` and ``failed``: the embedding cache (see ``vectors.py``).
* ``meta``: ``generation`` (bumped by every write transaction; rows touched get it as their
  version, deletions leave a ``tombstones`` row) and ``epoch`` (bumped by forget-all and
  rebuild). A vector index that remembers the generation it has seen catches up with
  writes from other kernels by reading only the rows past it.

Writes take ``BEGIN IMMEDIATE`` (one writer at a time across processes, others wait up to
``busy_timeout``); a kernel killed mid-write leaves the last committed state. A file SQLite
calls corrupt raises ``MemoryCorruptError`` (one line, with what to do).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MemoryCorruptError
from .documents import Doc
from .home import make_home
from .tables import ROW_FIELDS, UPSERT, create
from .vectors import VectorCache, chunks

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
# SQLITE_CORRUPT, SQLITE_NOTADB (sqlite3 names them, and errors carry their code, from Python
# 3.11 on; 3.10 has only the messages SQLite gives them: "database disk image is malformed",
# "malformed database schema (…)", "file is not a database")
_CORRUPT = (11, 26)
_CORRUPT_WORDS = ("malformed", "file is not a database")


class Store:
    """Thread-safe access to ``memory.sqlite`` (one connection, one lock)."""

    def __init__(self, path: Path):
        self.path = path
        make_home(path.parent)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            with self.guard():
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA secure_delete=ON")  # forgotten text is zeroed
            self.write(create, bump=False)
        except BaseException:
            self._db.close()
            raise
        self.vectors = VectorCache(self)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn SQLite's "corrupt" / "not a database" into a MemoryCorruptError."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                raise corrupt(self.path, exc) from None
            raise

    # --- transactions -------------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection, int], T], *, bump: bool = True) -> T:
        """Run ``fn(db, generation)`` in one immediate transaction (generation bumped first)."""
        with self._lock, self.guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gen = self._bump("generation") if bump else 0
                result = fn(self._db, gen)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return result

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self.guard():
            return self._db.execute(sql, params).fetchall()

    def _bump(self, name: str) -> int:
        row = self._db.execute(
            "UPDATE meta SET value = value + 1 WHERE name = ? RETURNING value", (name,)
        ).fetchone()
        return int(row[0])

    def generation(self) -> tuple[int, int]:
        """(generation, epoch) as committed now."""
        rows = dict(self.read("SELECT name, value FROM meta"))
        return int(rows.get("generation", 0)), int(rows.get("epoch", 0))

    # --- entries ----------------------------------------------------------------------

    def upsert(
        self, docs: Sequence[Doc], run: str, drop_sources: Iterable[str] = (), notebook: str = ""
    ) -> None:
        """Insert or update ``docs``; delete ``notebook``'s entries of ``drop_sources``."""
        now = time.time()

        def apply(db: sqlite3.Connection, gen: int) -> None:
            _delete(db, gen, "source", list(drop_sources), notebook)
            db.executemany(UPSERT, [_row(d, run, gen, now) for d in docs])

        self.write(apply)

    def replace_file(self, path: str, sha: str, docs: Sequence[Doc], run: str) -> None:
        """A (re)learned file: chunks no longer present are deleted, the rest upserted."""
        now, keep = time.time(), {d.source_id for d in docs}

        def apply(db: sqlite3.Connection, gen: int) -> None:
            old = [r[0] for r in db.execute("SELECT source FROM entries WHERE file = ?", (path,))]
            _delete(db, gen, "source", [s for s in old if s not in keep], "")
            db.executemany(UPSERT, [_row(d, run, gen, now) for d in docs])
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (path, sha, len(docs), now)
            )

        self.write(apply)

    def file_sha(self, path: str) -> str | None:
        rows = self.read("SELECT sha FROM files WHERE path = ?", (path,))
        return rows[0][0] if rows else None

    def delete_keys(self, keys: Sequence[int]) -> int:
        """Forget entries (and vectors no entry uses any more)."""

        def apply(db: sqlite3.Connection, gen: int) -> int:
            n = _delete(db, gen, "key", list(keys))
            db.execute(
                "DELETE FROM files WHERE path NOT IN (SELECT file FROM entries "
                "WHERE file IS NOT NULL)"
            )
            for table in ("vectors", "failed"):
                db.execute(f"DELETE FROM {table} WHERE sha NOT IN (SELECT sha FROM entries)")
            return n

        n = self.write(apply)
        self.checkpoint()
        return n

    def clear(self) -> int:
        """Forget everything: entries, vectors, files; a new epoch makes every index rebuild."""

        def apply(db: sqlite3.Connection, gen: int) -> int:
            n = db.execute("DELETE FROM entries").rowcount
            for table in ("vectors", "queries", "failed", "files", "tombstones"):
                db.execute(f"DELETE FROM {table}")
            self._bump("epoch")
            return n

        n = self.write(apply)
        self.checkpoint()
        return n

    def checkpoint(self) -> None:
        """Move the WAL into the database file and truncate it (after forgetting)."""
        with self._lock, self.guard():
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def new_epoch(self) -> None:
        self.write(lambda db, gen: self._bump("epoch"))

    def keys_for(self, where: str, params: Sequence[Any]) -> list[int]:
        return [r[0] for r in self.read(f"SELECT key FROM entries WHERE {where}", params)]

    def rows(self, keys: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """Entry rows by key (fields in ROW_FIELDS order)."""
        found: dict[int, tuple[Any, ...]] = {}
        for part in chunks(list(keys)):
            marks = ",".join("?" * len(part))
            sql = f"SELECT {ROW_FIELDS} FROM entries WHERE key IN ({marks})"
            found.update({r[0]: r for r in self.read(sql, part)})
        return found

    def visible_keys(self, notebooks: Sequence[str]) -> list[int]:
        """Keys of the cells of ``notebooks`` and of every learned file chunk."""
        marks = ",".join("?" * len(notebooks))
        sql = f"SELECT key FROM entries WHERE kind = 'file' OR notebook IN ({marks})"
        return [r[0] for r in self.read(sql, list(notebooks))]

    def cells_by_notebook(self) -> dict[str, int]:
        """How many cells each notebook has in the memory ("" for cells without one)."""
        sql = "SELECT notebook, COUNT(*) FROM entries WHERE kind = 'cell' GROUP BY notebook"
        return {name: int(n) for name, n in self.read(sql)}

    def removed_since(self, version: int) -> list[int]:
        return [r[0] for r in self.read("SELECT key FROM tombstones WHERE version > ?", (version,))]

    def counts(self, embedder: str) -> dict[str, int]:
        row = self.read(
            "SELECT COUNT(*), SUM(kind = 'cell'), SUM(kind = 'file'), "
            "(SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM vectors WHERE embedder = ?) "
            "FROM entries",
            (embedder,),
        )[0]
        keys = ("entries", "cells", "chunks", "files", "vectors")
        return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(doc: Doc, run: str, gen: int, now: float) -> dict[str, Any]:
    return {
        "key": doc.key,
        "source": doc.source_id,
        "kind": doc.kind,
        "label": doc.label,
        "count": doc.count,
        "run": run,
        "body": doc.body,
        "output": doc.output,
        "error": int(doc.error),
        "sha": doc.sha,
        "file": doc.file,
        "notebook": doc.notebook,
        "version": gen,
        "updated": now,
    }


def _delete(
    db: sqlite3.Connection, gen: int, column: str, values: list[Any], notebook: str | None = None
) -> int:
    """Delete entries whose ``column`` is in ``values`` (of ``notebook`` only, when given);
    leave tombstones for the indexes."""
    deleted = 0
    only = "" if notebook is None else " AND notebook = ?"
    for part in chunks(values):
        marks = ",".join("?" * len(part))
        params = part if notebook is None else [*part, notebook]
        keys = db.execute(
            f"DELETE FROM entries WHERE {column} IN ({marks}){only} RETURNING key", params
        ).fetchall()
        db.executemany("INSERT INTO tombstones VALUES (?, ?)", [(k, gen) for (k,) in keys])
        deleted += len(keys)
    return deleted


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """True when SQLite calls the file corrupt or not a database."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT
    return any(word in str(exc) for word in _CORRUPT_WORDS)


def corrupt(path: Path, exc: BaseException) -> MemoryCorruptError:
    """The one-line error for an unreadable ``memory.sqlite``."""
    return MemoryCorruptError(f"{_shown(path)} is unreadable ({exc})", path=path)


def move_aside(path: Path, now: Callable[[], float] = time.time) -> Path:
    """Rename an unreadable database (and its -wal/-shm) to ``NAME.corrupt-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now()))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


def _shown(path: Path) -> str:
    """The path as the user knows it (relative to the working directory when inside it)."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel
