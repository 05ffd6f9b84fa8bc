"""Prompt assembly: system prompt (budgeted), format instruction, memory block, history, cell.

Tokens are counted here once per call (the system prompt against its budget, every
message for the request's pre-flight estimate) and handed to the client with the messages.
The memory block's message is marked by its type (``MemoryBlock``), never by its text.
Images (``images.ImagePart``, from ``{fig}`` or ``--image``) become image parts of the user
message where their tokens sit in the text; the history keeps ``[image 800×600]`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ContextTooLongError
from .images import ImagePart, content, count_flag, placeholder_text
from .tokens import PER_MESSAGE, count_text, message_image_tokens, message_text

FORMAT_INSTRUCTIONS = {
    "markdown": "",
    "text": "Answer in plain text without Markdown.",
    "code": (
        "Answer with exactly one fenced code block (```python … ```) holding runnable code, "
        "preceded by at most one short sentence."
    ),
    "json": "Answer with a single valid JSON object and nothing else.",
}
MESSAGES_OVERHEAD = 3  # tokens every chat request carries besides its messages


class MemoryBlock(str):
    """The text of the notebook-memory system message; its type marks the message."""


def is_memory_message(message: dict[str, Any]) -> bool:
    """True for the system message holding the notebook memory block."""
    return isinstance(message.get("content"), MemoryBlock)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, Any]]
    tokens: int  # all messages, with the per-message overhead (the pre-flight estimate)
    system_tokens: int
    exact: bool


@dataclass
class Prepared:
    """A cell's request ready to send: messages in order, profile and overrides."""

    user_text: str
    messages: list[dict[str, Any]]
    profile: str
    overrides: dict[str, Any]
    keep_history: bool
    prompt_tokens: int
    flags: list[str] = field(default_factory=list)

    def send_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Session.chat``/``stream_chat`` for this request."""
        return {**self.overrides, "prompt_tokens": self.prompt_tokens}


def system_prompt(base: str, extra: str | None, fmt: str) -> str:
    """The configured prompt, the user's --system text and the format instruction."""
    parts = [base.strip(), (extra or "").strip(), FORMAT_INSTRUCTIONS.get(fmt, "")]
    return "\n\n".join(p for p in parts if p)


def build_messages(
    *,
    system: str,
    history: list[dict[str, Any]],
    user: str | list[dict[str, Any]],
    memory_block: str = "",
    max_system_tokens: int = 1500,
) -> Prompt:
    """Messages in the order sent; raises ContextTooLongError when the system prompt is over."""
    system_tokens, exact = count_text(system)
    if system_tokens > max_system_tokens:
        kind = "" if exact else "estimated "
        raise ContextTooLongError(
            f"system prompt is {system_tokens} {kind}tokens, over the {max_system_tokens}-token "
            "limit"
        )
    messages: list[dict[str, Any]] = []
    tokens = MESSAGES_OVERHEAD
    if system:
        messages.append({"role": "system", "content": system})
        tokens += system_tokens + PER_MESSAGE
    rest = [*history, {"role": "user", "content": user}]
    if memory_block:
        rest.insert(0, {"role": "system", "content": MemoryBlock(memory_block)})
    for message in rest:
        n, was_exact = count_text(message_text(message))
        tokens += n + PER_MESSAGE + message_image_tokens(message)
        exact = exact and was_exact
    messages.extend(rest)
    return Prompt(messages, tokens, system_tokens, exact)


def prepare(
    text: str,
    request: Any,
    context: Any,
    history: list[dict[str, Any]],
    memory_block: str = "",
    flags: list[str] | None = None,
    images: list[ImagePart] | None = None,
) -> Prepared:
    """A cell's request (``ui.cell.CellRequest``) → the messages to send, counted once.

    ``context`` is the config's ``context`` section; ``history`` the window to send (already
    trimmed); ``memory_block`` and ``flags`` what the notebook memory found for ``text``;
    ``images`` go where their tokens are in ``text`` (the rest after it), at ``request.detail``.
    """
    images = list(images or [])
    detail = getattr(request, "detail", None) or "auto"
    prompt = build_messages(
        system=system_prompt(context.system_prompt, request.system, request.fmt),
        history=history,
        user=content(text, images, detail),
        memory_block=memory_block,
        max_system_tokens=context.system_prompt_max_tokens,
    )
    return Prepared(
        user_text=placeholder_text(text, images),
        messages=prompt.messages,
        profile=request.profile,
        overrides=request.overrides,
        keep_history=request.history,
        prompt_tokens=prompt.tokens,
        flags=[*(flags or []), *([count_flag(len(images))] if images else [])],
    )
