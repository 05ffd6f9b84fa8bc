"""`%mirai memory stats`: entries, embedder, index, files on disk, cache hits and misses."""

from __future__ import annotations

from typing import Any

from .identity import is_folder, shown_name


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"


def file_sizes(home: Any) -> str:
    names = ("memory.sqlite", "memory.sqlite-wal", "memory.usearch", "memory.usearch.json")
    sizes = [(name, (home / name).stat().st_size) for name in names if (home / name).exists()]
    return " · ".join(f"{name} {human_bytes(size)}" for name, size in sizes) or "(none yet)"


def stats_rows(memory: Any, state: Any) -> list[tuple[str, str]]:
    """(label, value) rows for the stats table."""
    counts = state.store.counts(state.embedder.name)
    scope = memory.scope_of(state.notebook)
    waiting = state.store.vectors.pending_count(state.embedder.name, scope)
    pending = waiting + memory.indexer.pending()
    refused, reason = state.store.vectors.failures(state.embedder.name)
    rows = [
        (
            "entries",
            f"{counts['entries']:,} ({counts['cells']:,} cells, {counts['chunks']:,} chunks "
            f"from {counts['files']:,} learned files)",
        ),
        ("scope", scope_text(scope, state.notebook, state.store.cells_by_notebook())),
        ("pending", f"{pending:,} not embedded yet"),
    ]
    if refused:
        note = f"{refused:,} not embeddable (`rebuild` retries them): {reason[:160]}"
        rows.append(("refused", note))
    rows += [
        ("embedder", state.embedder.name),
        ("dims", str(state.embedder.dims)),
        ("index", state.index.describe()),
        ("index memory", human_bytes(state.index.nbytes)),
        ("cache (this session)", f"{memory.hits:,} hits · {memory.misses:,} misses"),
        ("files", file_sizes(state.home)),
        ("directory", str(state.home)),
    ]
    if memory.last_error:
        rows.append(("last error", memory.last_error))
    return rows


def scope_text(scope: tuple[str, ...] | None, notebook: str, cells: dict[str, int]) -> str:
    """Whose cells this kernel finds: ``notebook tour.ipynb: 12 of 40 cells; `search --all`
    also searches 2 other notebooks``, or with folder scope ``folder: 40 cells of 3 notebooks``."""
    total = sum(cells.values())
    if scope is None:
        return f"folder: {total:,} cells of {_notebooks(len(cells))}"
    mine = sum(cells.get(name, 0) for name in scope)
    others = sum(1 for name in cells if name not in scope)
    if is_folder(notebook):
        who = f"{shown_name(notebook)} (no notebook known)"
    else:
        who = f"notebook {shown_name(notebook)}"
    text = f"{who}: {mine:,} of {total:,} cells"
    return text + (
        f"; `search --all` also searches {_notebooks(others, 'other ')}" if others else ""
    )


def _notebooks(n: int, other: str = "") -> str:
    return f"{n:,} {other}notebook{'s' if n != 1 else ''}"
