"""What `%mirai memory …` does (declared in commands.py) and the hooks that feed the memory.

The post_run_cell hook only builds a small event and enqueues it. Cells run before the
session exists (it starts with the first `%mirai`/`%%mirai`) wait in a bounded backlog,
so `%load_ext` alone imports nothing heavy. A failed cell's exception is kept as one line
of text, never as the object (its traceback would keep the cell's frames and data alive).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from IPython.display import display

from ..errors import UsageError
from ..memory.documents import CellEvent, error_line
from .status import show_grid

BACKLOG = 2000  # cells kept while no session exists yet
OUTPUT_CAP = 4000  # characters taken from a result's repr in the hook (the config cuts further)
SEARCH_WAIT_S = 30.0
SEARCH_COLUMNS = ("score", "cell", "snippet")

# --- hooks (hot path) ---------------------------------------------------------------------


def cell_started(magics: Any, info: Any) -> None:
    """pre_run_cell: note the running cell so it is never retrieved as its own context."""
    raw = getattr(info, "raw_cell", None) or ""
    if not magics.memory_enabled:
        return
    session = magics._session
    if session is None:
        if not raw.lstrip().startswith(("%%mirai", "%mirai")):
            return
        try:  # this cell starts the session anyway; start it now so the backlog moves over
            session = magics.session
        except Exception:  # a config error is reported by the magic itself, with its hint
            return
    memory = session.memory
    _hand_over(magics, memory)
    memory.current_cell = (getattr(info, "cell_id", None), raw)


def cell_finished(magics: Any, result: Any) -> None:
    """post_run_cell: queue (cell id, In[n], source, short output, error) for indexing.

    A cell run without history (``store_history=False``, as nbval does) has no In[n].
    """
    info = result.info
    if info is None or not magics.memory_enabled:
        return
    error = result.error_in_exec or result.error_before_exec
    event = CellEvent(
        info.raw_cell or "",
        getattr(info, "cell_id", None),
        result.execution_count if getattr(info, "store_history", True) else None,
        short_output(magics.shell, result),
        None if error is None else error_line(error),
    )
    session = magics._session
    if session is None:
        _backlog(magics).append(event)
        return
    memory = session.memory
    memory.current_cell = None
    _hand_over(magics, memory)
    _add(memory, event)


def short_output(shell: Any, result: Any) -> str:
    """The text/plain repr IPython already computed for Out[n] (no new repr() of big values)."""
    value = result.result
    if value is None:
        return ""
    reprs = getattr(getattr(shell, "history_manager", None), "output_hist_reprs", None)
    # the displayhook filed it under its prompt count: n for In[n], and for a cell kept out of
    # history (as nbval runs them) the count it has now, which IPython 8 (the one Python 3.10
    # gets) and IPython 9 differ on
    hook = getattr(shell, "displayhook", None)
    kept = getattr(result.info, "store_history", True)
    key = result.execution_count if kept else getattr(hook, "prompt_count", None)
    text = reprs.get(key) if reprs is not None else None
    if text is None:
        if isinstance(value, str):
            text = repr(value[:OUTPUT_CAP])
        elif isinstance(value, int | float | bool):
            text = repr(value)
        else:
            text = f"<{type(value).__name__}>"
    return text[:OUTPUT_CAP]


def _backlog(magics: Any) -> deque[CellEvent]:
    return magics.__dict__.setdefault("_memory_backlog", deque(maxlen=BACKLOG))


def _hand_over(magics: Any, memory: Any) -> None:
    backlog = magics.__dict__.get("_memory_backlog")
    while backlog:
        _add(memory, backlog.popleft())


def _add(memory: Any, event: CellEvent) -> None:
    memory.add_cell(
        event.source,
        cell_id=event.cell_id,
        count=event.count,
        output=event.output,
        error=event.error,
    )


# --- the subcommands (declared in commands.py) ----------------------------------------


def open_memory(magics: Any) -> Any:
    """The session's memory with the backlog handed over; refused when memory is disabled."""
    session = magics.session
    memory = session.memory
    _hand_over(magics, memory)
    if not session.config.memory.enabled:
        raise UsageError(
            "memory is disabled",
            hint="set context.rag.enabled: true in the config "
            "(and `%config MiraiMagics.memory_enabled = True`)",
        )
    return memory


def search(memory: Any, query: str, k: int | None, everywhere: bool = False) -> None:
    """Show the hits for ``query``; those below ``context.rag.min_score`` are counted, not
    shown (a prompt would not get them either)."""
    query = query.strip()
    if not query:
        raise UsageError("search needs a query", hint='e.g. `search "how did we load the data"`')
    memory.flush(SEARCH_WAIT_S)
    hits = memory.search(query, k, everywhere=everywhere)
    floor = memory.settings.min_score
    shown = [h for h in hits if h.score >= floor]
    show_hits(query, shown, hidden=len(hits) - len(shown), floor=floor, everywhere=everywhere)


def stats(memory: Any) -> None:
    from .status import show_table

    show_table("mirai memory", memory.stats())


def forget(memory: Any, what: str) -> None:
    from .render import show_note

    show_note(memory.forget(what))


def rebuild(memory: Any) -> None:
    from .render import show_note

    description = memory.rebuild()
    memory.flush(SEARCH_WAIT_S)
    show_note(f"memory rebuilt: {description}")


def learn(memory: Any, pattern: str) -> None:
    from .render import show_note
    from .stream import stream_enabled

    if not pattern.strip():
        raise UsageError("learn needs a path or a glob", hint="e.g. `learn 'docs/**/*.md'`")
    live = stream_enabled(
        None, os.environ.get("MIRAI_STREAM"), memory.session.config.defaults.stream
    )
    bar = TextProgress("learn", live)
    report = memory.learn(pattern, bar)
    show_note(report.summary())


# --- display ------------------------------------------------------------------------------


class TextProgress:
    """A text progress bar in one display handle (only in a live frontend; nbval-safe)."""

    def __init__(self, label: str, live: bool, width: int = 24):
        self.label, self.width, self.last = label, width, (-1, -1)
        self.handle = display({"text/plain": ""}, raw=True, display_id=True) if live else None

    def __call__(self, done: int, total: int) -> None:
        if self.handle is None or (done, total) == self.last:
            return
        self.last = (done, total)
        self.handle.update({"text/plain": bar_text(self.label, done, total, self.width)}, raw=True)


def bar_text(label: str, done: int, total: int, width: int = 24) -> str:
    filled = round(width * done / total) if total else width
    return f"{label} [{'█' * filled}{'░' * (width - filled)}] {done}/{total} files"


def hit_rows(hits: list[Any]) -> list[tuple[str, str, str]]:
    from ..memory.context import snippet

    return [(f"{h.score:.2f}", h.label, snippet(h.body)) for h in hits]


def show_hits(
    query: str, hits: list[Any], hidden: int = 0, floor: float = 0.0, everywhere: bool = False
) -> None:
    """The search table: score, In[n] (another notebook's: its name first, or file:line),
    snippet; the title says how many hits scored below ``floor`` and were left out."""
    show_grid(
        hits_title(query, len(hits), hidden, floor, everywhere), SEARCH_COLUMNS, hit_rows(hits)
    )


def hits_title(query: str, shown: int, hidden: int, floor: float, everywhere: bool) -> str:
    where = " (all notebooks)" if everywhere else ""
    title = f'memory search "{query}"{where}: {shown} hit{"s" if shown != 1 else ""}'
    if hidden:
        title += f" ({hidden} more below min_score {floor:.2f})"
    return title
