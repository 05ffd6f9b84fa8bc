"""Search hits: picked from the index's candidates, and the context block they become in a
prompt (pure functions).

Another notebook's cell (folder scope, or ``--all``) is labelled with that notebook's name
(``tour.ipynb In[7]``), never as this notebook's ``In[7]``; the same text stored by several
notebooks is one hit (this notebook's copy first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..text import clip
from ..tokens import count_text
from .identity import shown_name
from .tables import ROW_FIELDS

HEADER = (
    "Earlier cells of this notebook that may be relevant (retrieved by similarity, "
    "most relevant first; they may be outdated):"
)
HEADER_SHARED = (
    "Earlier cells of this notebook and of other notebooks (named before their In[n]) that "
    "may be relevant (retrieved by similarity, most relevant first; they may be outdated):"
)
_NOTEBOOK = ROW_FIELDS.split(", ").index("notebook")


@dataclass(frozen=True)
class Hit:
    """One search result: an entry of the memory and its cosine similarity to the query."""

    key: int
    score: float
    label: str
    kind: str
    body: str
    output: str
    error: bool
    source: str
    file: str | None = None
    notebook: str = ""  # the identity of the notebook that ran the cell (identity.py)
    elsewhere: bool = False  # another notebook's cell: ``label`` names that notebook

    @property
    def fence(self) -> str:
        return "python" if self.kind == "cell" or (self.file or "").endswith(".py") else ""


def pick_hits(
    candidates: Iterable[tuple[int, float]],
    rows: Mapping[int, Sequence[Any]],
    own: Sequence[str],
    exclude: set[str],
    min_score: float | None,
    k: int,
) -> list[Hit]:
    """The ``k`` best hits of (key, score) candidates and their store rows (ROW_FIELDS).

    ``own`` are the identities this kernel counts as its own notebook: their ``exclude``
    sources (the cell being run) are left out, other notebooks' cells are named.
    """
    ranked = sorted(
        ((score, rows[key]) for key, score in candidates if key in rows),
        key=lambda pair: (-pair[0], pair[1][_NOTEBOOK] not in own),  # ties: this notebook's
    )
    hits: list[Hit] = []
    seen: set[str] = set()
    for score, row in ranked:
        key, source, kind, label, _count, _run, body, output, error, file, notebook, sha = row
        mine = kind != "cell" or notebook in own
        if (mine and source in exclude) or sha in seen:
            continue
        if min_score is not None and score < min_score:
            break
        seen.add(sha)
        shown = label if mine else f"{shown_name(notebook)} {label}"
        fields = (shown, kind, body, output, bool(error), source, file, notebook, not mine)
        hits.append(Hit(key, score, *fields))
        if len(hits) == k:
            break
    return hits


def render_hit(hit: Hit) -> str:
    what = f"{hit.label}{' (raised an error)' if hit.error else ''}"
    lines = [f"{what} — similarity {hit.score:.2f}", f"```{hit.fence}", hit.body, "```"]
    if hit.output:
        lines += ["Output:", "```", hit.output, "```"]
    return "\n".join(lines)


def context_block(hits: list[Hit], max_tokens: int) -> tuple[str, int]:
    """The block for the prompt and how many hits it holds, within ``max_tokens``.

    Hits are added best first while the whole block fits; the first one is shortened to fit
    when alone it is over the budget (a partial cell beats none).
    """
    header = HEADER_SHARED if any(hit.elsewhere for hit in hits) else HEADER
    parts: list[str] = []
    for hit in hits:
        text = render_hit(hit)
        if _tokens([*parts, text], header) > max_tokens:
            if parts:
                break
            text = _shorten(text, max_tokens - _tokens([""], header) - 1)
            if not text:
                break
        parts.append(text)
    if not parts:
        return "", 0
    return _join(parts, header), len(parts)


def _join(parts: list[str], header: str) -> str:
    return "\n\n".join([header, *parts])


def _tokens(parts: list[str], header: str) -> int:
    return count_text(_join(parts, header))[0]


def _shorten(text: str, tokens: int) -> str:
    """``text`` cut until it fits in ``tokens`` (empty when too little room is left)."""
    note = "\n… (cut to fit the memory budget)"
    chars = max(tokens, 0) * 3
    while chars >= 40:
        cut = text[:chars].rstrip() + note
        if count_text(cut)[0] <= tokens:
            return cut
        chars = int(chars * 0.9)
    return ""


def snippet(text: str, width: int = 72) -> str:
    """One line: ``text`` with its whitespace collapsed, cut to ``width`` characters."""
    return clip(text, width)
