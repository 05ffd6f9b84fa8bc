"""What the indexer's queue carries besides cell events, and one round's plan of work.

The items (``FileJob``, ``BACKFILL``) and ``Plan`` live here, below both the indexer that
drains the queue and the rounds that fill a plan, so imports go one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .documents import Doc


@dataclass
class FileJob:
    """A learned file's chunks; ``done(ok)`` is called once they are stored and embedded."""

    path: str
    sha: str
    docs: list[Doc]
    done: Callable[[bool], None] = lambda ok: None


class Backfill:
    """Marker: embed entries that have no vector from the current embedder yet."""


BACKFILL = Backfill()


@dataclass
class Plan:
    """One round's work after the store step: texts to embed (by SHA) and callbacks."""

    misses: dict[str, str] = field(default_factory=dict)
    jobs: list[FileJob] = field(default_factory=list)
    ok: bool = True
    more: bool = False  # a backfill that stopped at its batch size
