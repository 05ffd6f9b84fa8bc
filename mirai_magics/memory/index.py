"""Vector search: exact (numpy, below the threshold) or HNSW (usearch, above it).

Vectors are unit length, so cosine similarity is a dot product. The exact index is a
growing float32 matrix searched with one BLAS matrix-vector product (faster than usearch's
brute force at 50k × 256 on the CI machines: see benchmarks/bench_memory.py). The HNSW index
is a usearch ``Index`` (cosine, dtype passed explicitly, never a view) saved to
``memory.usearch`` with a JSON sidecar; SQLite stays the source of truth either way.

A search may be limited to ``allowed`` keys (a sorted int64 array: the cells of one
notebook and the learned files): the exact index masks its scores, HNSW reads the allowed
vectors back (``Index.get``) and ranks them exactly while they are few, else widens its
approximate search until enough allowed keys come back.

usearch facts honoured here: adding an existing key raises (so remove first), a batch add
is not atomic (``upsert`` removes the keys it re-adds first; when the add fails, the caller's
``sync()`` has not moved past that batch and applies it again from SQLite next time), key
2^64 − 1 is reserved (keys are 63-bit).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HNSW_DTYPE = "f16"  # half the memory of f32; cosine ranks are unchanged at these dims
HNSW_METRIC = "cos"
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 256  # recall over speed
CACHE_FORMAT = 1
AMONG_EXACT_MAX = 20_000  # HNSW: up to this many allowed keys are ranked exactly


class FlatIndex:
    """Exact cosine search over an in-memory matrix; O(1) amortised add and remove."""

    kind = "exact"

    def __init__(self, dims: int, capacity: int = 0):
        self.dims = dims
        self._keys = np.empty(capacity, dtype=np.int64)
        self._vecs = np.empty((capacity, dims), dtype=np.float32)
        self._n = 0
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return self._n

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        last = {key: i for i, key in enumerate(keys.tolist())}  # a repeated key: last wins
        rows, new = [], []
        for key, i in last.items():
            row = self._row.get(key)
            if row is None:
                new.append((key, i))
            else:
                rows.append((row, i))
        if rows:
            self._vecs[[r for r, _ in rows]] = vectors[[i for _, i in rows]]
        if new:
            start = self._reserve(len(new))
            self._keys[start : start + len(new)] = [k for k, _ in new]
            self._vecs[start : start + len(new)] = vectors[[i for _, i in new]]
            self._row.update((k, start + j) for j, (k, _) in enumerate(new))

    def _reserve(self, n: int) -> int:
        """Room for ``n`` more rows at the end; returns the first new row."""
        if self._n + n > len(self._keys):
            cap = max(256, 2 * len(self._keys), self._n + n)
            self._keys = np.resize(self._keys, cap)
            vecs = np.empty((cap, self.dims), dtype=np.float32)
            vecs[: self._n] = self._vecs[: self._n]
            self._vecs = vecs
        self._n += n
        return self._n - n

    def remove(self, keys: list[int]) -> None:
        for key in keys:
            row = self._row.pop(key, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:  # move the last row into the hole
                moved = int(self._keys[last])
                self._keys[row], self._vecs[row] = moved, self._vecs[last]
                self._row[moved] = row
            self._n = last

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[list[int], list[float]]:
        if self._n == 0 or k <= 0:
            return [], []
        scores = self._vecs[: self._n] @ query
        rows = np.arange(self._n)
        if allowed is not None:
            rows = rows[np.isin(self._keys[: self._n], allowed)]
        return _top(self._keys[rows], scores[rows], k)

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._vecs.nbytes)


class HnswIndex:
    """usearch HNSW (approximate) for large memories."""

    kind = "hnsw"

    def __init__(self, dims: int, index: Any = None):
        self.dims = dims
        self._index = index or _new_index(dims)

    def __len__(self) -> int:
        return len(self._index)

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys = keys.astype(np.uint64)
        present = np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)
        if present.any():
            self._index.remove(keys[present])
        self._index.add(keys, vectors.astype(np.float32, copy=False), threads=0)

    def remove(self, keys: list[int]) -> None:
        if keys:
            self._index.remove(np.asarray(keys, dtype=np.uint64))

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[list[int], list[float]]:
        if len(self._index) == 0 or k <= 0:
            return [], []
        if allowed is not None and len(allowed) <= AMONG_EXACT_MAX:
            return self._among(query, k, allowed)
        wanted = k
        while True:  # widen until k allowed keys came back (or the whole index was searched)
            keys, scores = self._approximate(query, wanted)
            if allowed is None:
                return keys, scores
            mask = np.isin(np.asarray(keys, dtype=np.int64), allowed)
            if mask.sum() >= k or wanted >= len(self._index):
                return _top(np.asarray(keys)[mask], np.asarray(scores)[mask], k)
            wanted *= 4

    def _approximate(self, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        matches = self._index.search(query.astype(np.float32), min(k, len(self._index)))
        keys = [int(x) for x in matches.keys]
        return keys, [1.0 - float(d) for d in matches.distances]

    def _among(
        self, query: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[list[int], list[float]]:
        """Exact cosine ranking of the allowed keys' stored vectors."""
        keys = allowed.astype(np.uint64)
        keys = keys[np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)]
        if not len(keys):
            return [], []
        vectors = np.stack(self._index.get(keys, dtype=np.float32))
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        return _top(keys.astype(np.int64), (vectors @ query) / norms, k)

    @property
    def nbytes(self) -> int:
        return int(self._index.memory_usage)

    # --- the cache file ------------------------------------------------------------

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Write via a temp file + os.replace, then the sidecar the same way."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            self._index.save(str(tmp))
            data = tmp.read_bytes()
            sidecar = {**meta, **self.describe(), "bytes": len(data), "crc32": zlib.crc32(data)}
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_atomic(sidecar_path(path), json.dumps(sidecar, indent=1))

    def describe(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "ndim": self.dims,
            "metric": HNSW_METRIC,
            "dtype": HNSW_DTYPE,
            "count": len(self._index),
        }

    @classmethod
    def load(cls, path: Path, expect: dict[str, Any]) -> tuple[HnswIndex, dict[str, Any]]:
        """The cached index when its sidecar matches ``expect`` and its bytes check out.

        Raises ``StaleCache`` otherwise (the caller rebuilds from SQLite).
        """
        try:
            sidecar = json.loads(sidecar_path(path).read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise StaleCache(f"unreadable cache ({exc.__class__.__name__})") from None
        wanted = {"format": CACHE_FORMAT, "metric": HNSW_METRIC, "dtype": HNSW_DTYPE, **expect}
        for name, value in wanted.items():
            if sidecar.get(name) != value:
                raise StaleCache(f"{name} changed ({sidecar.get(name)!r} → {value!r})")
        if len(data) != sidecar.get("bytes") or zlib.crc32(data) != sidecar.get("crc32"):
            raise StaleCache("index file does not match its sidecar (corrupt or replaced)")
        index = _new_index(expect["ndim"])
        try:
            index.load(str(path))
        except (RuntimeError, ValueError) as exc:
            raise StaleCache(f"usearch could not load it ({exc})") from None
        # the file keeps the graph, not the search/add breadth: set them again (recall)
        index.expansion_add, index.expansion_search = EXPANSION_ADD, EXPANSION_SEARCH
        if len(index) != sidecar.get("count") or index.ndim != expect["ndim"]:
            raise StaleCache("entry count differs from the sidecar")
        return cls(expect["ndim"], index), sidecar


def _top(keys: np.ndarray, scores: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The ``k`` best (key, score) pairs, best first."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return [], []
    top = np.argpartition(scores, n - k)[-k:] if k < n else np.arange(n)
    top = top[np.argsort(-scores[top], kind="stable")]
    return keys[top].astype(np.int64).tolist(), scores[top].astype(np.float64).tolist()


def _new_index(dims: int) -> Any:
    from usearch.index import Index

    return Index(
        ndim=dims,
        metric=HNSW_METRIC,
        dtype=HNSW_DTYPE,
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
        expansion_search=EXPANSION_SEARCH,
    )


class StaleCache(Exception):
    """The usearch cache file cannot be used as is; rebuild it from SQLite."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(directory: Path) -> None:
    """Temp files left by a process that died mid-save (its pid is gone)."""
    for tmp in directory.glob("memory.usearch*.tmp"):
        pid = tmp.suffixes[-2].lstrip(".") if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
