"""Text helpers shared by every layer: one way to squeeze text onto one line, and the code
blocks or JSON inside a model's answer."""

from __future__ import annotations

import json
import re
from typing import Any

ELLIPSIS = "…"
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def clip(text: object, limit: int | None = None) -> str:
    """Collapse whitespace to single spaces and cut to ``limit`` characters (with "…")."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: max(limit - 1, 0)] + ELLIPSIS


def extract_code(text: str) -> str | None:
    """The fenced code blocks of an answer joined, or None when there is none."""
    blocks = [body.rstrip() for _lang, body in _FENCE.findall(text)]
    blocks = [b for b in blocks if b.strip()]
    return "\n\n".join(blocks) if blocks else None


def json_problem(exc: json.JSONDecodeError) -> str:
    """One line on why an answer is not JSON."""
    return f"invalid JSON from the model: {exc.msg} (line {exc.lineno})"


def json_text(text: str) -> str:
    """The JSON of an answer: its text without one surrounding code fence."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = extract_code(stripped) or stripped
    return stripped


def parse_json(text: str) -> Any:
    """Parse an answer as JSON, tolerating one surrounding code fence."""
    return json.loads(json_text(text))
