"""Estimated cost from the config's ``pricing`` table (USD per million tokens, pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-2024-08-06 → gpt-4o


def undated(model: str) -> str:
    """The model id without its date suffix (``gpt-4o-2024-11-20`` → ``gpt-4o``)."""
    return _DATED.sub("", model)


def price_for(model: str, prices: Mapping[str, Any]) -> Any:
    """The price of a model id, else of its undated name (a pinned version), else None."""
    return prices.get(model) or prices.get(undated(model))


def cost(tokens_in: int, tokens_out: int, price: Any) -> float:
    """USD for the tokens at ``price`` (``input``/``output`` per million tokens)."""
    return (tokens_in * price.input + tokens_out * price.output) / 1_000_000
