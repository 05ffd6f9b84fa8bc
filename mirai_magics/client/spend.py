"""Money: what calls cost per model, this session and today, against ``limits.budget_usd``.

``Admission`` asks ``hold(record)`` right before a call is sent (after its token
reservation). Its worst case — the pre-flight prompt count (``tokens_estimated`` less the
output cap) at the model's input price plus the output cap (uncapped: ``limits.tokens.
per_request_max``) at its output price — on top of what was spent and what calls in flight
hold, must fit ``per_session`` and ``per_day``; else the call is refused with one line that
names the setting. When the call ends, ``settle`` puts the cost of its reported usage in
place of the estimate, so totals are real costs (a stream cut before its usage chunk: the
estimate of what it was billed, ``CallRecord.cut_tokens_*``).

Per day is this machine's calendar day: what the call log holds for today from before this
session started (read on the first check, so a kernel restart keeps the day's spend; other
kernels count from their rows at that time), plus this session's calls. With a cap set, a
call whose model has no price is refused (list it under ``pricing:``): an unknown cost
cannot be capped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import TYPE_CHECKING

from ..errors import QuotaExceededError
from ..pricing import ModelSpend, Prices, usd
from ..schema import BudgetUsd
from .params import output_cap
from .records import CallRecord

if TYPE_CHECKING:
    from ..config import Config

KIND = "budget"  # QuotaExceededError.kind and the rejection counter of a refusal
SpentBefore = Callable[["Config", float, float], float]  # (config, since, until) → USD


@dataclass(frozen=True)
class Hold:
    """What a call in flight holds of the budgets: its estimated worst case, in USD."""

    amount: float


def logged_spend(config: Config, since: float, until: float) -> float:
    """USD the home's call log holds for calls started in [since, until)."""
    from ..calllog import cost_totals, main_log_path

    if not config.observability.call_log.enabled:
        return 0.0
    totals = cost_totals(main_log_path(config), since=since, until=until)
    return sum(t.cost for t in totals.values())


def midnight(day: date) -> float:
    """Epoch seconds of the day's local midnight."""
    return datetime(day.year, day.month, day.day).timestamp()


class Spend:
    """The session's spend per model and today's, and the holds of calls in flight.

    Changed on the engine thread, read by `%mirai status` on the kernel's: a lock.
    """

    def __init__(
        self, *, now: Callable[[], float] = time.time, spent_before: SpentBefore = logged_spend
    ):
        self.now, self._spent_before = now, spent_before
        self.started = now()
        self.config: Config | None = None
        self.prices = Prices()
        self.budget = BudgetUsd()
        self.by_model: dict[str, ModelSpend] = {}
        self.held = 0.0
        self.day: date | None = None
        self.day_before: float | None = None  # today's spend from before this session
        self.day_own = 0.0
        self._lock = threading.RLock()

    def configure(self, config: Config) -> None:
        """Prices and caps of ``config`` (construction and every reload); spend is kept."""
        self.config, self.prices = config, Prices.from_config(config)
        self.budget = config.limits.budget_usd

    # --- before and after a call -----------------------------------------------------

    def hold(self, record: CallRecord) -> Hold | None:
        """Reserve the call's worst case, or refuse it (QuotaExceededError, kind budget)."""
        caps = self.budget
        if caps.per_session is None and caps.per_day is None:
            return None
        prompt, out = self.worst_case(record)
        estimate = self.prices.tokens_cost(record, prompt, out, self.now())
        if estimate is None:
            raise unpriced_error(record)
        with self._lock:
            for name, cap in (("per_session", caps.per_session), ("per_day", caps.per_day)):
                if cap is None:
                    continue
                spent = self.held + (self.session_total if name == "per_session" else self._today())
                if spent + estimate > cap:
                    raise over_budget(name, cap, spent, estimate, record, (prompt, out))
            self.held += estimate
        return Hold(estimate)

    def settle(
        self, hold: Hold | None, record: CallRecord, failed: bool = False, cuts_from: int = 0
    ) -> None:
        """A hop of the call ended: its real cost replaces the hold. A hop that failed without
        usage cost nothing we know of and is not counted; its streams cut after the model
        began (``record.cuts[cuts_from:]``, this hop's) count from their estimate."""
        cost = self.prices.cost(record, cuts_from)
        with self._lock:
            if hold is not None:
                self.held = max(self.held - hold.amount, 0.0)
            if failed and record.tokens_in is None and not record.cuts[cuts_from:]:
                return
            self.by_model.setdefault(record.model, ModelSpend()).add(cost)
            self._roll()
            self.day_own += cost or 0.0

    def worst_case(self, record: CallRecord) -> tuple[int, int]:
        """(prompt tokens, output tokens) the call may use at most, before it is sent."""
        cap = output_cap(record.params)
        if record.kind != "chat":
            return record.tokens_estimated, 0
        uncapped = self.config.limits.tokens.per_request_max if self.config else 0
        return max(record.tokens_estimated - cap, 0), cap or uncapped

    # --- totals ----------------------------------------------------------------------

    @property
    def session_total(self) -> float:
        with self._lock:
            return sum(m.cost for m in self.by_model.values())

    def totals(self) -> dict[str, ModelSpend]:
        """A copy of this session's spend per model."""
        with self._lock:
            return {model: replace(spent) for model, spent in self.by_model.items()}

    def today(self) -> float:
        """USD spent today: the call log's rows from before this session, and this session."""
        with self._lock:
            return self._today()

    def _today(self) -> float:
        day = self._roll()
        if self.day_before is None:
            self.day_before = self._spent_before(self.config, midnight(day), self.started)
        return self.day_before + self.day_own

    def _roll(self) -> date:
        """Today; a new calendar day starts from nothing (its earlier rows are read again)."""
        day = date.fromtimestamp(self.now())
        if day != self.day:
            self.day, self.day_before, self.day_own = day, None, 0.0
        return day


def over_budget(
    setting: str,
    cap: float,
    spent: float,
    estimate: float,
    record: CallRecord,
    tokens: tuple[int, int],
) -> QuotaExceededError:
    """The one-line refusal naming ``limits.budget_usd.<setting>``."""
    when = "today" if setting == "per_day" else "this session"
    exc = QuotaExceededError(
        f"this call may cost up to {usd(estimate)} ({record.model}: ~{tokens[0]:,} tokens in, "
        f"≤ {tokens[1]:,} out), more than is left of limits.budget_usd.{setting} {usd(cap)} "
        f"({usd(spent)} spent {when}); it was not sent",
        kind=KIND,
    )
    exc.hint = (
        f"raise limits.budget_usd.{setting} (then `%mirai reload`), lower --max-tokens "
        "or use a cheaper profile" + (", or wait until tomorrow" if setting == "per_day" else "")
    )
    return exc


def unpriced_error(record: CallRecord) -> QuotaExceededError:
    """With a budget, a model without a price is refused: its cost cannot be capped."""
    exc = QuotaExceededError(
        f"limits.budget_usd is set but {record.model} has no known price, so the call was not "
        "sent (an unknown cost cannot be capped)",
        kind=KIND,
    )
    exc.hint = f"add it under pricing: ({record.model}: {{input: …, output: …}}, USD per 1M tokens)"
    return exc
