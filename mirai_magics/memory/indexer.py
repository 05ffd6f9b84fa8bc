"""Background indexing: the hook enqueues, the engine loop drains in batches.

``put()`` is all the post_run_cell hook pays for: a deque append under a lock and, when
the worker is idle, one ``call_soon_threadsafe``. The worker runs on the session's engine
loop; SQLite and index work go to one "mirai-memory" thread (so the loop keeps streaming
chat answers), OpenAI embeddings are awaited on the loop with ``background=True`` (the
quota policy's background cap applies), local embeddings are computed on the memory thread.

Each embedded sub-batch is committed as it arrives. Sub-batches are sized by tokens to fit
the token budgets (``limits.tokens``: at most ``per_request_max`` and never more than the
per-user or global budget per minute), so a background request waits for budget to free
instead of being refused for asking more than a whole budget; a single text larger than the
whole budget is recorded as not embeddable, with that reason. A request the endpoint refuses
as invalid (HTTP 400/413/422) is split in halves down to the text it refuses; that text is
tried again shortened, else recorded as failed (not sent again), and the others are embedded.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import ClientRequestError
from ..tokens import count_text
from . import rounds
from .jobs import FileJob, Plan

BATCH = 256  # items taken from the queue per round
REMOTE_BATCH = 64  # texts per embeddings request at most (fewer when they are long)
# text-embedding-3 takes 8,191 tokens per input; our count may be an estimate (or another
# encoding than the model's), so inputs are cut at half of that
EMBED_MAX_TOKENS = 4000
SPLIT_STATUSES = (400, 413, 422)  # refused as invalid: some text in the request may be why
HALVE_MIN_CHARS = 500  # a refused text at least this long is tried again cut to half
WAIT_BEFORE_SEARCH_S = 5.0  # a %%mirai cell or admin command waits this long for queued cells


def index_wait_s() -> float:
    """How long a search waits for queued cells: ``MIRAI_INDEX_WAIT_S``, else 5 s."""
    try:
        given = float(os.environ.get("MIRAI_INDEX_WAIT_S", WAIT_BEFORE_SEARCH_S))
    except ValueError:  # not a number: the default (a memory setting never breaks a cell)
        return WAIT_BEFORE_SEARCH_S
    return min(max(given, 0.0), 600.0) if math.isfinite(given) else WAIT_BEFORE_SEARCH_S


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
        self.suspects: set[str] = set()  # SHAs refused in a round where nothing was accepted

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
            plan: Plan = await loop.run_in_executor(self.pool, rounds.plan, memory, batch)
            if plan.misses:
                await self._embed(loop, plan)
            await loop.run_in_executor(self.pool, rounds.commit, memory, plan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a background worker must survive anything; shown in stats
            memory.note_error(exc)
            for job in batch:
                if isinstance(job, FileJob):
                    job.done(False)

    async def _embed(self, loop: asyncio.AbstractEventLoop, plan: Plan) -> None:
        """Embed the plan's texts (suspects of earlier refusals last), committing as we go."""
        embedder = self.memory.state().embedder
        items = sorted(plan.misses.items(), key=lambda item: item[0] in self.suspects)
        try:
            if embedder.remote:
                await self._embed_remote(loop, embedder, items)
                return
            vectors = await loop.run_in_executor(
                self.pool, embedder.embed, [cut_to_tokens(text) for _, text in items]
            )
            shas = [sha for sha, _ in items]
            await loop.run_in_executor(self.pool, rounds.store_vectors, self.memory, shas, vectors)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # entries stay pending; the next round or start retries
            self.memory.note_error(exc)
            plan.ok = False

    async def _embed_remote(
        self, loop: asyncio.AbstractEventLoop, embedder: Any, items: list[tuple[str, str]]
    ) -> None:
        """Sub-batches that fit the token budgets (``token_batches``); a refused one is halved
        until the text is found.

        That text is tried again cut to half (an input over the model's token limit is the
        usual reason), and below HALVE_MIN_CHARS recorded as refused, but only when some
        other text was accepted in this round: when everything is refused, the request
        itself is wrong (say, the model or its ``dimensions``) and every text stays pending.
        """
        client = await loop.run_in_executor(self.pool, lambda: self.memory.session.client)
        items = [(sha, cut_to_tokens(text)) for sha, text in items]
        todo, oversized = token_batches(items, Budget.of(self.memory.session.config))
        if oversized:
            await loop.run_in_executor(self.pool, rounds.store_refusals, self.memory, oversized)
        refused: dict[str, str] = {}
        accepted, last = False, None
        while todo:
            part = todo.pop(0)
            try:
                vectors = await embedder.embed_async(client, [text for _, text in part], True)
            except ClientRequestError as exc:
                if exc.status not in SPLIT_STATUSES:
                    raise
                if len(part) > 1:
                    todo[:0] = [part[: len(part) // 2], part[len(part) // 2 :]]
                    continue
                sha, text = part[0]
                if len(text) >= HALVE_MIN_CHARS:
                    todo.insert(0, [(sha, text[: len(text) // 2])])
                    continue
                refused[sha], last = str(exc), exc
                if not accepted and len(refused) >= 2:
                    self.suspects.update(refused)
                    raise
                continue
            accepted = True
            shas = [sha for sha, _ in part]
            await loop.run_in_executor(self.pool, rounds.store_vectors, self.memory, shas, vectors)
        if last is not None and not accepted:
            self.suspects.update(refused)
            raise last
        if refused:
            await loop.run_in_executor(self.pool, rounds.store_refusals, self.memory, refused)
            self.suspects.difference_update(refused)

    def stop(self, timeout: float = 5.0) -> list[Any]:
        """Stop taking work, wait for the round in progress; returns what was still queued."""
        with self._lock:
            self.closed = True
        left = self.take_all()
        self.flush(timeout)
        return left


@dataclass(frozen=True)
class Budget:
    """How many tokens one embeddings request may hold: ``request`` per batch, and ``whole``
    (the smaller budget per minute, named by ``setting``) for any single text."""

    request: int
    whole: int
    setting: str

    @classmethod
    def of(cls, config: Any) -> Budget:
        tokens = config.limits.tokens
        whole, setting = min(
            (tokens.per_user_minute, "limits.tokens.per_user_minute"),
            (tokens.per_minute, "limits.tokens.per_minute"),
        )
        return cls(min(tokens.per_request_max, whole), whole, setting)


def token_batches(
    items: list[tuple[str, str]], budget: Budget, max_texts: int = REMOTE_BATCH
) -> tuple[list[list[tuple[str, str]]], dict[str, str]]:
    """(sha, text) pairs in batches of at most ``budget.request`` tokens (a longer text goes
    alone) and ``max_texts`` texts, counted as the quota policy counts them; and the texts
    larger than the whole budget (sha → why), which no wait would ever admit."""
    batches: list[list[tuple[str, str]]] = []
    oversized: dict[str, str] = {}
    current: list[tuple[str, str]] = []
    held = 0
    for sha, text in items:
        tokens = count_text(text)[0]
        if tokens > budget.whole:
            oversized[sha] = (
                f"~{tokens:,} tokens, more than the whole budget of {budget.whole:,} "
                f"tokens/min ({budget.setting}); not embedded"
            )
            continue
        if current and (held + tokens > budget.request or len(current) >= max_texts):
            batches.append(current)
            current, held = [], 0
        current.append((sha, text))
        held += tokens
    if current:
        batches.append(current)
    return batches, oversized


def cut_to_tokens(text: str, max_tokens: int = EMBED_MAX_TOKENS) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (an embedding input has a token limit)."""
    if len(text) * 4 <= max_tokens:  # a token is at least one UTF-8 byte, a char at most four
        return text
    tokens = count_text(text)[0]
    if tokens <= max_tokens:
        return text
    chars = len(text) * max_tokens // tokens
    while chars > 0 and count_text(text[:chars])[0] > max_tokens:
        chars = int(chars * 0.9)
    return text[:chars]
