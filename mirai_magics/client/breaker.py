"""Circuit breaker per model: closed → open → half-open probes → closed, on a monotonic clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from ..config import Breaker as BreakerSettings
from ..errors import CircuitOpenError


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Counts consecutive failures of one model; the lock guards state, never a call."""

    def __init__(
        self, model: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ):
        self.model = model
        self.settings = settings
        self.clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.probe_successes = 0
        self.reopen_at = 0.0
        self.probe_in_flight = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise CircuitOpenError if an attempt now would be refused; changes no state."""
        with self._lock:
            now = self.clock()
            open_now = self.state is State.OPEN and now < self.reopen_at
            if open_now or (self.state is State.HALF_OPEN and self.probe_in_flight):
                raise CircuitOpenError(self.model, max(self.reopen_at - now, 0.0))

    def acquire(self) -> bool:
        """Admit one attempt (True when it is a half-open probe) or raise CircuitOpenError."""
        with self._lock:
            now = self.clock()
            if self.state is State.OPEN and now >= self.reopen_at:
                self.state = State.HALF_OPEN
            if self.state is State.CLOSED:
                return False
            if self.state is State.HALF_OPEN and not self.probe_in_flight:
                self.probe_in_flight = True
                return True
            raise CircuitOpenError(self.model, max(self.reopen_at - now, 0.0))

    def success(self, probe: bool) -> None:
        with self._lock:
            self.failures = 0
            if probe:
                self.probe_in_flight = False
                self.probe_successes += 1
                if self.probe_successes >= self.settings.success_threshold:
                    self.state = State.CLOSED
                    self.probe_successes = 0

    def failure(self, probe: bool) -> None:
        """A counted failure (5xx, timeout, connection error)."""
        with self._lock:
            if probe:
                self.probe_in_flight = False
                self._open(self.settings.half_open_interval_s)
                return
            if self.state is not State.CLOSED:
                return  # a straggler that started before the breaker opened
            self.failures += 1
            if self.failures >= self.settings.failure_threshold:
                self._open(self.settings.timeout_s)

    def neutral(self, probe: bool) -> None:
        """An outcome that says nothing about health (429, other 4xx, cancellation)."""
        with self._lock:
            if probe:
                self.probe_in_flight = False

    def remaining_s(self) -> float:
        """Seconds until the next probe is admitted (0 when closed)."""
        with self._lock:
            if self.state is State.CLOSED:
                return 0.0
            return max(self.reopen_at - self.clock(), 0.0)

    def current_state(self) -> State:
        with self._lock:
            if self.state is State.OPEN and self.clock() >= self.reopen_at:
                return State.HALF_OPEN
            return self.state

    def _open(self, seconds: float) -> None:
        self.state = State.OPEN
        self.reopen_at = self.clock() + seconds
        self.failures = 0
        self.probe_successes = 0
