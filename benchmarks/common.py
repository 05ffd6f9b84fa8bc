"""Shared pieces of the benchmark scripts: a fake key, quota-free config, a millisecond timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

KEY = "sk-test-bench-0000000000000000"
# The benchmarks measure overhead, not rate shaping: lift the quotas out of the way.
BENCH_CONFIG = """
limits:
  requests_per_second: {chat: 1000000, embeddings: 1000000}
  tokens: {global_per_minute: 1000000000, per_user_per_minute: 1000000000}
"""


def timed_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn`` in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000
