"""The vector index kept in step with the store: caught up by generation, rebuilt by epoch.

One instance per kernel. ``sync()`` applies what any process committed since the last sync
(tombstones first, then changed rows); a new epoch (forget all, rebuild) or an unusable
cache file means a full rebuild from SQLite. In HNSW mode the index is saved to
``memory.usearch`` (+ ``.json`` sidecar) under an advisory file lock, so two kernels never
interleave an index file with the other's sidecar.
Past the exact-search threshold, ``GraphBuilder`` builds the HNSW graph on its own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .index import FlatIndex, HnswIndex, StaleCache, remove_stale_temps, sidecar_path
from .store import Store

SAVE_EVERY_S = 30.0
BUILD_NOW_MAX = 5000  # up to this many vectors an HNSW graph is built at once (< ~3 s)


class SyncedIndex:
    """Exact or HNSW search over the vectors of one embedder, mirrored from the store."""

    def __init__(self, store: Store, embedder: str, dims: int, path: Path, threshold: int):
        self.store, self.embedder, self.dims = store, embedder, dims
        self.path, self.threshold = path, threshold
        self.lock = threading.RLock()
        self.backend: FlatIndex | HnswIndex = FlatIndex(dims)
        self.seen, self.epoch = -1, -1
        self.dirty, self.saved_at = False, time.monotonic()
        self.note = "not loaded"
        self.closed = False

    def __len__(self) -> int:
        return len(self.backend)

    # --- loading -------------------------------------------------------------------

    def open(self) -> None:
        """Load the usearch cache when it matches (HNSW mode), else rebuild; then catch up."""
        with self.lock:
            remove_stale_temps(self.path.parent)
            self.store.vectors.drop_malformed(self.embedder, self.dims * 4)
            if self._wants_hnsw(self.store.counts(self.embedder)["vectors"]):
                try:
                    self._load_cache()
                except StaleCache as exc:
                    self.rebuild(f"cache rebuilt: {exc}")
            else:
                self.rebuild("exact search, loaded from SQLite")
            self.sync()

    @property
    def needs_hnsw(self) -> bool:
        """An exact index that has grown past the threshold (``convert()`` builds the graph)."""
        return self.backend.kind == "exact" and self._wants_hnsw(len(self))

    def _wants_hnsw(self, count: int) -> bool:
        return count >= self.threshold

    def _load_cache(self) -> None:
        gen, epoch = self.store.generation()
        expect = {"embedder": self.embedder, "ndim": self.dims, "epoch": epoch}
        with _file_lock(self.path):
            backend, sidecar = HnswIndex.load(self.path, expect)
        if int(sidecar.get("generation", -1)) > gen:
            raise StaleCache("cache is newer than the database")
        self.backend, self.seen, self.epoch = backend, int(sidecar["generation"]), epoch
        self.note = f"HNSW loaded from {self.path.name}"

    def rebuild(self, note: str = "rebuilt from SQLite") -> None:
        """Every vector of this embedder, read from SQLite into a fresh index.

        A large HNSW graph takes a while to build (~1,000 vectors/s on two cores), so above
        BUILD_NOW_MAX the index starts exact and ``convert()`` swaps the graph in later.
        """
        with self.lock:
            gen, epoch = self.store.generation()
            count = self.store.vectors.count(self.embedder)
            hnsw = self._wants_hnsw(count) and count <= BUILD_NOW_MAX
            self.backend = HnswIndex(self.dims) if hnsw else FlatIndex(self.dims, count + 256)
            self._fill(self.backend)
            self.seen, self.epoch, self.note = gen, epoch, note
            self.dirty = hnsw
            if hnsw:
                self.save()

    def _fill(self, backend: FlatIndex | HnswIndex) -> None:
        """Every vector of this embedder from SQLite, one page at a time (a small peak)."""
        for rows in self.store.vectors.pages(self.embedder):
            _upsert(backend, rows, self.dims)

    # --- catching up ---------------------------------------------------------------

    def sync(self) -> None:
        """Apply what was committed since the last sync (by this or any other kernel)."""
        with self.lock:
            gen, epoch = self.store.generation()
            if epoch != self.epoch:
                self.rebuild("rebuilt: memory was cleared or rebuilt elsewhere")
                return
            if gen == self.seen:
                return
            self._apply(self.backend, self.seen)  # raises before ``seen`` moves: retried
            self.seen = gen
            self.dirty = self.dirty or self.backend.kind == "hnsw"

    def _apply(self, backend: FlatIndex | HnswIndex, since: int) -> None:
        """Tombstones first, then rows changed after ``since`` (a row without vector leaves)."""
        removed = self.store.removed_since(since)
        changed = self.store.vectors.since(since, self.embedder)
        backend.remove(removed + [k for k, v in changed if v is None])
        _upsert(backend, [(k, v) for k, v in changed if v is not None], self.dims)

    def convert(self) -> None:
        """Build the HNSW graph from SQLite without holding the lock (searches go on, exact),
        then catch it up and swap it in. Run by ``GraphBuilder``, off the indexing thread."""
        with self.lock:
            if self.closed or not self.needs_hnsw:
                return
            epoch = self.epoch
            since, _ = self.store.generation()
        hnsw = HnswIndex(self.dims)
        self._fill(hnsw)
        with self.lock:
            gen, now_epoch = self.store.generation()
            if self.closed or now_epoch != epoch or self.epoch != epoch:
                return  # closed, cleared or rebuilt meanwhile: the next round starts over
            self._apply(hnsw, since)  # what changed while the graph was being built
            self.backend, self.seen, self.dirty = hnsw, gen, True
            self.note = f"HNSW (past {self.threshold:,} vectors)"
            self.save()

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[list[int], list[float]]:
        """The ``k`` nearest keys (among ``allowed`` ones, when given) and their scores."""
        with self.lock:
            self.sync()
            return self.backend.search(query, k, allowed)

    # --- the cache file ----------------------------------------------------------------

    def maybe_save(self) -> None:
        if self.dirty and time.monotonic() - self.saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write the HNSW cache (a no-op in exact mode: SQLite reloads faster than a graph)."""
        with self.lock:
            if self.closed or not isinstance(self.backend, HnswIndex) or not self.dirty:
                return
            meta = {"embedder": self.embedder, "generation": self.seen, "epoch": self.epoch}
            with _file_lock(self.path):
                self.backend.save(self.path, meta)
            self.dirty, self.saved_at = False, time.monotonic()

    def close(self) -> None:
        """No more swaps or saves (a graph still being built is dropped when it finishes)."""
        with self.lock:
            self.closed = True

    def drop_cache(self) -> None:
        with _file_lock(self.path):
            for path in (self.path, sidecar_path(self.path)):
                path.unlink(missing_ok=True)

    def describe(self) -> str:
        kind = "exact (numpy, in memory)" if self.backend.kind == "exact" else "HNSW (usearch)"
        return f"{kind}, {len(self):,} vectors · {self.note}"

    @property
    def nbytes(self) -> int:
        return self.backend.nbytes


