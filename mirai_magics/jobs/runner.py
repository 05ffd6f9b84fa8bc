"""Where queued items run: on the engine loop (in process) or on `mirai worker`s (Arq).

A backend's ``run(job_id, items, on_result)`` sends every ``(index, payload)`` and calls
``on_result(index, result)`` as each one finishes, in completion order; the manager stores
and counts them. In process, at most ``limits.concurrency.background`` items are in flight,
and each is background work for the quota policy: it waits for a rate slot and a token
budget instead of failing, and interactive cells go first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from .items import run_item

OnResult = Callable[[int, dict[str, Any]], None]


class Backend(Protocol):
    name: str

    async def run(
        self, job_id: str, items: list[tuple[int, dict[str, Any]]], on_result: OnResult
    ) -> None: ...

    async def cancel(self, job_id: str) -> None: ...

    async def close(self) -> None: ...


class InProcess:
    """Items on the engine loop through the session's resilient client."""

    name = "inprocess"

    def __init__(self, client: Callable[[], Any], concurrency: int):
        self.client = client  # the session's client, built on the kernel thread beforehand
        self.concurrency = concurrency

    async def run(
        self, job_id: str, items: list[tuple[int, dict[str, Any]]], on_result: OnResult
    ) -> None:
        queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        client = self.client()

        async def drain() -> None:
            while not queue.empty():
                index, item = queue.get_nowait()
                on_result(index, await run_item(client, item))

        workers = min(self.concurrency, len(items)) or 1
        await asyncio.gather(*(drain() for _ in range(workers)))

    async def cancel(self, job_id: str) -> None:
        """Nothing queued outside this process: cancelling the run's task is enough."""

    async def close(self) -> None:
        pass
