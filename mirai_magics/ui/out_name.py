"""Which variable `%%mirai --out NAME` may bind: an identifier the shell does not need (pure).

``--out get_ipython`` would replace the function every later magic calls; ``--out _`` or
``--out _i`` would be overwritten by IPython's own output and input caches at once, and a
builtin (``print``, ``len``) would be shadowed for the rest of the session.
"""

from __future__ import annotations

import builtins
import keyword
import re

from ..errors import UsageError

SHELL_NAMES = frozenset({"get_ipython", "In", "Out", "exit", "quit", "_", "__", "___"})
# IPython's input/output caches and directory history: _i, _ii, _i3, _ih, _o…, _oh, _dh, _3
_SHELL_PATTERN = re.compile(r"_i.*|_o.*|_dh.*|_\d+")


def shell_needs(name: str) -> bool:
    """True for names IPython or Python itself keeps in the user namespace."""
    return (
        name in SHELL_NAMES or _SHELL_PATTERN.fullmatch(name) is not None or hasattr(builtins, name)
    )


def check_out_name(name: str) -> str:
    """``name`` when `--out` may bind it; else a one-line UsageError."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"--out needs a Python identifier, got {name!r}", hint="e.g. --out answer")
    if shell_needs(name):
        raise UsageError(
            f"--out {name} would replace a name the notebook needs",
            hint="pick another variable, e.g. --out answer",
        )
    return name
