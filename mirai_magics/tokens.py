"""Token counting: tiktoken when its encoding is already on disk, else a labelled estimate."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

MARGIN = 1.25
PER_MESSAGE = 4
_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


def estimate_text(text: str) -> int:
    """Script-aware estimate: ASCII chars/4, other chars/3, plus a 25% margin."""
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    other = len(text) - ascii_chars
    return math.ceil((ascii_chars / 4 + other / 3) * MARGIN)


def count_text(text: str) -> tuple[int, bool]:
    """(tokens, exact) for one text: exact with a cached tiktoken encoding, else estimated."""
    encoding = _encoding()
    if encoding is not None:
        return len(encoding.encode(text, disallowed_special=())), True
    return estimate_text(text), False


def count_messages(messages: Iterable[dict[str, Any]]) -> tuple[int, bool]:
    """Tokens for a chat message list, with the per-message overhead."""
    total, exact = 3, True
    for message in messages:
        n, was_exact = count_text(message_text(message))
        total += n + PER_MESSAGE
        exact = exact and was_exact
    return total, exact


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of text parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@lru_cache(maxsize=1)
def _encoding() -> Any:
    """tiktoken's o200k encoding if its BPE file is cached locally; never downloads."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache"
    )
    cached = os.path.join(cache_dir, hashlib.sha1(_BPE_URL.encode()).hexdigest())
    if os.environ.get("MIRAI_NO_TIKTOKEN") or not os.path.exists(cached):
        return None
    try:
        import tiktoken

        return tiktoken.get_encoding("o200k_base")
    except Exception:  # a corrupt cache or a missing package: fall back to the estimate
        return None


# Context windows of known models (tokens, prompt and output together); prefixes match dated
# versions (gpt-4o-2024-08-06). ``limits.context_windows`` in the config adds or overrides.
CONTEXT_WINDOWS = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1-preview": 128_000,
    "o1-mini": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 128_000


def context_window(model: str, overrides: dict[str, int] | None = None) -> int:
    """The model's context window: the longest matching name or prefix, else 128k."""
    table = {**CONTEXT_WINDOWS, **(overrides or {})}
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    return table[max(matches, key=len)] if matches else DEFAULT_CONTEXT_WINDOW
