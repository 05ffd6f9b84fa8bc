"""Streaming display: a live waiting line, then the chunks growing one display handle.

Until the first chunk the handle says who the cell waits for, for how long, and which
attempt it is on: ``waiting for main/gpt-4o-mini · 3 s · attempt 2``. A ticker thread
refreshes the seconds once a second; a failed attempt refreshes the line at once. Attempts
reach the view through ``AttemptWatch``, a client observer that looks up the running cell's
view in a context variable (the engine loop runs a call in a copy of the calling thread's
context, so only that cell's calls find it). Chunks update the handle ≥ 50 ms apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from IPython.display import display

from ..client.loop import StreamRestart
from ..client.observers import Observer
from ..client.records import Attempt, CallRecord, Reply
from .badges import waiting_bundle, waiting_line
from .render import answer_bundle

TICK_S = 1.0
_VIEW: contextvars.ContextVar[StreamView | None] = contextvars.ContextVar(
    "mirai_stream_view", default=None
)


class AttemptWatch(Observer):
    """Tells the running cell's view that an attempt of its chat call failed (an attempt
    cancelled by Ctrl-C is no failure to show: the cell is ending)."""

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        view = _VIEW.get()
        if view is None or attempt.ok or attempt.reason == "cancelled":
            return
        if record.kind == "chat":
            view.attempt_failed(record)


ATTEMPTS = AttemptWatch()


def watch_attempts(client: Any) -> None:
    """Have ``client`` report attempts to the cells' views (once per client)."""
    if ATTEMPTS not in client.observers:
        client.observers.append(ATTEMPTS)


class StreamView:
    """One display handle: the waiting line, then the Markdown growing as chunks arrive.

    ``tick_s=None`` starts no ticker (tests call ``tick()`` on their own clock); ``handle``
    replaces the display handle (anything with ``update(bundle, raw=True)``).
    """

    def __init__(
        self,
        fmt: str,
        throttle_ms: float = 50,
        clock: Callable[[], float] = time.monotonic,
        *,
        label: str = "the answer",
        started: float | None = None,
        tick_s: float | None = TICK_S,
        handle: Any = None,
    ):
        self.fmt, self.label, self.clock = fmt, label, clock
        self.throttle_s = throttle_ms / 1000
        self.started = clock() if started is None else started
        self.parts: list[str] = []
        self.attempt = 1
        self.record: CallRecord | None = None  # the call whose attempt failed (read live)
        self.waiting = True
        self._last = float("-inf")
        self._lock = threading.RLock()  # the ticker, the engine thread and the kernel's
        self._line = self.waiting_text()
        if handle is None:
            handle = display(waiting_bundle(self._line), raw=True, display_id=True)
        else:
            handle.update(waiting_bundle(self._line), raw=True)
        self.handle = handle
        self._stop = threading.Event()
        if tick_s is not None:
            context = contextvars.copy_context()  # the cell's parent header, for the display
            threading.Thread(
                target=context.run, args=(self._tick_until_stopped, tick_s), daemon=True
            ).start()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def waiting_text(self) -> str:
        """The waiting line now: the call's profile/model once known, seconds, attempt."""
        record = self.record
        label = self.label if record is None else f"{record.profile}/{record.model}"
        return waiting_line(label, self.clock() - self.started, self.attempt)

    def waiting_for(self, label: str) -> None:
        """The cell moved on to another wait (``memory``, then ``main/gpt-4o-mini``)."""
        with self._lock:
            self.label = label
            self.tick()

    def attempt_failed(self, record: CallRecord) -> None:
        """An attempt failed: the next one is ``record.attempts + 1`` (on the engine thread)."""
        with self._lock:
            self.record, self.attempt = record, record.attempts + 1
            self.tick()

    def tick(self) -> None:
        """Refresh the waiting line if it says something new (a second passed, an attempt)."""
        with self._lock:
            if not self.waiting:
                return
            line = self.waiting_text()
            if line != self._line:
                self._line = line
                self.handle.update(waiting_bundle(line), raw=True)

    def add(self, chunk: str) -> None:
        with self._lock:
            self.waiting = False
            self.parts.append(chunk)
            now = self.clock()
            if now - self._last >= self.throttle_s:
                self._last = now
                self.handle.update(answer_bundle(self.text + " ▌", "markdown"), raw=True)

    def restart(self) -> None:
        """A retried stream starts over: drop what was shown, wait again."""
        with self._lock:
            self.parts.clear()
            self.waiting, self._line = True, ""
            self.tick()

    def interrupted(self) -> None:
        """Ctrl-C: keep what had arrived (without the cursor), else clear the waiting line."""
        with self._lock:
            self.close()
            bundle = answer_bundle(self.text, "markdown") if self.parts else {"text/plain": ""}
            self.handle.update(bundle, raw=True)

    def close(self) -> None:
        """No more waiting-line updates: the answer or an error takes the handle."""
        with self._lock:
            self.waiting = False
            self._stop.set()

    def _tick_until_stopped(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.tick()

    @contextlib.contextmanager
    def watching(self) -> Iterator[StreamView]:
        """Within: failed attempts of calls made from this context reach this view."""
        token = _VIEW.set(self)
        try:
            yield self
        finally:
            _VIEW.reset(token)
            self.close()


def stream_enabled(option: bool | None, env_value: str | None, default: bool) -> bool:
    """--stream/--no-stream wins, then MIRAI_STREAM, then the config default."""
    if option is not None:
        return option
    if env_value is not None and env_value.strip() != "":
        return env_value.strip().lower() not in ("0", "false", "no", "off")
    return default


def consume(stream: Iterator[Any], view: StreamView) -> Reply:
    """Feed a ``Session.stream_chat`` iterator into ``view``; returns the final Reply."""
    for item in stream:
        if isinstance(item, str):
            view.add(item)
        elif isinstance(item, StreamRestart):
            view.restart()
        else:
            return item
    raise RuntimeError("stream ended without a reply")
