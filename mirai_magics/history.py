"""Conversation history: the session's user/assistant turns, trimmed to a message budget.

Turns are stored redacted (``redact.redact_all``): a secret the user interpolated into one
prompt on purpose is sent with that prompt, never again with the history of later ones.
"""

from __future__ import annotations

from typing import Any

from .redact import redact_all

Message = dict[str, Any]


def trim(messages: list[Message], limit: int) -> list[Message]:
    """The last ``limit`` messages, never starting with an orphaned assistant reply."""
    if limit <= 0:
        return []
    window = messages[-limit:]
    while window and window[0].get("role") == "assistant":
        window = window[1:]
    return window


class History:
    """User and assistant messages of successful calls; only whole turns are stored."""

    def __init__(self, max_messages: int = 12):
        self.max_messages = max_messages
        self._messages: list[Message] = []

    def window(self, limit: int | None = None) -> list[Message]:
        """What is sent before the next prompt (a copy)."""
        size = self.max_messages if limit is None else min(limit, self.max_messages)
        return [dict(m) for m in trim(self._messages, size)]

    def append_turn(self, user: str, assistant: str) -> None:
        """Keep one successful turn, secrets redacted."""
        self._messages += [
            {"role": "user", "content": redact_all(user)},
            {"role": "assistant", "content": redact_all(assistant)},
        ]
        self._messages = trim(self._messages, self.max_messages)

    def clear(self) -> None:
        self._messages = []

    def __len__(self) -> int:
        return len(self._messages)
