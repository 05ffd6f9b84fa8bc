"""The Arq backend: queued items run on `mirai worker`s; results come back through Redis.

Each item is one Arq job ``mirai_item(payload)`` with the id ``{namespace}:{job}:{index}``, so
a resubmitted item is never queued twice: Arq refuses an id whose job or result key exists,
and ``run`` skips those ids itself (one pipelined round trip) before enqueueing the rest.
Results are collected every ``queue.poll_s`` with one transaction of two ``MGET``s (result
keys, job keys): an id with neither is lost (a Redis restarted without persistence, a job
expired after a day) and is queued again. A collected result is handed to ``on_result`` and
then deleted; an uncollected one stays a day (the worker's ``keep_result``), so a restarted
kernel's resume collects what finished while it was away. Any Redis failure raises one
``RedisUnavailableError`` line; the manager marks the job interrupted and resume finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from ..client.shared_limits import safe_url
from ..config import Config, redis_url
from ..errors import ConfigError, RedisUnavailableError
from .runner import OnResult

with contextlib.suppress(ImportError):  # without arq, ArqBackend() says what to install
    from arq.constants import (
        abort_jobs_ss,
        in_progress_key_prefix,
        job_key_prefix,
        result_key_prefix,
    )

RESUME = "finished items are stored; `%mirai batch resume ID` runs the rest once Redis answers"
FUNCTION = "mirai_item"  # the worker's function (``worker.mirai_item``)
ENQUEUE_AT_ONCE = 32  # concurrent enqueues (connections): 2000 items in ~30 round trips
MGET_CHUNK = 1000  # keys per MGET: a 10k-item batch is still one round trip, in 20 commands


class ArqBackend:
    """Items on `mirai worker`s through ``redis.url`` (``queue.backend: arq``)."""

    name = "arq"

    def __init__(self, config: Config):
        try:
            import arq  # noqa: F401
        except ImportError:
            raise ConfigError(
                "queue.backend: arq needs the arq package", hint="pip install arq"
            ) from None
        self.url = redis_url(config)
        self.safe_url = safe_url(self.url)
        self.namespace = config.redis.namespace
        self.queue = config.queue.name
        self.poll_s = config.queue.poll_s
        self.timeout_s = config.redis.connect_timeout_s  # to connect, and per round trip
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arq_id(self, job_id: str, index: int) -> str:
        return f"{self.namespace}:{job_id}:{index}"

    # --- the Backend protocol ----------------------------------------------------------

    async def run(
        self, job_id: str, items: list[tuple[int, dict[str, Any]]], on_result: OnResult
    ) -> None:
        """Queue every item not queued yet, then hand over each result as it appears."""
        payloads = {self.arq_id(job_id, i): p for i, p in items}
        waiting = {self.arq_id(job_id, i): i for i, _ in items}
        async with self._unavailable():
            redis = await self._pool()
            await self._enqueue(redis, payloads, await self._known(redis, list(payloads)))
            while waiting:
                done, lost = await self._collect(redis, list(waiting))
                for arq_id, result in done.items():
                    on_result(waiting.pop(arq_id), result)
                if done:
                    await self._io(redis.delete(*(result_key_prefix + i for i in done)))
                if lost:
                    await self._enqueue(redis, {i: payloads[i] for i in lost}, set())
                if waiting:
                    await asyncio.sleep(self.poll_s)

    async def cancel(self, job_id: str) -> None:
        """Best effort: drop the job's queued items, ask workers to abort running ones.

        A worker that picks an item up in the same instant still runs it (its answer is
        dropped: the item is already cancelled in the store). Redis down: nothing to do.
        """
        with contextlib.suppress(RedisUnavailableError):
            async with self._unavailable():
                redis = await self._pool()
                match = _glob_escape(f"{self.namespace}:{job_id}:") + "*"
                ids = [i.decode() async for i, _ in redis.zscan_iter(self.queue, match=match)]
                if ids:
                    await self._drop(redis, ids)

    async def _drop(self, redis: Any, ids: list[str]) -> None:
        running = await self._exists(redis, [in_progress_key_prefix + i for i in ids])
        queued = [i for i, busy in zip(ids, running, strict=True) if not busy]
        busy = {i: int(time.time() * 1000) for i, b in zip(ids, running, strict=True) if b}
        async with redis.pipeline(transaction=True) as pipe:
            if queued:
                pipe.zrem(self.queue, *queued)
                pipe.delete(*(job_key_prefix + i for i in queued))
            if busy:  # workers run with allow_abort_jobs: they cancel these tasks
                pipe.zadd(abort_jobs_ss, busy)
            await self._io(pipe.execute())

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            with contextlib.suppress(*_redis_errors()):
                await asyncio.wait_for(redis.aclose(), self.timeout_s)

    # --- Redis --------------------------------------------------------------------------

    async def _pool(self) -> Any:
        """The Arq pool of this loop (a new loop, or a pool dropped after a failure: anew)."""
        from arq import create_pool
        from arq.connections import RedisSettings

        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            settings = RedisSettings.from_dsn(self.url)
            settings.conn_timeout = self.timeout_s  # type: ignore[assignment]
            settings.conn_retries = 0  # a kernel says so at once; resume retries later
            pool = create_pool(settings, default_queue_name=self.queue)
            self._redis, self._loop = await self._io(pool), loop
        return self._redis

    async def _io(self, awaitable: Any) -> Any:
        """One round trip, bounded: a Redis that accepts but never answers is down too."""
        return await asyncio.wait_for(awaitable, self.timeout_s)

    @contextlib.asynccontextmanager
    async def _unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except _redis_errors() as exc:
            await self.close()  # the next run connects afresh (and pings)
            raise RedisUnavailableError(
                self.safe_url, self._reason(exc), hint=RESUME, effect="the batch is paused"
            ) from None

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, asyncio.TimeoutError) or "Timeout" in type(exc).__name__:
            return f"no answer within {self.timeout_s:g} s"
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        password = _password(self.url)
        return text.replace(password, "***") if password else text

    async def _exists(self, redis: Any, keys: list[str]) -> list[bool]:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in await self._io(pipe.execute())]

    async def _known(self, redis: Any, ids: list[str]) -> set[str]:
        """Ids already queued, running or finished (a resume, a resubmission): not again."""
        keys = [k for i in ids for k in (job_key_prefix + i, result_key_prefix + i)]
        found = await self._exists(redis, keys)
        return {i for n, i in enumerate(ids) if found[2 * n] or found[2 * n + 1]}

    async def _enqueue(self, redis: Any, payloads: dict[str, Any], known: set[str]) -> None:
        """Queue the ids not ``known``, ENQUEUE_AT_ONCE in flight (Arq WATCHes each id)."""
        todo = [(i, p) for i, p in payloads.items() if i not in known]
        for n in range(0, len(todo), ENQUEUE_AT_ONCE):
            chunk = todo[n : n + ENQUEUE_AT_ONCE]
            await self._io(
                asyncio.gather(
                    *(
                        redis.enqueue_job(FUNCTION, p, _job_id=i, _queue_name=self.queue)
                        for i, p in chunk
                    )
                )
            )

    async def _collect(
        self, redis: Any, ids: list[str]
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """(results by id, ids lost) in one transaction: a worker's finish is atomic too."""
        from arq.jobs import deserialize_result

        chunks = [ids[n : n + MGET_CHUNK] for n in range(0, len(ids), MGET_CHUNK)]
        async with redis.pipeline(transaction=True) as pipe:
            for chunk in chunks:
                pipe.mget([result_key_prefix + i for i in chunk])
                pipe.mget([job_key_prefix + i for i in chunk])
            replies = await self._io(pipe.execute())
        results = [r for n in range(0, len(replies), 2) for r in replies[n]]
        defs = [d for n in range(1, len(replies), 2) for d in replies[n]]
        rows = list(zip(ids, results, defs, strict=True))
        done = {i: item_result(deserialize_result(r)) for i, r, _ in rows if r is not None}
        lost = [i for i, r, d in rows if r is None and d is None]
        return done, lost


def item_result(job: Any) -> dict[str, Any]:
    """The result dict of an Arq job result: the worker's dict, or what stopped it."""
    if job.success and isinstance(job.result, dict):
        return job.result
    kind = type(job.result).__name__
    code = {"TimeoutError": "job_timeout", "CancelledError": "cancelled"}.get(kind, "worker_failed")
    detail = str(job.result).strip()
    return {
        "text": None,
        "data": None,
        "error": f"worker: {kind}: {detail}" if detail else f"worker: {kind}",
        "error_code": code,
        "record": None,
    }


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    return exceptions.ConnectionError, exceptions.TimeoutError, OSError, asyncio.TimeoutError
