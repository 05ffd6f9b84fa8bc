"""A background worker thread: runs submitted jobs in order, off the engine's hot path."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
_STOP = object()


class BackgroundWorker:
    """One daemon thread draining a FIFO of jobs; ``flush()`` waits until it has caught up."""

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        self._ensure_started()
        self._jobs.put((job, args))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every job submitted so far has run (True) or the timeout passed."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._jobs.put((done.set, ()))
        return done.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Run what is queued, then end the thread; idempotent (a later submit restarts it)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._jobs.put(_STOP)
            thread.join(timeout_s)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                atexit.register(self.stop)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not _STOP:
            job, args = item
            try:
                job(*args)
            except (
                Exception
            ):  # a failed job must not end the worker; it is logged, not lost silently
                log.exception("mirai: background job %s failed", getattr(job, "__name__", job))


class BatchWriter:
    """Items handed in one by one, written by a worker thread in batches.

    ``add`` is all the caller pays (an append under a lock; the first item of a batch also
    queues one drain). The drain lingers ``linger_s`` so a burst gathers, then passes the
    whole batch to ``write`` (one transaction, one file write).
    """

    def __init__(self, name: str, write: Callable[[list[Any]], None], linger_s: float = 0.05):
        self.write = write
        self.linger_s = linger_s
        self._worker = BackgroundWorker(name)
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def add(self, item: Any) -> None:
        with self._lock:
            self._pending.append(item)
            if len(self._pending) > 1:
                return  # a drain is already queued and will take this one too
        self._worker.submit(self._drain)

    def _drain(self) -> None:
        time.sleep(self.linger_s)  # let a burst gather (the sleep releases the GIL)
        with self._lock:
            batch, self._pending = self._pending, []
        self.write(batch)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every item added so far has been written."""
        return self._worker.flush(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is pending, then end the thread."""
        self._worker.stop(timeout_s)
