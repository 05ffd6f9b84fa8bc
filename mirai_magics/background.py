"""A background worker thread: runs submitted jobs in order, off the engine's hot path."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
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
