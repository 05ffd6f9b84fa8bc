"""Degradation rules: when the service struggles, calls get lighter until it recovers.

Each rule is one small class (tenacity-style: declared once, composed by the policy) that
observes attempts and calls, says whether it is ``engaged`` and applies its effect through
one or more of three hooks: ``reroutes`` (send a model's calls down the fallback chain),
``adjust`` (change the request parameters) and ``history_limit`` (send less history).
Every rule has hysteresis (it engages at one level and lifts only at a better one).

- ``rate_limit_429``: ≥ engage_after 429 answers for a model within window_s → new calls to
  a profile using that model go to the next profile of the fallback chain; lifts after
  recover_after_s without a 429 for that model.
- ``latency_high``: p95 latency of the last window_calls chat calls above p95_threshold_s →
  max_tokens × max_tokens_factor; lifts when the p95 drops below recover_below_s.
- ``error_rate_5percent``: error rate of the last window_calls chat calls ≥ threshold → the
  history sent is trimmed to history_messages; lifts below recover_below.

A new rule is a subclass decorated with ``@rule("name")``, a settings model with an
``enabled`` switch in ``config.Rules`` under the same name, and its YAML block.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..quantiles import percentile
from .observers import Messages, Observer
from .records import Attempt, CallRecord

Clock = Callable[[], float]
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
RULES: dict[str, type[Rule]] = {}  # name → class, in declaration order


def rule(name: str) -> Callable[[type[Rule]], type[Rule]]:
    """Register a rule class under the name its settings have in ``degradation.rules``."""

    def register(cls: type[Rule]) -> type[Rule]:
        cls.name = name
        RULES[name] = cls
        return cls

    return register


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile of a non-empty sequence."""
    return percentile(values, 95) or 0.0


def hysteresis(engaged: bool, value: float, engage_at: float, lift_below: float) -> bool:
    """Next state: engage at ``engage_at``; once engaged, lift only below ``lift_below``."""
    return value >= lift_below if engaged else value >= engage_at


def sent_chat(record: CallRecord) -> bool:
    """A live chat call that reached the service (what the window rules measure)."""
    return record.kind == "chat" and record.error_code not in NOT_SENT and not record.replayed


class Rule(Observer):
    """Base of a degradation rule; ``settings`` is its config model (with ``enabled``)."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Any, clock: Clock):
        self.settings = settings
        self.clock = clock
        self.engagements = 0  # times it engaged (for metrics and status)

    def engaged(self) -> bool:
        return False

    def status(self) -> list[str]:
        """What `%mirai status` says while engaged, e.g. ``["latency_high (p95 21.0 s)"]``."""
        return [self.name] if self.engaged() else []

    def reroutes(self, model: str) -> bool:
        """Whether new calls to ``model`` go to the next profile of the fallback chain."""
        return False

    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Request parameters to send, and what changed (None: this rule did nothing)."""
        return params, None

    def history_limit(self, limit: int) -> int:
        return limit

    def _count(self, engaged_now: bool) -> None:
        self.engagements += engaged_now


@rule("rate_limit_429")
class RateLimited(Rule):
    """429 answers per model in a time window; engaged models route to their fallback."""

    def __init__(self, settings: Any, clock: Clock):
        super().__init__(settings, clock)
        self.seen: dict[str, deque[float]] = {}
        self.models: set[str] = set()

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        if attempt.reason == "429":
            self._count(self.record_429(record.model))

    def record_429(self, model: str) -> bool:
        """Count one 429 for ``model``; True when this engaged the rule."""
        now = self.clock()
        times = self.seen.setdefault(model, deque())
        times.append(now)
        while times and times[0] <= now - self.settings.window_s:
            times.popleft()
        if model in self.models or len(times) < self.settings.engage_after:
            return False
        self.models.add(model)
        return True

    def reroutes(self, model: str) -> bool:
        """Whether calls to ``model`` are diverted now (lifts after recover_after_s quiet)."""
        if model not in self.models:
            return False
        last = self.seen[model][-1] if self.seen.get(model) else -math.inf
        if self.clock() - last >= self.settings.recover_after_s:
            self.models.discard(model)
            return False
        return True

    def engaged(self) -> bool:
        return any(self.reroutes(m) for m in list(self.models))

    def status(self) -> list[str]:
        return [f"{self.name} ({m})" for m in sorted(self.models) if self.reroutes(m)]


class WindowRule(Rule):
    """A value over the last N sent chat calls (p95 latency, error rate) with hysteresis."""

    engage_key: ClassVar[str]
    lift_key: ClassVar[str]

    def __init__(self, settings: Any, clock: Clock):
        super().__init__(settings, clock)
        self.samples: deque[float] = deque(maxlen=settings.window_calls)
        self.is_engaged = False
        self.value = 0.0

    def sample(self, record: CallRecord) -> float:
        raise NotImplementedError

    def measure(self, samples: Sequence[float]) -> float:
        raise NotImplementedError

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        if sent_chat(record):
            self._count(self.add(self.sample(record)))

    def add(self, sample: float) -> bool:
        """Add one call's sample; True when this engaged the rule."""
        self.samples.append(sample)
        if len(self.samples) < self.settings.min_calls:
            return False
        was = self.is_engaged
        self.value = self.measure(self.samples)
        engage_at = getattr(self.settings, self.engage_key)
        lift_below = getattr(self.settings, self.lift_key)
        self.is_engaged = hysteresis(was, self.value, engage_at, lift_below)
        return self.is_engaged and not was

    def engaged(self) -> bool:
        return self.is_engaged


@rule("latency_high")
class LatencyHigh(WindowRule):
    """p95 latency too high → a smaller output cap (shorter answers come back sooner)."""

    engage_key, lift_key = "p95_threshold_s", "recover_below_s"

    def sample(self, record: CallRecord) -> float:
        return record.latency_ms / 1000

    def measure(self, samples: Sequence[float]) -> float:
        return p95(samples)

    def status(self) -> list[str]:
        return [f"{self.name} (p95 {self.value:.1f} s)"] if self.engaged() else []

    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if not self.engaged():
            return params, None
        changed = []
        for key in ("max_tokens", "max_completion_tokens"):
            if params.get(key):
                cut = max(1, int(params[key] * self.settings.max_tokens_factor))
                changed.append(f"{key} {params[key]}→{cut}")
                params = {**params, key: cut}
        return params, ", ".join(changed) or "no output cap to cut"


@rule("error_rate_5percent")
class ErrorRateHigh(WindowRule):
    """Too many failed calls → less history per request (smaller, cheaper prompts)."""

    engage_key, lift_key = "threshold", "recover_below"

    def sample(self, record: CallRecord) -> float:
        return 0.0 if record.ok else 1.0

    def measure(self, samples: Sequence[float]) -> float:
        return sum(samples) / len(samples)

    def status(self) -> list[str]:
        return [f"{self.name} ({self.value:.0%} errors)"] if self.engaged() else []

    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if not self.engaged():
            return params, None
        return params, f"history ≤ {self.settings.history_messages}"

    def history_limit(self, limit: int) -> int:
        return min(limit, self.settings.history_messages) if self.engaged() else limit


def build_rules(rules_config: Any, clock: Clock) -> list[Rule]:
    """One instance of each enabled rule, configured from ``degradation.rules``."""
    out = []
    for name, cls in RULES.items():
        settings = getattr(rules_config, name)
        if settings.enabled:
            out.append(cls(settings, clock))
    return out
