"""CallRecord and Reply: what one call did, as plain data every later stage reads.

A call's degradations live in one typed list, ``CallRecord.degradations``: a rule that
changed the call (``latency_high`` cut max_tokens), a rule that rerouted it
(``rate_limit_429``: heavy → main), or a fallback after a failure (``fallback``: 429). The
badge, the JSON log, metrics, tracing, the call log and the load report all read it.

``latency_ms`` is the client's own time (retries, backoff and fallback included). A notebook
cell waits longer: first-call setup and the memory retrieval come before the call. The cell
sets ``wait_ms`` (the whole wait, from the cell's start) and ``memory_ms`` (retrieval) so that
the badge shows the wait the user saw, with its parts (``10.0 s (5.0 s model · 5.0 s memory)``).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

_ids = itertools.count(1)
FALLBACK = "fallback"  # Degradation.rule of a hop after a failed profile (detail: why)


def new_call_id() -> str:
    """A short id unique within this process (pid + counter)."""
    return f"call-{os.getpid():x}-{next(_ids)}"


@dataclass(frozen=True)
class Degradation:
    """One way a call was made lighter or moved: by a rule, or by falling back."""

    rule: str  # "rate_limit_429", "latency_high", "error_rate_5percent" or FALLBACK
    detail: str = ""  # "429", "5xx", "circuit_open", "max_tokens 2000→1400", "history ≤ 6"
    from_profile: str | None = None  # set for a reroute: the call moved between profiles
    to_profile: str | None = None
    # the model from_profile used (filled by CallRecord.degrade; not part of equality)
    from_model: str | None = field(default=None, compare=False)

    @property
    def reroutes(self) -> bool:
        return self.to_profile is not None

    @property
    def reason(self) -> str:
        """Why, in one word: the rule, or for a fallback what failed (``429``, ``5xx``)."""
        return self.detail if self.rule == FALLBACK else self.rule

    @property
    def label(self) -> str:
        """Stable name for logs and reports: the rule, or ``fallback:<reason>``."""
        return f"{FALLBACK}:{self.detail}" if self.rule == FALLBACK else self.rule


@dataclass(frozen=True)
class Route:
    """How ``auto`` chose a cell's profile: the profile, why, and by which classifier."""

    profile: str
    reason: str  # "code generation", "classification", "simple question", …
    classifier: str = "local"  # local, or fast (one short call to the fast profile)
    tokens_in: int = 0  # the fast classifier's own tokens
    tokens_out: int = 0


@dataclass
class Attempt:
    """One HTTP attempt as observers see it: why it failed (or "ok"), and whether it was the
    model's last try for this call (not retryable, or its ``max_retries`` used up)."""

    reason: str
    ok: bool
    final: bool = False
    latency_s: float | None = None  # from just before the request to its end (or failure)


@dataclass(frozen=True)
class Cut:
    """One attempt's stream cut before its usage chunk: its estimated tokens, and where."""

    model: str
    endpoint: str | None
    tokens_in: int
    tokens_out: int


@dataclass
class CallRecord:
    """Everything the badge, metrics, logs and the call log need about one call."""

    profile: str
    model: str
    kind: str = "chat"
    requested_profile: str = ""
    id: str = field(default_factory=new_call_id)
    started_at: float = field(default_factory=time.time)
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_estimated: int = 0
    # attempts whose stream was cut (deadline, Ctrl-C, a dropped connection) after the model
    # started answering but before its usage chunk: the provider bills them all the same, so
    # their prompt and the text received so far are counted, estimated (budgets, cost, badge),
    # each at the model of its hop
    cuts: list[Cut] = field(default_factory=list)
    latency_ms: float = 0.0
    attempts: int = 0
    retry_reasons: list[str] = field(default_factory=list)
    degradations: list[Degradation] = field(default_factory=list)
    offline: bool = False
    streamed: bool = False
    replayed: bool = False
    replayed_from: str | None = None  # call id of the recording that answered
    finish_reason: str | None = None
    breaker: str = "closed"
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    quota: str | None = None  # which quota refused the call ("rate", "tokens", "request", …)
    user: str = ""
    route: Route | None = None  # set when the call asked for ``auto``
    response_model: str | None = None  # the model the API says answered (``response.model``)
    canary: str | None = None  # the canary model version this call was sent to, if any
    canary_suspended: str | None = None  # why its profile's canary is off for this session
    endpoint: str | None = None  # the ``endpoints:`` entry that answered; None: the default
    wait_ms: float | None = None  # a cell's whole wait (setup + memory + this call); None: API
    memory_ms: float = 0.0  # of wait_ms: retrieving notebook memory into the prompt

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def cut_tokens_in(self) -> int:
        return sum(cut.tokens_in for cut in self.cuts)

    @property
    def cut_tokens_out(self) -> int:
        return sum(cut.tokens_out for cut in self.cuts)

    @property
    def reroute(self) -> Degradation | None:
        """The last hop that moved the call, when the answering profile is not the one asked."""
        if self.profile == self.requested_profile:
            return None
        return next((d for d in reversed(self.degradations) if d.reroutes), None)

    @property
    def degraded_from(self) -> str | None:
        """The profile asked for, when another one answered."""
        return self.requested_profile if self.reroute is not None else None

    def new_hop(self) -> None:
        """A fallback hop starts: the previous profile's answer fields do not carry over."""
        self.tokens_in = self.tokens_out = self.response_model = self.finish_reason = None
        self.offline = False

    def degrade(self, degradation: Degradation) -> None:
        """Add a degradation once (a rule that applies to every hop is listed once); a hop
        away from the profile in use keeps that profile's model (``heavy/gpt-4o → main``)."""
        if degradation in self.degradations:
            return
        if degradation.reroutes and degradation.from_profile == self.profile and self.model:
            degradation = replace(degradation, from_model=degradation.from_model or self.model)
        self.degradations.append(degradation)

    @property
    def fallbacks(self) -> list[Degradation]:
        """The hops after a failed profile, in order (the chain this call went down)."""
        return [d for d in self.degradations if d.rule == FALLBACK]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    """A successful answer: the text and the record of how it was obtained; ``tool_calls``
    are the calls the model asked for (``Session.chat(..., tools=…)``), as plain dicts
    ``{"id", "name", "arguments"}`` (arguments parsed from JSON); nothing runs them."""

    text: str
    record: CallRecord
    tool_calls: list[dict[str, Any]] = field(default_factory=list, kw_only=True)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        r = self.record
        return f"Reply({len(self.text)} chars, {r.profile}/{r.model}, {r.latency_ms:.0f} ms)"
