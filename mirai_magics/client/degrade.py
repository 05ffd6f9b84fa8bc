"""Degradation rules: when the service struggles, calls get lighter until it recovers.

The seed's ``degradation.rules`` is a list of ``{trigger, action}``. A *trigger* is a small
observer class that says whether it is engaged (for a model, or overall); an *action* is a
small class with one effect: ``reroutes`` (one step down the fallback chain), ``adjust``
(the request parameters) or ``history_limit`` (less history). A configured ``Rule`` pairs
one of each; the policy loops over the rules. Triggers:

- ``rate_limit_429`` (per model, sustained only): over the last ``window_s``, at least
  ``attempt_share`` of the model's attempts (≥ ``min_attempts``) or ``exhausted_share`` of its
  calls (≥ ``min_calls``) ended in 429. Isolated 429s that a retry absorbs do not engage it;
  it lifts by itself once the window holds no such evidence.
- ``latency_high``: p95 latency of the last window_calls chat calls ≥ p95_threshold_s;
  lifts below recover_below_s (hysteresis).
- ``error_rate_5percent``: error rate of the last window_calls chat calls ≥ threshold;
  lifts below recover_below.

Actions: ``switch_to_fast`` (new calls move one step down ``fallback_chain``: gpt-4o →
gpt-4o-mini), ``reduce_max_tokens`` (× max_tokens_factor, −30%), ``trim_context`` (history
sent cut to history_messages, 12 → 6).

A new trigger or action is one class here with ``@trigger("name")`` / ``@action("name")``,
its settings in ``schema.py`` and its YAML entry.
"""

from __future__ import annotations

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
TRIGGERS: dict[str, type[Trigger]] = {}
ACTIONS: dict[str, type[Action]] = {}


def _registry(table: dict[str, Any]) -> Callable[[str], Callable[[type], type]]:
    """A decorator factory: ``@deco("name")`` names the class and puts it in ``table``."""

    def named(name: str) -> Callable[[type], type]:
        def register(cls: type) -> type:
            cls.name = name  # type: ignore[attr-defined]
            table[name] = cls
            return cls

        return register

    return named


trigger = _registry(TRIGGERS)  # @trigger("rate_limit_429"): its ``trigger:`` name
action = _registry(ACTIONS)  # @action("switch_to_fast"): its ``action:`` name


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile of a non-empty sequence."""
    return percentile(values, 95) or 0.0


def hysteresis(engaged: bool, value: float, engage_at: float, lift_below: float) -> bool:
    """Next state: engage at ``engage_at``; once engaged, lift only below ``lift_below``."""
    return value >= lift_below if engaged else value >= engage_at


def sent_chat(record: CallRecord) -> bool:
    """A live chat call that reached the service (what the window triggers measure)."""
    return record.kind == "chat" and record.error_code not in NOT_SENT and not record.replayed


# --- triggers -------------------------------------------------------------------------------


class Trigger(Observer):
    """Base: observes attempts and calls; ``engaged_for(model)`` (overall unless per model)."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Any, clock: Clock):
        self.settings = settings
        self.clock = clock
        self.engagements = 0

    def engaged(self) -> bool:
        return False

    def engaged_for(self, model: str) -> bool:
        return self.engaged()

    def status(self) -> str | None:
        """Why it is engaged, for `%mirai status` (None while not engaged)."""
        return self.name if self.engaged() else None


