"""Streaming display: chunks grow one display handle, updates throttled (≥ 50 ms apart)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from IPython.display import display

from ..client.loop import StreamRestart
from ..client.records import Reply
from .render import answer_bundle


class StreamView:
    """One display handle whose Markdown grows as chunks arrive."""

    def __init__(
        self, fmt: str, throttle_ms: float = 50, clock: Callable[[], float] = time.monotonic
    ):
        self.fmt = fmt
        self.throttle_s = throttle_ms / 1000
        self.clock = clock
        self.parts: list[str] = []
        self._last = float("-inf")
        self.handle = display({"text/plain": "…"}, raw=True, display_id=True)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: str) -> None:
        self.parts.append(chunk)
        now = self.clock()
        if now - self._last >= self.throttle_s:
            self._last = now
            self.handle.update(answer_bundle(self.text + " ▌", "markdown"), raw=True)

    def restart(self) -> None:
        """A retried stream starts over: drop what was shown."""
        self.parts.clear()
        self.handle.update({"text/plain": "… (retrying)"}, raw=True)


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