class GraphBuilder:
    """Runs ``index.convert()`` on its own thread, one build at a time.

    Building a graph of 50k+ vectors takes tens of seconds; indexing rounds (and with them
    ``flush()``, which a `%%mirai` cell waits on) go on meanwhile. ``spawn`` starts a job.
    """

    def __init__(self, on_error: Callable[[BaseException], None], spawn: Any = None):
        self.on_error = on_error
        self.spawn: Callable[[Callable[[], None]], Any] = spawn or _daemon_thread
        self._lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def start(self, index: SyncedIndex) -> None:
        """Start a build when the exact index has outgrown the threshold and none runs."""
        with self._lock:
            if not self.idle.is_set() or not index.needs_hnsw:
                return
            self.idle.clear()
        self.spawn(lambda: self._run(index))

    def _run(self, index: SyncedIndex) -> None:
        try:
            index.convert()
        except Exception as exc:  # a background job must not die silently: shown in stats
            if not index.closed:  # a closed index's store is closed too: nothing to report
                self.on_error(exc)
        finally:
            self.idle.set()

    def wait(self, timeout: float) -> bool:
        """Wait for a build in progress; False when ``timeout`` ran out first."""
        return self.idle.wait(timeout)


def _daemon_thread(job: Callable[[], None]) -> None:
    threading.Thread(target=job, name="mirai-memory-graph", daemon=True).start()


def _upsert(backend: FlatIndex | HnswIndex, rows: list[tuple[int, bytes]], dims: int) -> None:
    keys, matrix = _matrix(rows, dims)
    if len(keys):
        backend.upsert(keys, matrix)


def _matrix(rows: Iterable[tuple[int, bytes]], dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and float32 rows of (key, blob) pairs; blobs of the wrong size are left out."""
    good = [(k, v) for k, v in rows if len(v) == dims * 4]
    keys = np.fromiter((k for k, _ in good), dtype=np.int64, count=len(good))
    if not good:
        return keys, np.empty((0, dims), dtype=np.float32)
    blob = b"".join(v for _, v in good)
    return keys, np.frombuffer(blob, dtype=np.float32).reshape(len(good), dims)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[Any]:
    """An advisory lock beside the index file (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    with open(path.with_name(path.name + ".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
