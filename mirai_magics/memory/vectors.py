"""The embedding cache inside ``memory.sqlite``: cached vectors and texts the embedder refused.

* ``vectors``: keyed by (SHA-256 of the text, embedder name), so an unchanged cell is never
  embedded twice, across restarts, kernels and notebooks.
* ``queries``: the same for the texts searched for (a search, a prompt's retrieval), so an
  unchanged notebook re-run in a new kernel makes no embedding request at all; the
  QUERY_KEEP stored last are kept.
* ``failed``: texts the endpoint rejected on their own (HTTP 400 for that one input); they
  are not sent again until `%mirai memory rebuild` (or `forget`) clears them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

_CHUNK = 500  # SQLite host-parameter batches
QUERY_KEEP = 5000  # query vectors kept per store (least recently used go first)
_NO_VECTOR = (
    "NOT EXISTS (SELECT 1 FROM vectors v WHERE v.sha = e.sha AND v.embedder = :embedder) "
    "AND NOT EXISTS (SELECT 1 FROM failed f WHERE f.sha = e.sha AND f.embedder = :embedder)"
)


class VectorCache:
    """Queries on the ``vectors`` and ``failed`` tables of a ``Store``."""

    def __init__(self, store: Any):
        self.store = store

    def cached(self, shas: Sequence[str], embedder: str, table: str = "vectors") -> set[str]:
        """The SHAs that have a vector from ``embedder`` (or, ``table="failed"``, a refusal)."""
        have: set[str] = set()
        for part in chunks(list(shas)):
            marks = ",".join("?" * len(part))
            sql = f"SELECT sha FROM {table} WHERE embedder = ? AND sha IN ({marks})"
            have.update(r[0] for r in self.store.read(sql, [embedder, *part]))
        return have

    def put(self, shas: Sequence[str], blobs: Sequence[bytes], embedder: str) -> None:
        """Cache vectors; entries using them get a new version so indexes pick them up."""

        def apply(db: sqlite3.Connection, gen: int) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)",
                [(s, embedder, b) for s, b in zip(shas, blobs, strict=True)],
            )
            db.executemany("UPDATE entries SET version = ? WHERE sha = ?", [(gen, s) for s in shas])

        self.store.write(apply)

    def put_failures(self, reasons: dict[str, str], embedder: str) -> None:
        """Remember texts the endpoint refused, so they are not sent again and again."""
        now = time.time()
        rows = [(sha, embedder, reason[:300], now) for sha, reason in reasons.items()]
        sql = "INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?)"
        self.store.write(lambda db, gen: db.executemany(sql, rows))

    def clear_failures(self) -> None:
        self.store.write(lambda db, gen: db.execute("DELETE FROM failed"), bump=False)

    def failures(self, embedder: str) -> tuple[int, str]:
        """(entries whose text was refused, the latest reason)."""
        count = self.store.read(
            "SELECT COUNT(*) FROM entries e JOIN failed f ON f.sha = e.sha AND f.embedder = ?",
            (embedder,),
        )[0][0]
        last = self.store.read(
            "SELECT reason FROM failed WHERE embedder = ? ORDER BY at DESC LIMIT 1", (embedder,)
        )
        return int(count), (last[0][0] if last else "")

    def missing(
        self, embedder: str, limit: int, notebooks: Sequence[str] | None = None
    ) -> list[tuple[str, str, str]]:
        """(sha, body, output) of entries with no vector (nor refusal) from ``embedder``;
        with ``notebooks``, only their cells and learned files (another notebook's cells
        are its kernel's to embed, maybe with another embedder)."""
        where, params = _in_scope(notebooks)
        return self.store.read(
            f"SELECT sha, body, output FROM entries e WHERE {_NO_VECTOR}{where} "
            "GROUP BY sha LIMIT :limit",
            {"embedder": embedder, "limit": limit, **params},
        )

    def pending_count(self, embedder: str, notebooks: Sequence[str] | None = None) -> int:
        """Entries still waiting for a vector from ``embedder`` (not searchable yet)."""
        where, params = _in_scope(notebooks)
        sql = f"SELECT COUNT(*) FROM entries e WHERE {_NO_VECTOR}{where}"
        return int(self.store.read(sql, {"embedder": embedder, **params})[0][0])

    # --- query vectors ----------------------------------------------------------------

    def query(self, sha: str, embedder: str) -> bytes | None:
        """The cached vector of a searched text (or of an entry with the same text)."""
        rows = self.store.read(
            "SELECT vector FROM vectors WHERE sha = :sha AND embedder = :e UNION ALL "
            "SELECT vector FROM queries WHERE sha = :sha AND embedder = :e LIMIT 1",
            {"sha": sha, "e": embedder},
        )
        return rows[0][0] if rows else None

    def put_query(self, sha: str, blob: bytes, embedder: str) -> None:
        """Cache a searched text's vector; beyond QUERY_KEEP the oldest ones go."""

        def apply(db: sqlite3.Connection, gen: int) -> None:
            row = (sha, embedder, blob, time.time())
            db.execute("INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?)", row)
            db.execute(
                "DELETE FROM queries WHERE used < "
                "(SELECT used FROM queries ORDER BY used DESC LIMIT 1 OFFSET ?)",
                (QUERY_KEEP - 1,),
            )

        self.store.write(apply, bump=False)

    def since(self, version: int, embedder: str) -> list[tuple[int, bytes | None]]:
        """(key, vector or None) of entries written after ``version`` (-1: all entries)."""
        return self.store.read(
            "SELECT e.key, v.vector FROM entries e LEFT JOIN vectors v "
            "ON v.sha = e.sha AND v.embedder = ? WHERE e.version > ?",
            (embedder, version),
        )

    def count(self, embedder: str) -> int:
        """Entries that have a vector from ``embedder``."""
        return int(
            self.store.read(
                "SELECT COUNT(*) FROM entries e JOIN vectors v ON v.sha = e.sha AND v.embedder = ?",
                (embedder,),
            )[0][0]
        )

    def pages(self, embedder: str, size: int = 10_000) -> Iterator[list[tuple[int, bytes]]]:
        """Every (key, vector) of ``embedder``, ``size`` rows at a time, by key.

        The store's lock is held for one page only, so indexing and searches go on while a
        large index is read; rows written meanwhile are caught up by ``sync()``.
        """
        last = -1
        while rows := self.store.read(
            "SELECT e.key, v.vector FROM entries e JOIN vectors v "
            "ON v.sha = e.sha AND v.embedder = ? WHERE e.key > ? ORDER BY e.key LIMIT ?",
            (embedder, last, size),
        ):
            yield rows
            last = rows[-1][0]

    def drop_malformed(self, embedder: str, nbytes: int) -> int:
        """Delete cached vectors of the wrong size (written by an endpoint that ignored
        ``dimensions``); their entries become pending and are embedded again."""

        def apply(db: sqlite3.Connection, gen: int) -> int:
            sql = "DELETE FROM {} WHERE embedder = ? AND length(vector) != ?"
            db.execute(sql.format("queries"), (embedder, nbytes))
            return db.execute(sql.format("vectors"), (embedder, nbytes)).rowcount

        return self.store.write(apply, bump=False)


def _in_scope(notebooks: Sequence[str] | None) -> tuple[str, dict[str, str]]:
    """The SQL condition (and its parameters) for entries visible to ``notebooks``."""
    if notebooks is None:
        return "", {}
    names = {f"nb{i}": name for i, name in enumerate(notebooks)}
    marks = ", ".join(f":{name}" for name in names)
    return f" AND (e.kind = 'file' OR e.notebook IN ({marks}))", names


def chunks(values: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]
