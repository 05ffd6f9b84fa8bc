"""``batch()``: one prompt per input row, run as background items, results aligned.

The input is a list (or any iterable) or a pandas Series (pandas is optional: a Series in,
a Series out, same index). ``template`` is a ``str.format`` string over ``item``:
``{item}``, ``{item.field}`` (also for dicts) or ``{item[0]}``. A row whose template fails
is a failed item with the reason, never an exception for the whole batch. Batch prompts
carry no notebook history or memory unless asked (``history=True`` / ``memory=True``).
With ``schema`` (an ``answer_schema.AnswerSchema``) the payloads ask for that JSON schema
(strict, plain JSON in the payload, so a worker needs no model class); the kernel checks
the answers when it collects them (``ItemResult.typed``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import UsageError
from ..prompt import build_messages, system_prompt
from ..redact import redact, secret_env_values
from ..text import clip
from .items import payload

FORMATS = ("text", "json", "markdown", "code")


class _Fields(dict):
    """A dict row whose keys read as attributes too: ``{item.city}``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"row has no field {name!r} (fields: {', '.join(self)})") from None

    def __format__(self, spec: str) -> str:
        return format(dict(self), spec)


def render(item: Any, template: str | None) -> str:
    """The prompt of one row; raises ValueError saying what is wrong with the template."""
    if template is None:
        return str(item)
    row = _Fields(item) if isinstance(item, dict) else item
    try:
        return template.format(item=row)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"template {clip(template, 60)!r} on this row: {exc}") from None


def rows_of(prompts: Any) -> tuple[list[Any], Any]:
    """The rows, and the pandas index to put back on the results (None for a list)."""
    if isinstance(prompts, str | bytes):
        raise UsageError(
            "batch() needs a list (or pandas Series) of prompts, got one string",
            hint="wrap it: batch([text])",
        )
    index = getattr(prompts, "index", None) if _is_series(prompts) else None
    if index is not None:
        return list(prompts.tolist()), index
    if not isinstance(prompts, Iterable):
        raise UsageError(f"batch() needs a list of prompts, got {type(prompts).__name__}")
    return list(prompts), None


def _is_series(value: Any) -> bool:
    return type(value).__name__ == "Series" and hasattr(value, "tolist")


def payloads(
    session: Any,
    rows: list[Any],
    profile: str,
    *,
    template: str | None,
    fmt: str,
    system: str | None = None,
    history: bool = False,
    memory: bool = False,
    overrides: dict[str, Any] | None = None,
    schema: Any = None,
) -> list[dict[str, Any]]:
    """One payload per row: the messages to send, counted once (or the template error)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if profile != "auto":  # auto: routing picks the profile per item
        session.config.chat_profile(profile)  # unknown: one line listing the known ones
    overrides = dict(overrides or {})
    if fmt == "json":
        json_format = {"type": "json_object"}
        overrides["response_format"] = schema.response_format() if schema else json_format
    context = session.config.context
    system_text = system_prompt(context.system_prompt, system, fmt)
    window = session.history.window() if history else []
    secrets = secret_env_values(tuple(session.config.security.redact_env_names))
    out = []
    for row in rows:
        try:
            text = render(row, template)
        except ValueError as exc:
            out.append({"invalid": str(exc), "profile": profile, "format": fmt})
            continue
        block = ""
        if memory and session.memory_enabled:
            block, _flags = session.memory.prompt_context(text, None)
        prompt = build_messages(
            system=system_text,
            history=window,
            user=text,
            memory_block=block,
            max_system_tokens=context.system_prompt_max_tokens,
        )
        messages = [{**m, "content": redact(str(m["content"]), secrets)} for m in prompt.messages]
        out.append(payload(messages, profile, fmt, overrides, prompt.tokens, session.user))
    return out
