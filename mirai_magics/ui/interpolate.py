"""Interpolation of {name}, {obj.attr}, {seq[0]}, {In[n]}, {Out[n]}, {Err[n]} into a prompt (pure).

Only a brace pair that holds nothing but a reference is a candidate; anything else (dict
literals, JSON, ``{}`` in code, format specs) stays literal. A reference whose root name is
not defined stays literal and is reported; ``{{name}}`` is the escape for a literal
``{name}`` (other double braces, as in code, are left alone). One pass: a substituted value
is never scanned again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_STEP = r"(?:\.[A-Za-z_]\w*|\[(?:-?\d+|'[^'\]\\]*'|\"[^\"\]\\]*\")\])"
_NAME = r"[A-Za-z_]\w*" + _STEP + "*"
_REF = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")
_STEPS = re.compile(_STEP)
MAX_VALUE_CHARS = 20_000


@dataclass
class Interpolated:
    text: str
    undefined: list[str] = field(default_factory=list)


class _Missing(Exception):
    """A step of a reference could not be resolved."""


def interpolate(text: str, namespace: Mapping[str, Any]) -> Interpolated:
    """Replace defined references in ``text`` with ``str(value)``; report undefined ones."""
    result = Interpolated(text)

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is not None:  # {{name}}: the escape for a literal {name}
            return "{" + match.group(1) + "}"
        ref = match.group(2)
        root = ref.split(".", 1)[0].split("[", 1)[0]
        if root not in namespace:
            result.undefined.append(ref)
            return match.group(0)
        try:
            value = resolve(ref, namespace)
        except _Missing:
            result.undefined.append(ref)
            return match.group(0)
        return _as_text(value)

    result.text = _REF.sub(substitute, text)
    return result


def resolve(ref: str, namespace: Mapping[str, Any]) -> Any:
    """Walk ``name(.attr|[index])*`` without eval; private attributes are refused."""
    root_len = len(re.match(r"[A-Za-z_]\w*", ref).group(0))  # type: ignore[union-attr]
    value = namespace[ref[:root_len]]
    for step in _STEPS.findall(ref[root_len:]):
        value = _step(value, step)
    return value


def _step(value: Any, step: str) -> Any:
    try:
        if step.startswith("."):
            if step[1:].startswith("_"):
                raise _Missing(step)
            return getattr(value, step[1:])
        key = step[1:-1]
        index: Any = key[1:-1] if key[0] in "'\"" else int(key)
        return value[index]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise _Missing(step) from exc


def _as_text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS] + f"\n… [{len(text) - MAX_VALUE_CHARS} more characters cut]"
    return text
