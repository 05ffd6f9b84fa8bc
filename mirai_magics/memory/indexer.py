"""Background indexing: the hook enqueues, the engine loop drains in batches.

``put()`` is all the post_run_cell hook pays for: a deque append under a lock and, when
the worker is idle, one ``call_soon_threadsafe``. The worker runs on the session's engine
loop; SQLite and index work go to one "mirai-memory" thread (so the loop keeps streaming
chat answers), OpenAI embeddings are awaited on the loop with ``background=True`` (the
quota policy's background cap applies), local embeddings are computed on the memory thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .documents import Doc

BATCH = 256  # items taken from the queue per round
REMOTE_BATCH = 64  # texts per embeddings request
EMBED_MAX_CHARS = 8000  # an embedding input stays far below the 8k-token input limit


@dataclass
class FileJob:
    """A learned file's chunks; ``done(ok)`` is called once they are stored and embedded."""

    path: str
    sha: str
    docs: list[Doc]
    done: Callable[[bool], None] = lambda ok: None


class Backfill:
    """Marker: embed entries that have no vector from the current embedder yet."""


BACKFILL = Backfill()


@dataclass
class Plan:
    """One round's work after the store step: texts to embed (by SHA) and callbacks."""

    misses: dict[str, str] = field(default_factory=dict)
    jobs: list[FileJob] = field(default_factory=list)
    ok: bool = True
    more: bool = False  # a backfill that stopped at its batch size


class Indexer:
    """A queue drained on the engine loop; ``flush()`` waits until it is empty."""

    def __init__(self, memory: Any):
        self.memory = memory
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mirai-memory")
        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()
        self._running = False
        self._idle = threading.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, item: Any) -> None:
        """Enqueue a CellEvent, FileJob or BACKFILL (cheap; safe from any thread)."""
        with self._lock:
            if self.closed:
                return
            self._queue.append(item)
            if self._running:
                return
            self._running = True
            self._idle.clear()
        loop = self.memory.session.engine.loop
        loop.call_soon_threadsafe(self._spawn)

    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued item is indexed; False when ``timeout`` ran out first."""
        if threading.current_thread().name == self.memory.session.engine.name:
            return self._idle.is_set()  # waiting on the engine loop itself would deadlock
        deadline = time.monotonic() + timeout
        while not self._idle.wait(min(0.1, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return False
        return True

    def take_all(self) -> list[Any]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            return items

    # --- the worker (engine loop) ----------------------------------------------------

    def _spawn(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def _take(self) -> list[Any]:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            if not batch or self.closed:
                self._running = False
                self._idle.set()
                return []
            return batch

    async def _drain(self) -> None:
        try:
            while batch := self._take():
                await self._round(batch)
        except BaseException:  # cancelled (engine stopping): the next put() starts a new worker
            with self._lock:
                self._running = False
                self._idle.set()
            raise

    async def _round(self, batch: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        memory = self.memory
        try:
            plan: Plan = await loop.run_in_executor(self.pool, memory.plan, batch)
            vectors = await self._embed(loop, plan) if plan.misses else None
            await loop.run_in_executor(self.pool, memory.commit, plan, vectors)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a background worker must survive anything; shown in stats
            memory.note_error(exc)
            for job in batch:
                if isinstance(job, FileJob):
                    job.done(False)

    async def _embed(self, loop: asyncio.AbstractEventLoop, plan: Plan) -> Any:
        embedder = self.memory.state().embedder
        texts = [text[:EMBED_MAX_CHARS] for text in plan.misses.values()]
        try:
            if not embedder.remote:
                return await loop.run_in_executor(self.pool, embedder.embed, texts)
            import numpy as np

            # the client is built off the loop (building it runs on the engine loop)
            client = await loop.run_in_executor(self.pool, lambda: self.memory.session.client)
            parts = [
                await embedder.embed_async(client, texts[i : i + REMOTE_BATCH], True)
                for i in range(0, len(texts), REMOTE_BATCH)
            ]
            return np.concatenate(parts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # entries stay pending; the next start or rebuild retries
            self.memory.note_error(exc)
            plan.ok = False
            return None

    def stop(self, timeout: float = 5.0) -> list[Any]:
        """Stop taking work, wait for the round in progress; returns what was still queued."""
        with self._lock:
            self.closed = True
        left = self.take_all()
        self.flush(timeout)
        return left
