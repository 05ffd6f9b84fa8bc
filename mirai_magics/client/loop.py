"""The engine's own event-loop thread: runs the async core, hands results (and streamed
chunks) to the kernel thread.

A handoff between threads costs one GIL acquisition, and a thread woken while another runs
pure Python waits up to ``sys.getswitchinterval()`` (5 ms) for it. So while a kernel thread
waits for the engine, ``responsive()`` lowers the interval to 0.5 ms (``MIRAI_SWITCH_MS``;
``0`` keeps Python's default), and restores it when the last waiting call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_POLL_S = 0.1  # bounded waits keep the kernel thread interruptible by Ctrl-C
SWITCH_MS = 0.5


class _Responsive:
    """Counts the threads waiting on the engine; the first lowers the switch interval."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = 0
        self.saved = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        wanted = _switch_s()
        if wanted is None:
            yield
            return
        with self.lock:
            self.waiting += 1
            if self.waiting == 1:
                self.saved = sys.getswitchinterval()
                sys.setswitchinterval(min(wanted, self.saved))
        try:
            yield
        finally:
            with self.lock:
                self.waiting -= 1
                if self.waiting == 0:
                    sys.setswitchinterval(self.saved)


def _switch_s() -> float | None:
    value = os.environ.get("MIRAI_SWITCH_MS", "").strip()
    try:
        ms = float(value) if value else SWITCH_MS
    except ValueError:
        ms = SWITCH_MS
    return ms / 1000 if ms > 0 else None


responsive = _Responsive()


class Job(Generic[T]):
    """One coroutine running on the engine loop, awaited from a plain thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]):
        self._loop = loop
        self._done = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancel_requested = False
        self._value: Any = None
        self._error: BaseException | None = None
        context = contextvars.copy_context()  # carries the caller's trace span to the loop
        loop.call_soon_threadsafe(context.run, self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:
        try:
            self._task = self._loop.create_task(self._run(coro))
        except BaseException as exc:  # not a coroutine, a closing loop: the caller hears it
            if hasattr(coro, "close"):
                coro.close()  # never awaited: no "coroutine was never awaited" warning
            self._finish(exc)
            return
        if self._cancel_requested:
            self._task.cancel()
        self._task.add_done_callback(self._settled)

    async def _run(self, coro: Coroutine[Any, Any, T]) -> None:
        # The waiting thread is woken from here, one loop iteration before a done callback.
        try:
            self._value = await coro
        except BaseException as exc:  # CancelledError included: re-raised in result()
            self._finish(exc)
        else:
            self._finish(None)

    def _settled(self, task: asyncio.Task[None]) -> None:
        """Done callback: covers a task cancelled before its first step."""
        if not self._done.is_set():
            self._finish(asyncio.CancelledError() if task.cancelled() else task.exception())

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> T:
        """Wait for the result; Ctrl-C cancels the job cleanly, then re-raises."""
        try:
            with responsive():
                while not self._done.wait(_POLL_S):
                    pass
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self._error is not None:
            raise self._error
        return self._value

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
        while (item := _waited(chunks)) is not _DONE:
            yield item
        yield job.result()
    finally:
        if not job.done():
            job.cancel()


def _waited(chunks: queue.SimpleQueue[Any]) -> Any:
    """Blocking get that stays interruptible by Ctrl-C (and responsive while it waits)."""
    with responsive():
        return _get(chunks)


def _get(chunks: queue.SimpleQueue[Any]) -> Any:
    while True:
        try:
            return chunks.get(timeout=_POLL_S)
        except queue.Empty:
            continue
