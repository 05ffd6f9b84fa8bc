"""Markers shared by test modules."""

from __future__ import annotations

import importlib.util

import pytest

# genai-prices is a dependency on Python 3.11+ only (its marker in pyproject.toml): tests that
# assert its prices, or a budget over a model only it prices, skip on 3.10
needs_genai_prices = pytest.mark.skipif(
    importlib.util.find_spec("genai_prices") is None, reason="genai-prices: Python 3.11+"
)
