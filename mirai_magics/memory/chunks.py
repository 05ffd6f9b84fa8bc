"""Learned files → chunks: .py by top-level blocks, .md by headings, .txt by paragraphs,
.ipynb by code cell (with the Markdown heading above it). Pure functions, no I/O."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..redact import redact
from .documents import NO_INDEX, Doc, sha256

SUFFIXES = (".py", ".md", ".txt", ".ipynb")
TARGET_CHARS = 1200  # merge small pieces up to about this size
MAX_CHARS = 2400  # split longer pieces at line boundaries
_PY_BLOCK = re.compile(r"^(?:def |class |async def |@|# %%|if __name__)")
_MD_HEADING = re.compile(r"^#{1,6} ")


@dataclass(frozen=True)
class Piece:
    """A run of lines of a file: its text and its first line number (1-based)."""

    text: str
    line: int


def split_lines(text: str, starts_block: re.Pattern[str] | None) -> list[Piece]:
    """Blocks that begin where ``starts_block`` matches (or at blank lines when None)."""
    pieces: list[Piece] = []
    current: list[str] = []
    first = 1
    for number, line in enumerate(text.splitlines(), start=1):
        if starts_block is not None:
            boundary = starts_block.match(line) is not None
        else:
            boundary = not line.strip()
        if boundary and any(s.strip() for s in current):
            pieces.append(Piece("\n".join(current), first))
            current, first = [], number
        current.append(line)
    if any(s.strip() for s in current):
        pieces.append(Piece("\n".join(current), first))
    return pieces


def merge(pieces: list[Piece], target: int = TARGET_CHARS, limit: int = MAX_CHARS) -> list[Piece]:
    """Join neighbours up to ``target`` characters, then cut anything over ``limit``."""
    merged: list[Piece] = []
    for piece in pieces:
        if merged and len(merged[-1].text) + len(piece.text) < target:
            merged[-1] = Piece(merged[-1].text + "\n" + piece.text, merged[-1].line)
        else:
            merged.append(piece)
    return [part for piece in merged for part in _cut(piece, limit)]


def _cut(piece: Piece, limit: int) -> list[Piece]:
    if len(piece.text) <= limit:
        return [piece]
    parts: list[Piece] = []
    lines, start, size, line_no = [], piece.line, 0, piece.line
    for line in piece.text.splitlines():
        if lines and size + len(line) > limit:
            parts.append(Piece("\n".join(lines), start))
            lines, size, start = [], 0, line_no
        lines.append(line[:limit])
        size += len(line) + 1
        line_no += 1
    if lines:
        parts.append(Piece("\n".join(lines), start))
    return parts


def notebook_pieces(text: str) -> list[Piece]:
    """Code cells of an .ipynb, each led by the last Markdown heading seen (as a comment).

    Raises ValueError for JSON that is not a notebook (the file is skipped with a note).
    """
    data = json.loads(text)
    cells = data.get("cells", []) if isinstance(data, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError("not a Jupyter notebook (no list of cell objects)")
    pieces, heading = [], ""
    for number, cell in enumerate(cells, start=1):
        source = cell.get("source", "")
        source = "".join(map(str, source)) if isinstance(source, list) else str(source)
        if cell.get("cell_type") == "markdown":
            heading = next((ln for ln in source.splitlines() if ln.strip()), heading)
        elif cell.get("cell_type") == "code" and source.strip() and not NO_INDEX.search(source):
            lead = f"# {heading.lstrip('# ').strip()}\n" if heading else ""
            pieces.append(Piece(lead + source, number))
    return pieces


def file_docs(path: str, label: str, text: str, secrets: list[str]) -> list[Doc]:
    """The documents of one file (redacted); empty when the file opts out with no-index."""
    if path.endswith(".ipynb"):
        pieces, unit = notebook_pieces(text), "cell"
    elif NO_INDEX.search(text):
        return []
    elif path.endswith(".py"):
        pieces, unit = merge(split_lines(text, _PY_BLOCK)), "line"
    elif path.endswith(".md"):
        pieces, unit = merge(split_lines(text, _MD_HEADING)), "line"
    else:
        pieces, unit = merge(split_lines(text, None)), "line"
    docs = []
    for piece in pieces:
        body = redact(piece.text.strip("\n"), secrets)
        where = f"{label}:{piece.line}" if unit == "line" else f"{label} [cell {piece.line}]"
        ident = f"file:{path}#{sha256(body)[:24]}"
        docs.append(Doc(source_id=ident, kind="file", label=where, body=body, file=path))
    return docs
