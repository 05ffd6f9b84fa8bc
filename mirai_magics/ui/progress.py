"""A live progress line for a batch: done / failed / rate / ETA.

In a Jupyter frontend it is an ipywidgets bar with a label (``MIRAI_PROGRESS=text`` asks for
the plain line instead); elsewhere in a kernel, one text line updated in place; outside
IPython, a line on stderr. It is redrawn at most every ``every_s`` seconds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def summary(job_id: str, total: int, settled: int, failed: int, rate: float, eta: Any) -> str:
    """``batch b1f2c3: 12/20 done · 1 failed · 8.1/s · ETA 1 s``."""
    eta_text = "…" if eta is None else f"{eta:.0f} s"
    tail = f" · ETA {eta_text}" if settled < total else ""
    return f"batch {job_id}: {settled}/{total} done · {failed} failed · {rate:.1f}/s{tail}"


class Progress:
    """Draws a running LiveJob; ``final(row)`` leaves the finished line."""

    def __init__(self, job_id: str, total: int, every_s: float = 0.25):
        self.job_id, self.total, self.every_s = job_id, total, every_s
        self.shown_at = 0.0
        self.widget: Any = None
        self.handle: Any = None
        self.mode = _mode()
        line = summary(job_id, total, 0, 0, 0.0, None)
        if self.mode == "widget":
            import ipywidgets as w
            from IPython.display import display

            self.bar = w.IntProgress(value=0, min=0, max=max(total, 1))
            self.label = w.HTML(value=line)
            self.widget = w.HBox([self.bar, self.label])
            display(self.widget)
        elif self.mode == "line":
            from IPython.display import display

            self.handle = display({"text/plain": line}, raw=True, display_id=True)

    def update(self, live: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown_at < self.every_s:
            return
        self.shown_at = now
        settled, failed, rate, eta = live.progress()
        self._show(summary(self.job_id, self.total, settled, failed, rate, eta), settled)

    def final(self, row: Any, live: Any = None) -> None:
        rate = live.progress()[2] if live is not None else 0.0
        line = summary(self.job_id, self.total, row.settled, row.failed, rate, None)
        if row.state != "done":
            line += f" · {row.state}" + (f": {row.error}" if row.error else "")
        self._show(line, row.settled)
        if self.mode == "widget":
            self.bar.bar_style = "success" if row.state == "done" and not row.failed else "warning"
        if self.mode == "stderr":
            sys.stderr.write("\n")

    def _show(self, line: str, settled: int) -> None:
        if self.mode == "widget":
            self.bar.value = settled
            self.label.value = line
        elif self.mode == "line":
            self.handle.update({"text/plain": line}, raw=True)
        else:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()


def _mode() -> str:
    """widget in a Jupyter kernel with ipywidgets, line in another IPython, else stderr."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return "stderr"
    shell = get_ipython()
    if shell is None:
        return "stderr"
    if type(shell).__name__ != "ZMQInteractiveShell" or os.environ.get("MIRAI_PROGRESS") == "text":
        return "line"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return "line"
    return "widget"
