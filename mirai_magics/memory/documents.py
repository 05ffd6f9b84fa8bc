"""What gets remembered: executed cells → redacted documents with stable 63-bit keys.

Skipped: empty cells, `%%markdown`/`%%md` cells, cells holding `# mirai: no-index`, and
cells made only of line magics / shell escapes (`%load_ext …`, `!pip …`) or `%%mirai`
prompts (the conversation history already carries those). Secrets are redacted from the
source and the output before anything is hashed, embedded or stored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property

from ..redact import redact

KEY_MASK = (1 << 63) - 1  # usearch reserves 2^64 − 1; SQLite integers are signed 64-bit
NO_INDEX = re.compile(r"#\s*mirai:\s*no-index", re.IGNORECASE)
_MARKDOWN_MAGICS = ("%%markdown", "%%md")
_OWN_MAGICS = ("%%mirai",)
_HEX_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class CellEvent:
    """One executed cell as the post_run_cell hook saw it (raw, not yet redacted)."""

    source: str
    cell_id: str | None = None
    count: int | None = None
    output: str = ""
    error: str | None = None  # "ValueError: bad input" (never the exception: it holds frames)


@dataclass(frozen=True)
class Doc:
    """A redacted unit of memory: a cell or a chunk of a learned file."""

    source_id: str
    kind: str  # "cell" | "file"
    label: str
    body: str
    output: str = ""
    error: bool = False
    count: int | None = None
    file: str | None = None
    notebook: str = ""  # the notebook that ran the cell (identity.py); "" for learned files

    @cached_property
    def text(self) -> str:
        """The text that is embedded (and whose SHA-256 keys the embedding cache)."""
        return embed_text(self.body, self.output)

    @cached_property
    def sha(self) -> str:
        return sha256(self.text)

    @cached_property
    def key(self) -> int:
        return key_for(self.source_id, self.notebook)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def key_for(source_id: str, notebook: str = "") -> int:
    """A stable 63-bit key for a notebook's source id (the usearch key and the SQLite primary
    key); entries without a notebook keep the key they had before scopes existed."""
    name = f"{notebook}\0{source_id}" if notebook else source_id
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") & KEY_MASK


def embed_text(body: str, output: str) -> str:
    return f"{body}\n# output:\n{output}" if output else body


def skip_reason(source: str) -> str | None:
    """Why a cell is not indexed, or None when it is."""
    stripped = source.strip()
    if not stripped:
        return "empty"
    if NO_INDEX.search(source):
        return "no-index"
    first = stripped.split(None, 1)[0]
    if first in _MARKDOWN_MAGICS:
        return "markdown"
    if first in _OWN_MAGICS:
        return "mirai prompt"
    code = [
        ln.strip() for ln in stripped.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    if code and all(ln.startswith(("%", "!")) and not ln.startswith("%%") for ln in code):
        return "magics only"
    return None


def source_id(body: str, cell_id: str | None) -> str:
    """`cell:<frontend id>` when the frontend sends one, else the content's identity."""
    return f"cell:{cell_id}" if cell_id else f"src:{sha256(body)[:24]}"


def cell_doc(
    event: CellEvent, max_output_chars: int, secrets: list[str], notebook: str = ""
) -> Doc | None:
    """The document for an executed cell of ``notebook``, or None when the cell is skipped."""
    if skip_reason(event.source) is not None:
        return None
    body = redact(event.source.strip("\n"), secrets)
    output = redact(output_text(event, max_output_chars), secrets)
    label = f"In[{event.count}]" if event.count is not None else "cell"
    return Doc(
        source_id=source_id(body, event.cell_id),
        kind="cell",
        label=label,
        body=body,
        output=output,
        error=event.error is not None,
        count=event.count,
        notebook=notebook,
    )


def cell_changes(
    events: list[CellEvent], max_output_chars: int, secrets: list[str], notebook: str = ""
) -> tuple[dict[str, Doc], set[str]]:
    """The documents to store and the sources to forget, the events applied in order.

    A cell re-run with `# mirai: no-index` forgets it, also when both runs land in one batch;
    a later run without the marker brings it back.
    """
    docs: dict[str, Doc] = {}
    drops: set[str] = set()
    for event in events:
        doc = cell_doc(event, max_output_chars, secrets, notebook)
        if doc is not None:
            drops.discard(doc.source_id)
            docs[doc.source_id] = doc
        elif event.cell_id:  # a cell that opted out (or became a prompt) is forgotten
            dropped = source_id("", event.cell_id)
            docs.pop(dropped, None)
            drops.add(dropped)
    return docs, drops


def error_line(error: BaseException) -> str:
    """How a cell's exception is remembered: one line, no traceback, no frames kept alive."""
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not break the hook
        text = "(unprintable)"
    return f"{type(error).__name__}: {text}"


def output_text(event: CellEvent, max_chars: int) -> str:
    """The short text kept with a cell: its error line, else its result's repr, capped."""
    text = event.error if event.error is not None else (event.output or "")
    text = _HEX_ADDRESS.sub("", text.strip())  # ids change run to run; keep the SHA stable
    if len(text) > max_chars:
        text = text[: max(max_chars - 1, 0)] + "…"
    return text
