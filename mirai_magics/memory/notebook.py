"""NotebookMemory: the session's memory of executed cells (index, search, prompt context).

Cheap to create (nothing is opened until the first cell is indexed or a search runs).
Files live in ``home_dir(config)``: ``memory.sqlite`` (the truth) and, above the exact
search threshold, ``memory.usearch`` + ``memory.usearch.json`` (a rebuildable cache). Cells
belong to the notebook that ran them (``identity.py``); searching is in ``search.py``,
administration (forget, rebuild, stats) in ``admin.py``, learning files in ``learn.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MiraiError
from ..redact import redact
from ..text import clip
from .counters import CACHE_HITS, SEARCHES, Counters, MetricsSink
from .documents import CellEvent, error_line, source_id
from .identity import own_identities
from .indexer import Indexer, index_wait_s
from .jobs import BACKFILL, Backfill


@dataclass
class MemoryState:
    """What opening the memory produced: the store, the embedder and the vector index."""

    home: Path
    store: Any
    embedder: Any
    index: Any
    notebook: str  # this kernel's notebook identity (identity.py)


class NotebookMemory:
    """Indexes executed cells in the background and finds the ones relevant to a prompt.

    ``metrics`` (say the session's ``Telemetry``) receives the memory's counts; it may also
    be attached later: ``memory.counters.attach(telemetry)``.
    """

    def __init__(self, session: Any, metrics: MetricsSink | None = None):
        from .synced import GraphBuilder

        self.session = session
        self.run = uuid.uuid4().hex[:12]  # this kernel's run: `forget N` means its In[N]
        self.current_cell: tuple[str | None, str] | None = None  # set by pre_run_cell
        self.counters = Counters(metrics)
        self.misses = 0
        self.last_error: str | None = None
        self.retry_pending = False  # after a failed embedding round, the next round retries
        self.indexer = Indexer(self)
        self.graph = GraphBuilder(self.note_error)  # the HNSW graph, built off the indexer
        self._state: MemoryState | None = None
        self._open_lock = threading.Lock()
        self._searcher: Any = None  # search.Searcher, made on the first search
        session.status_sources.append(self.status_rows)

    @property
    def settings(self) -> Any:
        """``context.rag``: the memory's settings."""
        return self.session.config.context.rag

    def scope_of(self, notebook: str) -> tuple[str, ...] | None:
        """The notebooks whose entries this kernel indexes and finds (None: all of them)."""
        return None if self.settings.scope == "folder" else own_identities(notebook)

    @property
    def hits(self) -> int:
        """Embeddings reused from the content-hash cache in this session."""
        return self.counters.totals[CACHE_HITS]

    # --- indexing (kernel thread: cheap) ---------------------------------------------

    def add_cell(
        self,
        source: str,
        *,
        cell_id: str | None = None,
        count: int | None = None,
        output: str = "",
        error: BaseException | str | None = None,
    ) -> None:
        """Queue an executed cell for indexing; returns at once (embedding runs later)."""
        if isinstance(error, BaseException):
            error = error_line(error)
        if self.settings.enabled:
            self.indexer.put(CellEvent(source, cell_id, count, output, error))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for queued cells to be stored, embedded and searchable (not for a graph
        build, which runs on its own: ``graph.wait()``)."""
        return self.indexer.flush(timeout)

    # --- opening ------------------------------------------------------------------------

    def state(self) -> MemoryState:
        """Open the store and the index on first use (from any thread but the engine's)."""
        with self._open_lock:
            if self._state is None:
                self._state = self._open()
            return self._state

    def _open(self) -> MemoryState:
        from ..config import home_dir
        from .embedders import choose_embedder
        from .identity import notebook_identity
        from .store import Store
        from .synced import SyncedIndex

        config = self.session.config
        home = home_dir(config)
        embedder = choose_embedder(config, self.session.endpoint.offline)
        notebook = notebook_identity()
        store = Store(home / "memory.sqlite")
        try:
            path = home / "memory.usearch"
            index = SyncedIndex(
                store, embedder.name, embedder.dims, path, config.context.rag.exact_search_below
            )
            index.open()
            if store.vectors.missing(embedder.name, 1, self.scope_of(notebook)):
                self.indexer.put(BACKFILL)  # a round that embeds what is missing
        except BaseException:
            store.close()
            raise
        self.graph.start(index)  # no-op unless the exact index is past the threshold
        atexit.register(self._save_at_exit)  # a clean kernel exit keeps the usearch cache current
        return MemoryState(home, store, embedder, index, notebook)

    def discard_state(self) -> MemoryState | None:
        """Close the open store and index (the next ``state()`` opens them again)."""
        with self._open_lock:
            old, self._state = self._state, None
        if old is not None:
            old.index.close()
            old.store.close()
        if self._searcher is not None:
            self._searcher.clear()
        return old

    def note_error(self, exc: BaseException) -> None:
        self.retry_pending = True
        self.last_error = redact(f"{type(exc).__name__}: {exc}", self._secrets())[:300]

    def _secrets(self) -> list[str]:
        from ..redact import secret_env_values

        return secret_env_values(tuple(self.session.config.security.redact_env_names))

    # --- search -----------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int | None = None,
        *,
        min_score: float | None = None,
        exclude: Iterable[str] = (),
        everywhere: bool = False,
    ) -> list[Any]:
        """The ``k`` entries most similar to ``query`` (best first) as ``Hit`` objects: this
        notebook's cells and the learned files, or with folder scope or ``everywhere`` every
        notebook's (their cells labelled with the notebook's name)."""
        k = self.settings.top_k if k is None else k
        if k <= 0:
            return []
        return self.searcher.search(query, k, min_score, exclude, everywhere)

    @property
    def searcher(self) -> Any:
        if self._searcher is None:
            from .search import Searcher

            self._searcher = Searcher(self)
        return self._searcher

    def prompt_context(self, text: str, top_k: int | None) -> tuple[str, list[str]]:
        """The memory block for a prompt and the badge flags; failures become a flag."""
        from ..telemetry.tracing import span
        from .context import context_block

        k = self.settings.top_k if top_k is None else top_k
        if k <= 0:
            return "", []
        try:
            with span("mirai.memory.search", **{"mirai.memory.k": k}) as current:
                waited = index_wait_s()
                indexed = self.flush(waited)
                hits = self.search(
                    text, k, min_score=self.settings.min_score, exclude=self.current_sources()
                )
                self.counters.add(SEARCHES)
                block, used = context_block(hits, self.settings.max_tokens)
                current.set_attribute("mirai.memory.hits", used)
        except Exception as exc:  # memory must never break a call: it becomes a badge flag
            return "", [f"memory unavailable: {_short(exc)}"]
        flags = [f"memory: {used} cell{'s' if used != 1 else ''}"] if used else []
        if not indexed:  # said, not silent: the answer may lack a cell run a moment ago
            flags.append(f"memory: earlier cells still indexing (waited {waited:g} s)")
        return block, flags

    def current_sources(self) -> set[str]:
        """Source ids of the cell being run (never retrieved as its own context)."""
        if self.current_cell is None:
            return set()
        cell_id, raw = self.current_cell
        body = redact(raw.strip("\n"), self._secrets())
        return {source_id(body, cell_id), source_id(body, None)}

    # --- administration (admin.py, learn.py) ---------------------------------------------

    def forget(self, target: str) -> str:
        """Forget ``all`` or the cells run as In[N]; returns the line to show."""
        from .admin import forget

        return forget(self, target)

    def rebuild(self) -> str:
        from .admin import rebuild

        return rebuild(self)

    def learn(self, pattern: str, progress: Callable[[int, int], None]) -> Any:
        from .learn import learn_files

        return learn_files(self, pattern, progress)

    def stats(self) -> list[tuple[str, str]]:
        from .admin import stats_rows

        return stats_rows(self)

    def status_rows(self) -> list[tuple[str, str]]:
        """One row for `%mirai status` (does not open the memory)."""
        if not self.settings.enabled:
            return [("memory", "disabled")]
        if self._state is None:
            return [("memory", f"not loaded yet ({self.indexer.pending()} queued)")]
        st = self._state
        return [("memory", f"{len(st.index):,} vectors · {st.embedder.name}")]

    # --- closing -------------------------------------------------------------------------

    def save(self) -> None:
        """Write the usearch cache now (HNSW mode); SQLite is always current."""
        if self._state is not None:
            self._state.index.save()

    def _save_at_exit(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, MiraiError):  # rebuilt on the next start
            self.save()

    def close(self) -> None:
        """Store what is still queued (embedded on the next start), save, close files."""
        left = [item for item in self.indexer.stop() if not isinstance(item, Backfill)]
        try:
            if left:
                from .rounds import plan

                plan(self, left)
            self.save()
        except Exception as exc:  # closing must not raise; the next start catches up
            self.note_error(exc)
        finally:
            atexit.unregister(self._save_at_exit)
            self.discard_state()
            self.indexer.pool.shutdown(wait=False, cancel_futures=True)


def _short(exc: BaseException) -> str:
    return clip(exc if isinstance(exc, MiraiError) else f"{type(exc).__name__}: {exc}", 160)
