"""Degradation rules: when the service struggles, calls get lighter until it recovers.

Three rules from ``degradation.rules``, each with hysteresis (it engages at one level and
lifts only at a better one, so it does not flap):

- ``rate_limit_429``: ≥ engage_after 429 answers for a model within window_s → new calls to
  a profile using that model go to the next profile of the fallback chain; lifts after
  recover_after_s without a 429 for that model.
- ``latency_high``: p95 latency of the last window_calls chat calls above p95_threshold_s →
  max_tokens × max_tokens_factor; lifts when the p95 drops below recover_below_s.
- ``error_rate_5percent``: error rate of the last window_calls chat calls ≥ threshold → the
  history sent is trimmed to history_messages; lifts below recover_below.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ErrorRateRule, LatencyRule, RateLimitRule, Rules
from ..quantiles import percentile

RATE_LIMIT, LATENCY, ERROR_RATE = "rate_limit_429", "latency_high", "error_rate_5percent"
# Calls that never reached the service say nothing about its health.
NOT_SENT = frozenset(
    {
        "quota_exceeded",
        "cancelled",
        "usage_error",
        "config_error",
        "context_too_long",
        "replay_miss",
    }
)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile of a non-empty sequence."""
    return percentile(values, 95) or 0.0


def hysteresis(engaged: bool, value: float, engage_at: float, lift_below: float) -> bool:
    """Next state: engage at ``engage_at``; once engaged, lift only below ``lift_below``."""
    return value >= lift_below if engaged else value >= engage_at


class RateLimitState:
    """429 answers per model in a time window; engaged models route to their fallback."""

    def __init__(self, rule: RateLimitRule, clock: Callable[[], float]):
        self.rule = rule
        self.clock = clock
        self.seen: dict[str, deque[float]] = {}
        self.engaged: set[str] = set()

    def record_429(self, model: str) -> bool:
        """Count one 429 for ``model``; True when this engaged the rule."""
        now = self.clock()
        times = self.seen.setdefault(model, deque())
        times.append(now)
        while times and times[0] <= now - self.rule.window_s:
            times.popleft()
        if model in self.engaged or len(times) < self.rule.engage_after:
            return False
        self.engaged.add(model)
        return True

    def active(self, model: str) -> bool:
        """Whether calls to ``model`` are diverted now (lifts after recover_after_s quiet)."""
        if model not in self.engaged:
            return False
        last = self.seen[model][-1] if self.seen.get(model) else -math.inf
        if self.clock() - last >= self.rule.recover_after_s:
            self.engaged.discard(model)
            return False
        return True


class WindowRule:
    """A value over the last N calls (p95 latency or error rate) with hysteresis."""

    def __init__(
        self,
        window: int,
        min_calls: int,
        engage_at: float,
        lift_below: float,
        measure: Callable[[Sequence[float]], float],
    ):
        self.samples: deque[float] = deque(maxlen=window)
        self.min_calls = min_calls
        self.engage_at, self.lift_below = engage_at, lift_below
        self.measure = measure
        self.engaged = False
        self.value = 0.0

    def add(self, sample: float) -> bool:
        """Add one call's sample; True when this engaged the rule."""
        self.samples.append(sample)
        if len(self.samples) < self.min_calls:
            return False
        was = self.engaged
        self.value = self.measure(self.samples)
        self.engaged = hysteresis(was, self.value, self.engage_at, self.lift_below)
        return self.engaged and not was


def latency_rule(rule: LatencyRule) -> WindowRule:
    return WindowRule(
        rule.window_calls, rule.min_calls, rule.p95_threshold_s, rule.recover_below_s, p95
    )


def error_rate_rule(rule: ErrorRateRule) -> WindowRule:
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return WindowRule(rule.window_calls, rule.min_calls, rule.threshold, rule.recover_below, mean)


class Degradation:
    """The three rules, fed by client observer events; asked by the policy on each call."""

    def __init__(self, rules: Rules, clock: Callable[[], float]):
        self.rules = rules
        self.rate_limit = RateLimitState(rules.rate_limit_429, clock)
        self.latency = latency_rule(rules.latency_high)
        self.errors = error_rate_rule(rules.error_rate_5percent)
        self.engagements: dict[str, int] = dict.fromkeys((RATE_LIMIT, LATENCY, ERROR_RATE), 0)

    def observe(self, event: str, record: Any, info: dict[str, Any]) -> None:
        """Client observer: 429 attempts feed the rate rule; finished chat calls the others."""
        if event == "attempt" and info.get("reason") == "429" and self.rules.rate_limit_429.enabled:
            self._count(RATE_LIMIT, self.rate_limit.record_429(record.model))
        if event != "call" or record.kind != "chat" or record.error_code in NOT_SENT:
            return
        if record.replayed:
            return
        if self.rules.latency_high.enabled:
            self._count(LATENCY, self.latency.add(record.latency_ms / 1000))
        if self.rules.error_rate_5percent.enabled:
            self._count(ERROR_RATE, self.errors.add(0.0 if record.ok else 1.0))

    def _count(self, rule: str, engaged_now: bool) -> None:
        if engaged_now:
            self.engagements[rule] += 1

    def diverted(self, model: str) -> bool:
        return self.rules.rate_limit_429.enabled and self.rate_limit.active(model)

    def latency_high(self) -> bool:
        return self.rules.latency_high.enabled and self.latency.engaged

    def error_rate_high(self) -> bool:
        return self.rules.error_rate_5percent.enabled and self.errors.engaged

    def active(self) -> list[str]:
        """Rules engaged now, e.g. ``["rate_limit_429 (gpt-4o)", "latency_high"]``."""
        models = sorted(m for m in list(self.rate_limit.engaged) if self.diverted(m))
        out = [f"{RATE_LIMIT} ({m})" for m in models]
        if self.latency_high():
            out.append(f"{LATENCY} (p95 {self.latency.value:.1f} s)")
        if self.error_rate_high():
            out.append(f"{ERROR_RATE} ({self.errors.value:.0%} errors)")
        return out
