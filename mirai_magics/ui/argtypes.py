"""argparse types of `%%mirai` and `%mirai` arguments: every number bounded, names not blank.

A number is checked here, before it reaches SQLite (64-bit integers), the vector index
(k-sized buffers) or the API: ``-n 99999999999999999999`` is one usage line, not an
OverflowError, and ``-k -3`` or ``--model ''`` are refused instead of passed on.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..errors import UsageError
from .out_name import check_out_name

MAX_COUNT = 1_000_000  # rows listed, jobs, cell numbers
MAX_HITS = 100  # memory hits per search or cell (as context.rag.top_k)
MAX_TOKENS = 10_000_000  # an output cap above any model's and below any overflow
MAX_TEMPERATURE = 2.0  # the OpenAI range; a profile's max_temperature caps it further
MAX_MODEL_CHARS = 256


def _whole(text: str, high: int) -> int | None:
    """``text`` as a whole number 0…``high`` (ASCII digits only), else None."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > len(str(high)):
        return None
    value = int(text)
    return value if value <= high else None


def bounded(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number ``low``…``high``."""

    def parse(text: str) -> int:
        value = _whole(text, high)
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"needs a whole number {low}–{high:,}, got {text!r}")
        return value

    return parse


def count(text: str) -> int:
    """argparse type: a whole number, 0 to MAX_COUNT."""
    value = _whole(text, MAX_COUNT)
    if value is None:
        limit = f" up to {MAX_COUNT:,}" if text.isascii() and text.isdigit() else ""
        raise argparse.ArgumentTypeError(f"needs a whole number{limit}, got {text!r}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    value = _whole(text, 65535)
    if value is None:
        raise argparse.ArgumentTypeError(f"needs a number 0–65535, got {text!r}")
    return value


hits = bounded(0, MAX_HITS)
tokens = bounded(1, MAX_TOKENS)


def cell_number_or_all(text: str) -> str:
    """argparse type: ``all`` or a cell number In[N] (kept as text, as the handler takes it)."""
    if text == "all":
        return text
    if _whole(text, MAX_COUNT) is None:
        raise argparse.ArgumentTypeError(
            f"needs a cell number (0–{MAX_COUNT:,}) or all, got {text!r}"
        )
    return text


def temperature(text: str) -> float:
    """argparse type: a sampling temperature, 0 to MAX_TEMPERATURE (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= MAX_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"needs a number 0–{MAX_TEMPERATURE:g}, got {text!r}")
    return value


def model_name(text: str) -> str:
    """argparse type: a model name: not empty, no spaces or control characters.

    IPython splits a cell magic's line keeping quotes (``--model ''`` arrives as two quote
    characters), so one pair of matching quotes around the name is taken off first.
    """
    name = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
    if not name or len(name) > MAX_MODEL_CHARS or not name.isprintable() or " " in name:
        raise argparse.ArgumentTypeError(f"needs a model name (e.g. gpt-4o-mini), got {text!r}")
    return name


def variable(text: str) -> str:
    """argparse type: a variable `--out` may bind (not one the shell needs, see out_name)."""
    try:
        return check_out_name(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
