"""Display of answers by format, badges and one-line errors in the notebook.

Every answer's output (and its badge) carries ``metadata: {"mirai": {call_id, profile, model,
tokens_in, tokens_out, cost}}``, so a tool reading a saved notebook can tell which call made
it; ``cost`` is the estimate from the config's ``pricing`` (None offline or unpriced).

A typed answer (`--schema`) arrives already checked (``answer_schema.Checked``): ``.data`` is
the model instance or dict, shown as its JSON; a mismatch is one red line naming the field,
and the raw text stays in ``_mirai.text``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from IPython.display import display

from ..answer_schema import Checked, plain
from ..client.records import CallRecord, Reply
from ..text import extract_code, json_problem, parse_json
from .badges import badge_html, badge_text, error_html, error_text, estimated_cost

__all__ = [
    "CellReply",
    "Rendered",
    "answer_metadata",
    "extract_code",
    "parse_json",
    "render_answer",
    "show_badge",
    "show_error",
]


@dataclass(repr=False)  # Reply's one-line repr: text length, profile/model, latency
class CellReply(Reply):
    """`_mirai`: the answer as the cell showed it (rich in the notebook) and as plain data.

    ``.text`` and ``.record`` as on any Reply; ``.data`` is the parsed JSON of a
    ``--format json`` answer (with ``--schema``: the model instance or dict, None when it did
    not match); ``.value`` is what ``--out NAME`` stores (``.data`` for JSON, else ``.text``);
    ``.metadata`` is the output metadata the answer was shown with.
    """

    fmt: str = "markdown"
    data: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> Any:
        return self.data if self.fmt == "json" else self.text  # JSON null: None, not "null"

    def _repr_markdown_(self) -> str | None:
        return self.text if self.fmt in ("markdown", "code") else None

    def _repr_json_(self) -> Any:
        return plain(self.data) if self.fmt == "json" and self.data is not None else None


@dataclass
class Rendered:
    """What the answer turned into: flags for the badge, and parsed JSON when valid."""

    flags: list[str]
    data: Any = None
    error: str | None = None
    code: str | None = None  # what `--format code` put into the next cell
    reply: CellReply | None = None  # `_mirai`


def answer_metadata(record: CallRecord, prices: Any = None) -> dict[str, Any]:
    """The output metadata of an answer and its badge: which call made it, at what cost."""
    facts = {
        "call_id": record.id,
        "profile": record.profile,
        "model": record.model,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "cost": estimated_cost(record, prices or {}),
    }
    return {"mirai": facts}


def answer_bundle(text: str, fmt: str, data: Any = None) -> dict[str, Any]:
    """MIME bundle for the answer (markdown rendered; JSON as data when parsed, ``data``;
    other formats as plain text)."""
    if fmt == "json" and data is not None:
        return {
            "application/json": data,
            "text/plain": json.dumps(data, indent=2, ensure_ascii=False),
        }
    if fmt in ("markdown", "code"):  # code answers show their fences rendered
        return {"text/markdown": text, "text/plain": text}
    return {"text/plain": text}


def render_answer(
    reply: Reply,
    fmt: str,
    shell: Any,
    handle: Any = None,
    prices: Any = None,
    checked: Checked | None = None,
) -> Rendered:
    """Show the final answer (in ``handle`` when streaming) and apply the format's effect;
    ``checked``: the answer against its `--schema` (the typed value, or why it is not)."""
    text = reply.text
    rendered = Rendered(flags=[])
    if checked is not None:
        rendered.data, rendered.error = checked.data, checked.error
        rendered.flags.append(f"typed: {checked.name}" if checked.ok else "schema mismatch")
    elif fmt == "json":
        try:
            rendered.data = parse_json(text)
        except json.JSONDecodeError as exc:
            rendered.error = json_problem(exc)
            rendered.flags.append("invalid JSON")
    metadata = answer_metadata(reply.record, prices)
    _show(answer_bundle(text, fmt, plain(rendered.data)), handle, metadata)
    if fmt == "code":
        code = extract_code(text)
        if code is None:
            rendered.flags.append("no code block found")
        else:
            shell.set_next_input(code, replace=False)
            rendered.code = code
            rendered.flags.append("code → next cell")
    rendered.reply = CellReply(text, reply.record, fmt, rendered.data, metadata)
    return rendered


def show_badge(record: Any, flags: list[str], prices: Any = None) -> None:
    bundle = {
        "text/html": badge_html(record, flags, prices),
        "text/plain": badge_text(record, flags, prices),
    }
    display(bundle, raw=True, metadata=answer_metadata(record, prices))


def error_bundle(message: str) -> dict[str, str]:
    """One red line (HTML) with its text/plain twin."""
    return {"text/html": error_html(message), "text/plain": error_text(message)}


def show_error(message: str, handle: Any = None) -> None:
    """One red line; replaces a live stream when given."""
    _show(error_bundle(message), handle)


def show_note(text: str) -> None:
    display({"text/plain": text, "text/markdown": f"*{text}*"}, raw=True)


def _show(bundle: dict[str, Any], handle: Any, metadata: dict[str, Any] | None = None) -> None:
    if handle is not None:
        handle.update(bundle, raw=True, metadata=metadata)
    else:
        display(bundle, raw=True, metadata=metadata)
