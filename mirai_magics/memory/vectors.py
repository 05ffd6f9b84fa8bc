"""The embedding cache inside ``memory.sqlite``: cached vectors and texts the embedder refused.

* ``vectors``: keyed by (SHA-256 of the text, embedder name), so an unchanged cell is never
  embedded twice, across restarts and kernels.
* ``failed``: texts the endpoint rejected on their own (HTTP 400 for that one input); they
  are not sent again until `%mirai memory rebuild` (or `forget`) clears them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

_CHUNK = 500  # SQLite host-parameter batches
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

    def missing(self, embedder: str, limit: int) -> list[tuple[str, str, str]]:
        """(sha, body, output) of entries with no vector (nor refusal) from ``embedder``."""
        return self.store.read(
            f"SELECT sha, body, output FROM entries e WHERE {_NO_VECTOR} GROUP BY sha LIMIT :limit",
            {"embedder": embedder, "limit": limit},
        )

    def pending_count(self, embedder: str) -> int:
        """Entries still waiting for a vector from ``embedder`` (not searchable yet)."""
        sql = f"SELECT COUNT(*) FROM entries e WHERE {_NO_VECTOR}"
        return int(self.store.read(sql, {"embedder": embedder})[0][0])

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
        return self.store.write(
            lambda db, gen: (
                db.execute(
                    "DELETE FROM vectors WHERE embedder = ? AND length(vector) != ?",
                    (embedder, nbytes),
                ).rowcount
            ),
            bump=False,
        )


def chunks(values: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]
