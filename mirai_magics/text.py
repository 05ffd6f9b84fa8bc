"""Text helpers shared by every layer: one way to squeeze text onto one line."""

from __future__ import annotations

ELLIPSIS = "…"


def clip(text: object, limit: int | None = None) -> str:
    """Collapse whitespace to single spaces and cut to ``limit`` characters (with "…")."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: max(limit - 1, 0)] + ELLIPSIS
