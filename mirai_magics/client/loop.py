"""The engine's own event-loop thread: runs the async core, hands results (and streamed
chunks) to the kernel thread."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_POLL_S = 0.1  # bounded waits keep the kernel thread interruptible by Ctrl-C


class Job(Generic[T]):
    """One coroutine running on the engine loop, awaited from a plain thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]):
        self._loop = loop
        self._done = threading.Event()
        self._task: asyncio.Task[T] | None = None
        self._cancel_requested = False
        context = contextvars.copy_context()  # carries the caller's trace span to the loop
        loop.call_soon_threadsafe(context.run, self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:
        self._task = self._loop.create_task(coro)
        if self._cancel_requested:
            self._task.cancel()
        self._task.add_done_callback(lambda _task: self._done.set())

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> T:
        """Wait for the result; Ctrl-C cancels the job cleanly, then re-raises."""
        try:
            while not self._done.wait(_POLL_S):
                pass
        except KeyboardInterrupt:
            self.cancel()
            raise
        assert self._task is not None
        return self._task.result()

    def cancel(self, wait_s: float = 5.0) -> None:
        """Cancel the task on its loop and wait until it has really finished."""

        def _cancel() -> None:
            self._cancel_requested = True
            if self._task is not None:
                self._task.cancel()

        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_cancel)
        self._done.wait(wait_s)


class EngineLoop:
    """A daemon thread with its own asyncio loop (a Jupyter kernel's loop is already running)."""

    def __init__(self, name: str = "mirai-engine") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self.name, daemon=True
                )
                self._thread.start()
            return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Job[T]:
        return Job(self.loop, coro)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel what still runs, stop the loop and join the thread; idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        done = threading.Event()

        async def _shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            done.set()

        loop.call_soon_threadsafe(lambda: loop.create_task(_shutdown()))
        done.wait(timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if not thread.is_alive():
            loop.close()


# --- the stream bridge: chunks from a call on the engine loop to a plain thread -------------

_DONE = object()


class StreamRestart:
    """Yielded by ``stream`` when a retry restarts a stream: discard the text so far."""


def stream(
    engine: EngineLoop, start: Callable[[Callable[[Any], None]], Coroutine[Any, Any, T]]
) -> Iterator[Any]:
    """Run ``start(sink)`` on the engine; yield what it sinks as it arrives, then its result.

    The client's RESTART marker comes out as a ``StreamRestart``. Ctrl-C (or closing the
    iterator early) cancels the call.
    """
    from .client import RESTART

    chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def sink(item: Any) -> None:
        chunks.put(StreamRestart() if item is RESTART else item)

    async def run() -> T:
        try:
            return await start(sink)
        finally:
            chunks.put(_DONE)

    job = engine.submit(run())
    try:
        while (item := _get(chunks)) is not _DONE:
            yield item
        yield job.result()
    finally:
        if not job.done():
            job.cancel()


def _get(chunks: queue.SimpleQueue[Any]) -> Any:
    """Blocking get that stays interruptible by Ctrl-C."""
    while True:
        try:
            return chunks.get(timeout=_POLL_S)
        except queue.Empty:
            continue
