"""Fault plan of the offline server: fault settings, scripted outcomes and seeded decisions.

Per API request :meth:`FaultPlan.decide` gives one :class:`Outcome`. ``down`` wins;
then the next scripted entry, if any; else three random draws, always in the same
order (drop, 429, 5xx) from ``random.Random(seed)``, so a seed gives one sequence.

:class:`Faults` is the one declaration of the fault settings: each field's annotation
(``bool``, ``int``, ``float`` or ``str``, ``| None`` when None turns it off), default, help
and bounds (``fault(default, help, low=..., high=...)``). Everything else is derived from
it through :data:`FAULT_SPECS`: :func:`validate_faults`, the ``mirai serve`` flags
(``embed_max_chars`` -> ``--embed-max-chars``) and the keys ``/_mirai/faults`` accepts.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
import types
import typing
from collections import deque
from dataclasses import dataclass

SCRIPT_WORDS = ("ok", "hang", "drop", "html503", "down")
_STATUS_ENTRY = re.compile(r"^[45]\d\d$")
_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "text"}


def fault(
    default: object, help: str, *, low: float | None = None, high: float | None = None
) -> typing.Any:
    """A :class:`Faults` field: its default, its help line and inclusive bounds of numbers."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low, "high": high})


@dataclass
class Faults:
    """Fault injection settings; probabilities are in [0, 1]. Add a fault here, only here."""

    fail_429: float = fault(0, "probability of a 429 answer", low=0, high=1)
    retry_after: float | None = fault(None, "Retry-After seconds sent with 429", low=0)
    retry_after_ms: int | None = fault(None, "retry-after-ms sent with 429", low=0)
    fail_5xx: float = fault(0, "probability of a 5xx answer", low=0, high=1)
    status_5xx: int = fault(500, "status of injected 5xx answers", low=500, high=599)
    html_503: bool = fault(False, "5xx answers become 503 with an HTML body")
    latency_ms: float = fault(0, "latency added before each answer", low=0)
    hang: bool = fault(False, "never answer API requests")
    drop: float = fault(0, "probability of closing without an answer", low=0, high=1)
    down: bool = fault(False, "close every API connection immediately")
    force_status: int | None = fault(
        None, "answer every API request with this status", low=400, high=599
    )
    should_retry: bool | None = fault(None, "x-should-retry header sent with errors")
    # slow senders (each write keeps a per-read timeout from firing; only a deadline holds):
    drip_sse_s: float | None = fault(
        None,
        "streams: one SSE event every N s, never ending (keep-alives after the answer)",
        low=0.001,
    )
    drip_body_s: float | None = fault(
        None, "JSON answers: headers at once, then one byte of the body every N s", low=0.001
    )
    # embeddings endpoint quirks of real providers:
    embed_max_chars: int | None = fault(
        None, 'embeddings: 400 "maximum context length" for a longer input', low=1
    )
    embed_refuse: str | None = fault(None, "embeddings: 400 for any input containing this text")
    embed_dims: int | None = fault(
        None, "embeddings: answer with this width, ignoring `dimensions`", low=1
    )
    # model versions (pinned models, canaries):
    fail_models: str | None = fault(
        None, "answer requests for these model ids (comma list) with status_5xx"
    )
    answer_model: str | None = fault(
        None, "chat: report this `model` in answers instead of the requested one"
    )
    # typed answers (`response_format: json_schema`):
    schema_break: str | None = fault(
        None,
        "chat: a json_schema answer to a last user message containing this text gets its "
        "first field of the wrong type",
    )

    def __post_init__(self) -> None:
        validate_faults(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fails_model(self, model: object) -> bool:
        """``fail_models`` names this model id."""
        names = {m.strip() for m in (self.fail_models or "").split(",")}
        return isinstance(model, str) and model in names - {""}


@dataclass(frozen=True)
class FaultSpec:
    """One :class:`Faults` field as declared: what values it takes, its default and help."""

    name: str
    type: type  # bool, int, float or str
    optional: bool  # None is allowed (the fault is off)
    default: object
    help: str
    low: float | None = None
    high: float | None = None

    @property
    def flag(self) -> str:
        """Its ``mirai serve`` option: ``embed_max_chars`` -> ``--embed-max-chars``."""
        return "--" + self.name.replace("_", "-")

    @property
    def bounds(self) -> str:
        """``"in [0, 1]"``, ``"in 500..599"``, ``">= 1"`` or ``""`` (no bounds)."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            return f"in {low}..{high}" if self.type is int else f"in [{low}, {high}]"
        if low is not None:
            return f">= {low}"
        return f"<= {high}" if high is not None else ""

    @property
    def rule(self) -> str:
        """The values it takes, as error messages say it: "an integer >= 1 or None"."""
        text = " ".join(filter(None, (_TYPE_WORDS[self.type], self.bounds)))
        return f"{text} or None" if self.optional else text

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.optional
        if self.type in (bool, str):
            return isinstance(value, self.type)
        numbers = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numbers):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def check(self, value: object) -> None:
        """Raise a one-line ValueError unless ``value`` is allowed."""
        if not self.accepts(value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ValueError(f"{self.name} must be {self.rule}, not {shown}")


def _spec(f: dataclasses.Field, annotation: object) -> FaultSpec:
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if is_union else (annotation,)
    optional = type(None) in args
    rest = [a for a in args if a is not type(None)]
    base = rest[0] if len(rest) == 1 else None
    if base not in _TYPE_WORDS or "help" not in f.metadata:
        raise TypeError(
            f"Faults.{f.name}: declare as `name: T = fault(default, help)` "
            "with T one of bool, int, float, str, optionally `| None`"
        )
    meta = f.metadata
    spec = FaultSpec(f.name, base, optional, f.default, meta["help"], meta["low"], meta["high"])
    spec.check(spec.default)  # a bad declaration fails on import, not on first use
    return spec


def _specs() -> tuple[FaultSpec, ...]:
    hints = typing.get_type_hints(Faults)
    return tuple(_spec(f, hints[f.name]) for f in dataclasses.fields(Faults))


FAULT_SPECS: tuple[FaultSpec, ...] = _specs()
FAULT_FIELDS = tuple(spec.name for spec in FAULT_SPECS)


def validate_faults(f: Faults) -> None:
    """Check every field against its declaration; the first bad one raises ValueError."""
    for spec in FAULT_SPECS:
        spec.check(getattr(f, spec.name))


def normalize_entry(entry: object) -> str:
    """A script entry as its canonical string ("ok", "429", "html503", ...)."""
    text = str(entry).strip().lower() if isinstance(entry, (str, int)) else ""
    if text in SCRIPT_WORDS or _STATUS_ENTRY.match(text):
        return text
    raise ValueError(
        f"invalid script entry {entry!r}: use ok, hang, drop, html503, down or 4xx/5xx"
    )


def header_number(value: float) -> str:
    """``2`` -> "2", ``0.25`` -> "0.25" (never exponent notation)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def error_headers(faults: Faults, status: int | None) -> list[tuple[str, str]]:
    """Extra headers of an error response: Retry-After (429 only) and x-should-retry."""
    headers = []
    if status == 429 and faults.retry_after is not None:
        headers.append(("Retry-After", header_number(faults.retry_after)))
    if status == 429 and faults.retry_after_ms is not None:
        headers.append(("retry-after-ms", header_number(faults.retry_after_ms)))
    if faults.should_retry is not None:
        headers.append(("x-should-retry", "true" if faults.should_retry else "false"))
    return headers


@dataclass(frozen=True)
class Outcome:
    """What to do with one request: kind is ok, down, drop, hang, status or html503."""

    kind: str
    status: int | None
    faults: Faults

    def error_headers(self) -> list[tuple[str, str]]:
        return error_headers(self.faults, self.status)


def _from_entry(entry: str, faults: Faults) -> Outcome:
    if entry in ("ok", "hang", "drop", "down"):
        return Outcome(entry, None, faults)
    if entry == "html503":
        return Outcome("html503", 503, faults)
    status = int(entry)
    if status >= 500 and faults.html_503:
        return Outcome("html503", 503, faults)
    return Outcome("status", status, faults)


class FaultPlan:
    """Thread-safe holder of the current faults, the script queue and the seeded RNG."""

    def __init__(self, faults: Faults | None = None, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._initial = dataclasses.replace(faults or Faults())
        self._seed = seed
        self.faults = dataclasses.replace(self._initial)
        self._script: deque[str] = deque()
        self._rng = random.Random(seed)

    def update(self, **changes: object) -> Faults:
        unknown = set(changes) - set(FAULT_FIELDS)
        if unknown:
            raise TypeError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self.faults = dataclasses.replace(self.faults, **changes)  # validates
            return self.faults

    def script(self, entries: list[object], replace: bool = True) -> None:
        normalized = [normalize_entry(e) for e in entries]
        with self._lock:
            if replace:
                self._script.clear()
            self._script.extend(normalized)

    def pending_script(self) -> list[str]:
        with self._lock:
            return list(self._script)

    def reset(self) -> None:
        """Back to the constructor's faults, an empty script and a freshly seeded RNG."""
        with self._lock:
            self.faults = dataclasses.replace(self._initial)
            self._script.clear()
            self._rng = random.Random(self._seed)

    def decide(self) -> Outcome:
        with self._lock:
            f = self.faults
            if f.down:
                return Outcome("down", None, f)
            if self._script:
                return _from_entry(self._script.popleft(), f)
            r_drop, r_429, r_5xx = self._rng.random(), self._rng.random(), self._rng.random()
        return self._random_outcome(f, r_drop, r_429, r_5xx)

    @staticmethod
    def _random_outcome(f: Faults, r_drop: float, r_429: float, r_5xx: float) -> Outcome:
        if r_drop < f.drop:
            return Outcome("drop", None, f)
        if f.hang:
            return Outcome("hang", None, f)
        if f.force_status is not None:
            return _from_entry(str(f.force_status), f)
        if r_429 < f.fail_429:
            return Outcome("status", 429, f)
        if r_5xx < f.fail_5xx:
            if f.html_503:
                return Outcome("html503", 503, f)
            return Outcome("status", f.status_5xx, f)
        return Outcome("ok", None, f)
