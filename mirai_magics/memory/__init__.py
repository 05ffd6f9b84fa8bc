"""Notebook memory: executed cells indexed in the background, retrieved into prompts.

Importing this package is cheap: ``NotebookMemory`` (and with it the indexer) loads on first
access; numpy, usearch and SQLite load when the memory opens.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NotebookMemory"]


def __getattr__(name: str) -> Any:
    if name == "NotebookMemory":
        from .notebook import NotebookMemory

        return NotebookMemory
    raise AttributeError(name)
