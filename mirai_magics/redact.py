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
    """Values of environment variables whose name contains KEY, TOKEN, SECRET…"""
    found = [
        value
        for name, value in os.environ.items()
        if len(value) >= _MIN_SECRET_LEN and any(part in name.upper() for part in names)
    ]
    return sorted(set(found), key=len, reverse=True)


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
