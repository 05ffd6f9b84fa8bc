"""`%mirai fix`: the last traceback and the cell that raised it, as a prompt for `heavy`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import UsageError
from ..redact import redact_all
from .cell import CellRequest

MAX_SOURCE_CHARS = 6000


def fix_prompt(errors: Mapping[int, str], inputs: Sequence[str]) -> str:
    """A prompt asking for an explanation and a fix of the most recent error."""
    if not errors:
        raise UsageError("no error to fix yet", hint="run a cell that raises, then `%mirai fix`")
    count = max(errors)
    source = inputs[count] if 0 <= count < len(inputs) else "(source not available)"
    return (
        f"The notebook cell In[{count}] raised an error.\n\n"
        f"Cell source:\n```python\n{redact_all(source[-MAX_SOURCE_CHARS:])}\n```\n\n"
        f"Traceback:\n```\n{redact_all(_strip_ansi(errors[count]))}\n```\n\n"
        "Explain the cause in two or three sentences, then give the corrected cell as one "
        "fenced python code block."
    )


def fix_request(errors: Mapping[int, str], inputs: Sequence[str]) -> CellRequest:
    """The `%mirai fix` cell: the prompt above, to `heavy`, rendered as markdown, braces literal."""
    prompt = fix_prompt(errors, inputs)
    return CellRequest(text=prompt, profile="heavy", fmt="markdown", overrides={}, interp=False)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
