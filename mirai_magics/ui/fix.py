"""`%mirai fix`: the last traceback and the cell that raised it, as a prompt for `heavy`.

The traceback names the notebook's cells as IPython does (``Cell In[10], line 2``), not by
the kernel's temporary files, and the memory block of the prompt never repeats the failing
cell: its source is in the prompt already. Both are redacted before anything is sent (a
password in a connection URL of the traceback, a secret assigned in the cell).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..redact import redact_all

MAX_SOURCE_CHARS = 6000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class FailedCell:
    """The last cell that raised: its count, source, frontend id and traceback text."""

    count: int
    source: str
    cell_id: str | None = None
    traceback: str = ""


def failed_cell(result: Any, shell: Any) -> FailedCell | None:
    """The failed cell of an ExecutionResult (None when it did not fail): post_run_cell."""
    error = result.error_in_exec or result.error_before_exec
    # IPython 8 (the one Python 3.10 gets) leaves out the count of a cell run without history
    # (as nbval runs them): it is the shell's, which that cell did not move on
    count = result.execution_count
    count = getattr(shell, "execution_count", None) if count is None else count
    if error is None or count is None:
        return None
    info = result.info
    return FailedCell(
        count,
        getattr(info, "raw_cell", None) or "",
        getattr(info, "cell_id", None),
        format_error(error, cell_names(shell)),
    )


def format_error(error: BaseException, name_of: Callable[[str], str] = str) -> str:
    """The traceback of a cell's error without IPython's own frames, capped in size; a
    frame's file is shown as ``name_of(filename)`` (``Cell In[10]`` for a cell)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "IPython/core" not in f.filename
    ]
    lines = ["Traceback (most recent call last):\n"]
    for frame in frames:
        place = name_of(frame.filename)
        place = place if place.startswith("Cell ") else f'File "{place}"'
        lines.append(f"  {place}, line {frame.lineno}, in {frame.name}\n")
        if frame.line:
            lines.append(f"    {frame.line.strip()}\n")
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)[-8000:]


def cell_names(shell: Any) -> Callable[[str], str]:
    """``Cell In[10]`` for a cell's code file, as IPython's own tracebacks say (not the
    kernel's ``/tmp/ipykernel_…/….py``); any other file keeps its path."""
    named = getattr(getattr(shell, "compile", None), "format_code_name", None)

    def name_of(filename: str) -> str:
        label = named(filename) if named is not None else None
        return " ".join(label) if label else filename

    return name_of


def fix_prompt(cell: FailedCell | None) -> str:
    """A prompt asking for an explanation and a fix of the most recent error."""
    if cell is None:
        raise UsageError("no error to fix yet", hint="run a cell that raises, then `%mirai fix`")
    source = cell.source or "(source not available)"
    return (
        f"The notebook cell In[{cell.count}] raised an error.\n\n"
        f"Cell source:\n```python\n{redact_all(source[-MAX_SOURCE_CHARS:])}\n```\n\n"
        f"Traceback:\n```\n{redact_all(_ANSI.sub('', cell.traceback))}\n```\n\n"
        "Explain the cause in two or three sentences, then give the corrected cell as one "
        "fenced python code block."
    )


def fix_request(cell: FailedCell | None) -> Any:
    """The `%mirai fix` cell: the prompt above, to `heavy`, rendered as markdown, braces literal."""
    from .cell import CellRequest

    prompt = fix_prompt(cell)
    return CellRequest(text=prompt, profile="heavy", fmt="markdown", overrides={}, interp=False)


def keep_out_of_memory(session: Any, cell: FailedCell) -> None:
    """Retrieval skips the failing cell for this call, as it skips the running one (the
    `%mirai fix` cell itself is never indexed: it holds only a line magic)."""
    if session.memory_enabled:
        session.memory.current_cell = (cell.cell_id, cell.source)
