"""Search hits and the context block they become in a prompt (pure formatting)."""

from __future__ import annotations

from dataclasses import dataclass

from ..text import clip
from ..tokens import count_text

HEADER = (
    "Earlier cells of this notebook that may be relevant (retrieved by similarity, "
    "most relevant first; they may be outdated):"
)


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

    @property
    def fence(self) -> str:
        return "python" if self.kind == "cell" or (self.file or "").endswith(".py") else ""


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
    parts: list[str] = []
    for hit in hits:
        text = render_hit(hit)
        if _tokens([*parts, text]) > max_tokens:
            if parts:
                break
            text = _shorten(text, max_tokens - _tokens([""]) - 1)
            if not text:
                break
        parts.append(text)
    if not parts:
        return "", 0
    return _join(parts), len(parts)


def _join(parts: list[str]) -> str:
    return "\n\n".join([HEADER, *parts])


def _tokens(parts: list[str]) -> int:
    return count_text(_join(parts))[0]


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
