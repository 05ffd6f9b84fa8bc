"""Prompt assembly: system prompt (budgeted), format instruction, memory block, history, cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ContextTooLongError
from .tokens import count_text

FORMAT_INSTRUCTIONS = {
    "markdown": "",
    "text": "Answer in plain text without Markdown.",
    "code": (
        "Answer with exactly one fenced code block (```python … ```) holding runnable code, "
        "preceded by at most one short sentence."
    ),
    "json": "Answer with a single valid JSON object and nothing else.",
}


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, Any]]
    system_tokens: int
    system_exact: bool


def system_prompt(base: str, extra: str | None, fmt: str) -> str:
    """The configured prompt, the user's --system text and the format instruction."""
    parts = [base.strip(), (extra or "").strip(), FORMAT_INSTRUCTIONS.get(fmt, "")]
    return "\n\n".join(p for p in parts if p)


def build_messages(
    *,
    system: str,
    history: list[dict[str, Any]],
    user: str,
    memory_block: str = "",
    max_system_tokens: int = 1500,
) -> Prompt:
    """Messages in the order sent; raises ContextTooLongError when the system prompt is over."""
    tokens, exact = count_text(system)
    if tokens > max_system_tokens:
        kind = "" if exact else "estimated "
        raise ContextTooLongError(
            f"system prompt is {tokens} {kind}tokens, over the {max_system_tokens}-token limit"
        )
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    if memory_block:
        messages.append({"role": "system", "content": memory_block})
    messages.extend(history)
    messages.append({"role": "user", "content": user})
    return Prompt(messages, tokens, exact)
