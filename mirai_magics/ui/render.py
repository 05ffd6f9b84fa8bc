"""Display of answers by format, badges and one-line errors in the notebook."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from IPython.display import display

from ..text import extract_code, json_problem, parse_json
from .badges import badge_html, badge_text, error_html, error_text

__all__ = ["Rendered", "extract_code", "parse_json", "render_answer", "show_badge", "show_error"]


@dataclass
class Rendered:
    """What the answer turned into: flags for the badge, and parsed JSON when valid."""

    flags: list[str]
    data: Any = None
    error: str | None = None
    code: str | None = None  # what `--format code` put into the next cell


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


def render_answer(text: str, fmt: str, shell: Any, handle: Any = None) -> Rendered:
    """Show the final answer (in ``handle`` when streaming) and apply the format's effect."""
    rendered = Rendered(flags=[])
    if fmt == "json":
        try:
            rendered.data = parse_json(text)
        except json.JSONDecodeError as exc:
            rendered.error = json_problem(exc)
            rendered.flags.append("invalid JSON")
    _show(answer_bundle(text, fmt, rendered.data), handle)
    if fmt == "code":
        code = extract_code(text)
        if code is None:
            rendered.flags.append("no code block found")
        else:
            shell.set_next_input(code, replace=False)
            rendered.code = code
            rendered.flags.append("code → next cell")
    return rendered


def show_badge(record: Any, flags: list[str], prices: Any = None) -> None:
    display(
        {
            "text/html": badge_html(record, flags, prices),
            "text/plain": badge_text(record, flags, prices),
        },
        raw=True,
    )


def show_error(message: str, handle: Any = None) -> None:
    """One red line (HTML) with a text/plain twin; replaces a live stream when given."""
    _show({"text/html": error_html(message), "text/plain": error_text(message)}, handle)


def show_note(text: str) -> None:
    display({"text/plain": text, "text/markdown": f"*{text}*"}, raw=True)


def _show(bundle: dict[str, Any], handle: Any) -> None:
    if handle is not None:
        handle.update(bundle, raw=True)
    else:
        display(bundle, raw=True)
