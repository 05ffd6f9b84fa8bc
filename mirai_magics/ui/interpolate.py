"""Interpolation of {name}, {obj.attr}, {seq[0]}, {In[n]}, {Out[n]}, {Err[n]} into a prompt (pure).

Only a brace pair that holds nothing but a reference is a candidate; anything else (dict
literals, JSON, ``{}`` in code, format specs) stays literal. A reference that cannot be
filled in stays literal and is reported (the badge lists it as undefined): its root name is
not defined, a step fails (whatever the attribute, property or ``__getitem__`` raises), or
the value has no text (its ``__str__`` raises or returns a non-string). ``{{name}}`` is the
escape for a literal ``{name}`` (other double braces, as in code, are left alone). One
pass: a substituted value is never scanned again. The text lists what it filled in
(``Filled.references``), so a secret interpolated on purpose can be sent yet never stored.
An image value (``images.is_image``: a figure, a PIL image, PNG bytes…) is not turned into
text: a token marks its place and the value is kept, unconverted, in ``Filled.images``
(``session.prepare`` makes the image parts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..images import TOKEN, is_image

_STEP = r"(?:\.[A-Za-z_]\w*|\[(?:-?\d+|'[^'\]\\]*'|\"[^\"\]\\]*\")\])"
_NAME = r"[A-Za-z_]\w*" + _STEP + "*"
_REF = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")
_STEPS = re.compile(_STEP)
MAX_VALUE_CHARS = 20_000


class Filled(str):
    """Interpolated text that knows each ``(reference, value)`` filled into it, in order."""

    references: tuple[tuple[str, str], ...]
    images: tuple[Any, ...]  # image values, in the order of their tokens in the text

    def __new__(
        cls, text: str, references: tuple[tuple[str, str], ...] = (), images: tuple = ()
    ) -> Filled:
        self = super().__new__(cls, text)
        self.references, self.images = references, images
        return self


@dataclass
class Interpolated:
    text: str
    undefined: list[str] = field(default_factory=list)  # references left literal


class _Missing(Exception):
    """A step of a reference could not be resolved, or its value has no text."""


def interpolate(text: str, namespace: Mapping[str, Any]) -> Interpolated:
    """Replace defined references in ``text`` with ``str(value)``; report undefined ones."""
    result = Interpolated(text)
    filled: list[tuple[str, str]] = []
    images: list[Any] = []

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
            if is_image(value):
                images.append(value)
                return TOKEN.format(len(images) - 1)
            value = _as_text(value)
        except _Missing:
            result.undefined.append(ref)
            return match.group(0)
        filled.append((ref, value))
        return value

    result.text = Filled(_REF.sub(substitute, text), tuple(filled), tuple(images))
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
    except Exception as exc:  # a user's property or __getitem__ may raise anything
        raise _Missing(step) from exc


def _as_text(value: Any) -> str:
    """``str(value)``, cut to MAX_VALUE_CHARS; _Missing when there is no text to be had."""
    try:
        text = str.__str__(value) if isinstance(value, str) else str(value)
    except Exception as exc:  # __str__ raised, or returned a non-string (TypeError)
        raise _Missing("str()") from exc
    if len(text) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS] + f"\n… [{len(text) - MAX_VALUE_CHARS} more characters cut]"
    return text
