"""Token counting: tiktoken when its encoding is already on disk, else a labelled estimate.

Image parts count by OpenAI's published tile rule (``image_tokens``): 85 at ``low``; at
``high``/``auto`` the image is scaled to fit 2048×2048, then its shortest side to 768, and
each 512-px tile costs 170 on top of the base 85.
"""

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
        total += n + PER_MESSAGE + message_image_tokens(message)
        exact = exact and was_exact
    return total, exact


IMAGE_BASE, IMAGE_TILE = 85, 170
UNKNOWN_IMAGE = (1024, 1024)  # an http URL's size is not known before the API fetches it


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Tokens one image costs at ``detail`` (OpenAI's tile rule)."""
    if detail == "low":
        return IMAGE_BASE
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return IMAGE_BASE + IMAGE_TILE * math.ceil(width / 512) * math.ceil(height / 512)


def message_image_tokens(message: dict[str, Any]) -> int:
    """Tokens of the image parts of one message (sizes read from their data URLs)."""
    from .images import decode_data_url, image_urls

    total = 0
    for url, detail in image_urls([message]):
        try:
            _data, _fmt, width, height = decode_data_url(url)
        except ValueError:
            width, height = UNKNOWN_IMAGE
        total += image_tokens(width, height, detail)
    return total


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
