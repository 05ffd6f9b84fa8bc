"""Secret redaction: key-shaped strings and values of secret-named environment variables."""

from __future__ import annotations

import os
import re

KEY_PATTERN = re.compile(
    r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys incl. sk-proj-…
    r"|\bBearer\s+[A-Za-z0-9._\-]{8,}"
    r"|\b(?:ghp|gho|github_pat|xox[abp]|AKIA)[A-Za-z0-9_\-]{10,}"
)
REDACTED = "[REDACTED]"
DEFAULT_SECRET_NAMES = ("KEY", "TOKEN", "SECRET", "PASSWORD")
_MIN_SECRET_LEN = 6


def looks_like_key(value: str) -> bool:
    """True when ``value`` contains something shaped like an API key or bearer token."""
    return bool(KEY_PATTERN.search(value))


def secret_env_values(names: tuple[str, ...] = DEFAULT_SECRET_NAMES) -> list[str]:
    """Values of environment variables whose name contains KEY, TOKEN, SECRET…

    Scanning os.environ costs ~0.2 ms, so the result is cached until a variable is added
    or removed, or the value of a secret-named variable changes (a rotated key).
    """
    cached = _cache.get(names)
    if cached is not None:
        size, secret_names, values = cached
        if size == len(os.environ) and all(os.environ.get(n) == v for n, v in secret_names):
            return values
    pairs = [
        (name, value)
        for name, value in os.environ.items()
        if any(part in name.upper() for part in names)
    ]
    values = sorted({v for _, v in pairs if len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True)
    _cache[names] = (len(os.environ), pairs, values)
    return values


_cache: dict[tuple[str, ...], tuple[int, list[tuple[str, str]], list[str]]] = {}


def redact(text: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    """Replace key-shaped strings and the given secret values with ``[REDACTED]``."""
    if not text:
        return text
    for secret in extra:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return KEY_PATTERN.sub(REDACTED, text)


def redact_all(text: str, names: tuple[str, ...] = DEFAULT_SECRET_NAMES) -> str:
    """Redact key shapes and the current values of secret-named environment variables."""
    return redact(text, secret_env_values(names))