class _Window:
    """(time, flag) samples of the last ``window_s`` seconds."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, bool]] = deque()

    def add(self, now: float, flag: bool) -> None:
        self.samples.append((now, flag))

    def share(self, now: float, window_s: float, at_least: int) -> float:
        """Share of flagged samples, 0 when there are fewer than ``at_least``."""
        while self.samples and self.samples[0][0] <= now - window_s:
            self.samples.popleft()
        n = len(self.samples)
        return sum(flag for _, flag in self.samples) / n if n >= at_least else 0.0


@trigger("rate_limit_429")
class RateLimited(Trigger):
    """Sustained 429s per model: most attempts, or a share of whole calls, rate limited."""

    def __init__(self, settings: Any, clock: Clock):
        super().__init__(settings, clock)
        self.attempts: dict[str, _Window] = {}
        self.calls: dict[str, _Window] = {}
        self.models: set[str] = set()  # engaged now

    def on_attempt(self, record: CallRecord, attempt: Attempt) -> None:
        now, model = self.clock(), record.model
        self.attempts.setdefault(model, _Window()).add(now, attempt.reason == "429")
        if attempt.ok or attempt.final:  # this model's tries for the call are over
            exhausted = not attempt.ok and attempt.reason == "429"
            self.calls.setdefault(model, _Window()).add(now, exhausted)
        self.engaged_for(model)

    def engaged_for(self, model: str) -> bool:
        s, now = self.settings, self.clock()
        attempts, calls = self.attempts.get(model), self.calls.get(model)
        on = bool(
            (attempts and attempts.share(now, s.window_s, s.min_attempts) >= s.attempt_share)
            or (calls and calls.share(now, s.window_s, s.min_calls) >= s.exhausted_share)
        )
        if on and model not in self.models:
            self.engagements += 1
            self.models.add(model)
        elif not on:
            self.models.discard(model)
        return on

    def engaged(self) -> bool:
        return any(self.engaged_for(m) for m in list(self.models))

    def status(self) -> str | None:
        engaged = sorted(m for m in list(self.models) if self.engaged_for(m))
        return f"{self.name} ({', '.join(engaged)})" if engaged else None


class WindowTrigger(Trigger):
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
            self.engagements += self.add(self.sample(record))

    def add(self, sample: float) -> bool:
        """Add one call's sample; True when this engaged the trigger."""
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


@trigger("latency_high")
class LatencyHigh(WindowTrigger):
    engage_key, lift_key = "p95_threshold_s", "recover_below_s"

    def sample(self, record: CallRecord) -> float:
        return record.latency_ms / 1000

    def measure(self, samples: Sequence[float]) -> float:
        return p95(samples)

    def status(self) -> str | None:
        return f"{self.name} (p95 {self.value:.1f} s)" if self.engaged() else None


@trigger("error_rate_5percent")
class ErrorRateHigh(WindowTrigger):
    engage_key, lift_key = "threshold", "recover_below"

    def sample(self, record: CallRecord) -> float:
        return 0.0 if record.ok else 1.0

    def measure(self, samples: Sequence[float]) -> float:
        return sum(samples) / len(samples)

    def status(self) -> str | None:
        return f"{self.name} ({self.value:.0%} errors)" if self.engaged() else None


# --- actions --------------------------------------------------------------------------------


class Action:
    """Base: no effect. ``settings`` is the rule's entry (its action parameters)."""

    name: ClassVar[str] = ""
    reroutes: ClassVar[bool] = False

    def __init__(self, settings: Any):
        self.settings = settings

    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Request parameters to send, and what changed (None: nothing to do)."""
        return params, None

    def history_limit(self, limit: int) -> int:
        return limit


@action("switch_to_fast")
class SwitchToFast(Action):
    """New calls to an engaged model go one step down the fallback chain."""

    reroutes = True


@action("reduce_max_tokens")
class ReduceMaxTokens(Action):
    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        changed = []
        for key in ("max_tokens", "max_completion_tokens"):
            if params.get(key):
                cut = max(1, int(params[key] * self.settings.max_tokens_factor))
                changed.append(f"{key} {params[key]}→{cut}")
                params = {**params, key: cut}
        return params, ", ".join(changed) or "no output cap to cut"


@action("trim_context")
class TrimContext(Action):
    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        return params, f"history ≤ {self.settings.history_messages}"

    def history_limit(self, limit: int) -> int:
        return min(limit, self.settings.history_messages)


# --- a configured rule ------------------------------------------------------------------------


class Rule:
    """One ``{trigger, action}`` entry: the action applies while the trigger is engaged."""

    def __init__(self, settings: Any, clock: Clock):
        self.settings = settings
        self.trigger = TRIGGERS[settings.trigger](settings, clock)
        self.action = ACTIONS[settings.action](settings)
        self.name = self.trigger.name

    @property
    def engagements(self) -> int:
        return self.trigger.engagements

    def reroutes(self, model: str) -> bool:
        return self.action.reroutes and self.trigger.engaged_for(model)

    def adjust(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if self.action.reroutes or not self.trigger.engaged():
            return params, None
        return self.action.adjust(params)

    def history_limit(self, limit: int) -> int:
        return self.action.history_limit(limit) if self.trigger.engaged() else limit

    def status(self) -> str | None:
        why = self.trigger.status()
        return f"{why} → {self.action.name}" if why else None


def build_rules(degradation: Any, clock: Clock) -> list[Rule]:
    """The enabled rules of ``degradation`` (none when ``degradation.enabled`` is false)."""
    if not degradation.enabled:
        return []
    return [Rule(entry, clock) for entry in degradation.rules if entry.enabled]
