"""Fault plan of the offline server: fault settings, scripted outcomes and seeded decisions.

Per API request :meth:`FaultPlan.decide` gives one :class:`Outcome`. ``down`` wins;
then the next scripted entry, if any; else three random draws, always in the same
order (drop, 429, 5xx) from ``random.Random(seed)``, so a seed gives one sequence.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
from collections import deque
from dataclasses import dataclass

SCRIPT_WORDS = ("ok", "hang", "drop", "html503", "down")
_STATUS_ENTRY = re.compile(r"^[45]\d\d$")


@dataclass
class Faults:
    """Fault injection settings; probabilities are in [0, 1]."""

    fail_429: float = 0
    retry_after: float | None = None
    retry_after_ms: int | None = None
    fail_5xx: float = 0
    status_5xx: int = 500
    html_503: bool = False
    latency_ms: float = 0
    hang: bool = False
    drop: float = 0
    down: bool = False
    force_status: int | None = None
    should_retry: bool | None = None
    # embeddings endpoint quirks of real providers:
    embed_max_chars: int | None = None  # 400 "maximum context length" for a longer input
    embed_refuse: str | None = None  # 400 for any input containing this text
    embed_dims: int | None = None  # answer with this width, ignoring `dimensions`

    def __post_init__(self) -> None:
        validate_faults(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FAULT_FIELDS = tuple(f.name for f in dataclasses.fields(Faults))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_faults(f: Faults) -> None:
    for name in ("fail_429", "fail_5xx", "drop"):
        value = getattr(f, name)
        _check(_is_number(value) and 0 <= value <= 1, f"{name} must be a probability in [0, 1]")
    for name in ("retry_after", "retry_after_ms"):
        value = getattr(f, name)
        _check(value is None or (_is_number(value) and value >= 0), f"{name} must be >= 0 or None")
    _check(_is_number(f.latency_ms) and f.latency_ms >= 0, "latency_ms must be >= 0")
    _check(isinstance(f.status_5xx, int) and 500 <= f.status_5xx <= 599, "status_5xx: 500..599")
    force = f.force_status
    _check(
        force is None or (isinstance(force, int) and 400 <= force <= 599), "force_status: 4xx/5xx"
    )
    for name in ("html_503", "hang", "down"):
        _check(isinstance(getattr(f, name), bool), f"{name} must be a boolean")
    _check(f.should_retry is None or isinstance(f.should_retry, bool), "should_retry: bool or None")
    for name in ("embed_max_chars", "embed_dims"):
        value = getattr(f, name)
        _check(
            value is None or (isinstance(value, int) and value >= 1), f"{name}: int >= 1 or None"
        )
    _check(f.embed_refuse is None or isinstance(f.embed_refuse, str), "embed_refuse: text or None")


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
