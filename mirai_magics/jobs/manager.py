"""The session's jobs: submit, run, store, wait, cancel, resume (`%mirai jobs`, ``batch``).

A job is rows in the store first, then a task on the engine loop that hands its pending
items to the backend and stores each result as it arrives. Listeners (the background cell's
display, the progress bar) are told on a notifier thread, never on the engine loop.
Resuming a job runs only its items still pending, in this process, under the same id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..background import BackgroundWorker
from ..errors import JobError, MiraiError
from .items import ItemResult, Results
from .store import JobRow, JobStore

_POLL_S = 0.1


@dataclass
class LiveJob:
    """A job running in this process: counters the progress bar reads, and its end."""

    id: str
    kind: str
    total: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)
    task: Any = None  # the engine Job
    error: str | None = None
    on_result: list[Callable[[int, ItemResult], None]] = field(default_factory=list)
    on_done: list[Callable[[LiveJob], None]] = field(default_factory=list)
    already: int = 0  # items finished before this run (a resume)

    @property
    def settled(self) -> int:
        return self.already + self.done + self.failed

    def progress(self) -> tuple[int, int, float, float | None]:
        """(settled, failed, items/s of this run, ETA in s or None)."""
        spent = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done + self.failed) / spent
        left = self.total - self.settled
        return self.settled, self.failed, rate, (left / rate if rate > 0 else None)


class Jobs:
    """One per Session: the store (``jobs.sqlite`` under the memory dir) and the backend."""

    def __init__(self, session: Any):
        self.session = session
        self.live: dict[str, LiveJob] = {}
        self._store: JobStore | None = None
        self._backend: Any = None
        self._notifier = BackgroundWorker("mirai-jobs")
        self._lock = threading.Lock()
        self._closing = False  # close() stops runs: they stay resumable, not cancelled

    @property
    def store(self) -> JobStore:
        if self._store is None:
            from ..config import home_dir

            self._store = JobStore(home_dir(self.session.config) / "jobs.sqlite")
        return self._store

    @property
    def backend(self) -> Any:
        if self._backend is None:
            config = self.session.config
            if config.queue.backend == "arq":
                from .arq_backend import ArqBackend

                self._backend = ArqBackend(config)
            else:
                from .runner import InProcess

                self._backend = InProcess(
                    lambda: self.session.client, config.limits.concurrency.background
                )
        return self._backend

    def reset_backend(self) -> None:
        """After a reload: the next job builds its backend from the new config."""
        backend, self._backend = self._backend, None
        if backend is not None and self.session.engine.running:
            self.session.engine.run(backend.close())

    # --- running ---------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        profile: str,
        payloads: list[dict[str, Any]],
        *,
        label: str = "",
        options: dict[str, Any] | None = None,
        listen: Callable[[LiveJob], None] | None = None,
    ) -> LiveJob:
        """Store a new job and start it; returns at once. ``listen(live)`` runs before the
        job starts (a listener added after could miss a fast job's result)."""
        _ = self.session.client  # built on this (kernel) thread, not on the engine loop
        backend = self.backend
        job_id = self.store.create(
            kind, profile, payloads, backend=backend.name, label=label, options=options
        )
        return self._start(job_id, kind, list(enumerate(payloads)), len(payloads), listen)

    def resume(self, job_id: str) -> LiveJob:
        """Run what ``job_id`` has still pending (it may belong to a kernel that died)."""
        with self._lock:
            live = self.live.get(job_id)
        if live is not None and not live.finished.is_set():
            return live
        row = self.store.job(job_id)
        _ = self.session.client
        pending = self.store.pending(job_id)
        return self._start(job_id, row.kind, pending, row.total)

    def _start(
        self,
        job_id: str,
        kind: str,
        pending: list[tuple[int, dict[str, Any]]],
        total: int,
        listen: Callable[[LiveJob], None] | None = None,
    ) -> LiveJob:
        live = LiveJob(job_id, kind, total, already=total - len(pending))
        if listen is not None:
            listen(live)
        with self._lock:
            self.live[job_id] = live
        self.store.set_state(job_id, "running")
        live.task = self.session.engine.submit(self._drive(live, pending))
        return live

    async def _drive(self, live: LiveJob, pending: list[tuple[int, dict[str, Any]]]) -> None:
        store = self.store

        def on_result(index: int, result: dict[str, Any]) -> None:
            if not store.store_result(live.id, index, result):
                return  # a second answer for a stored item (a re-delivered job): dropped
            item = ItemResult.of(result, index)
            if item.ok:
                live.done += 1
            else:
                live.failed += 1
            for listener in live.on_result:
                self._notifier.submit(listener, index, item)

        state = "done"
        try:
            if pending:
                await self.backend.run(live.id, pending, on_result)
            if live.kind == "cell" and live.failed:
                state = "failed"
        except asyncio.CancelledError:
            if self._closing:  # the kernel is going away: `%mirai batch resume` finishes it
                state = "interrupted"
            else:
                state = "cancelled"
                store.cancel_pending(live.id)
                await self.backend.cancel(live.id)
        except MiraiError as exc:  # Redis gone: what is stored stays; resume later
            state, live.error = "interrupted", str(exc)
        except Exception as exc:  # a bug: say so on the job, keep the stored results
            state, live.error = "interrupted", f"{type(exc).__name__}: {exc}"
        finally:
            store.set_state(live.id, state, live.error)
            live.finished.set()
            for listener in live.on_done:
                self._notifier.submit(listener, live)

    # --- asking --------------------------------------------------------------------------

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        tick: Callable[[LiveJob], None] | None = None,
    ) -> JobRow:
        """Block until the job has ended (Ctrl-C stops waiting, not the job)."""
        live = self.live.get(job_id)
        if live is not None:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not live.finished.wait(_POLL_S):
                if tick is not None:
                    tick(live)
                if deadline is not None and time.monotonic() > deadline:
                    break
            if tick is not None:
                tick(live)
            self._notifier.flush()  # the cell's display is updated before wait returns
        return self.store.job(job_id)

    def cancel(self, job_id: str) -> JobRow:
        """Stop a running job: its pending items end as cancelled; finished ones stay."""
        row = self.store.job(job_id)
        live = self.live.get(job_id)
        if live is not None and not live.finished.is_set():
            live.task.cancel()
            live.finished.wait(5)
        elif not row.finished:  # no live task here (another kernel's, or before a restart)
            if row.backend == "arq" and self.backend.name == "arq":
                self.session.engine.run(self.backend.cancel(job_id))  # its queued items too
            self.store.cancel_pending(job_id)
            self.store.set_state(job_id, "cancelled")
        else:
            raise JobError(f"job {job_id} already ended ({row.state})", hint="nothing to cancel")
        return self.store.job(job_id)

    def results(self, job_id: str) -> Results:
        """Every item's result in input order (an unfinished one is an error value)."""
        row = self.store.job(job_id)
        out = Results(ItemResult.of(r, i) for i, r in enumerate(self.store.results(job_id)))
        out.job_id = row.id
        return out

    def rows(self, limit: int = 20) -> list[JobRow]:
        return self.store.jobs(limit)

    def status_rows(self) -> list[tuple[str, str]]:
        running = [j for j in self.live.values() if not j.finished.is_set()]
        if not running:
            return []
        left = sum(j.total - j.settled for j in running)
        return [("background jobs", f"{len(running)} running, {left} items left")]

    def close(self) -> None:
        """Stop waiting for running jobs (they stay resumable) and close the store."""
        self._closing = True
        for live in list(self.live.values()):
            if not live.finished.is_set() and live.task is not None:
                live.task.cancel(wait_s=2)
        self._notifier.stop(timeout_s=2)
        if self._backend is not None and self.session.engine.running:
            self.session.engine.run(self._backend.close())
        if self._store is not None:
            self._store.close()
