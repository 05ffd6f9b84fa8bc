"""Breaker state machine and retry policy pieces on a fake clock (no real time passes)."""

from __future__ import annotations

import email.utils

import pytest

from mirai_magics.client.breaker import CircuitBreaker, State
from mirai_magics.client.retry import backoff, retry_after_seconds
from mirai_magics.config import Breaker
from mirai_magics.errors import CircuitOpenError


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker("gpt-4o", Breaker(), clock)


def fail(breaker, n):
    for _ in range(n):
        breaker.failure(breaker.acquire())


def test_opens_after_five_consecutive_failures_not_four(breaker):
    fail(breaker, 4)
    assert breaker.current_state() is State.CLOSED
    breaker.success(breaker.acquire())  # a success resets the count
    fail(breaker, 4)
    assert breaker.current_state() is State.CLOSED
    fail(breaker, 1)
    assert breaker.current_state() is State.OPEN


def test_open_rejects_with_remaining_seconds_without_extending(breaker, clock):
    fail(breaker, 5)
    clock.now += 20
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.remaining_s == pytest.approx(40)
    assert "retry in 40 s" in str(info.value)
    clock.now += 39.9
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # rejections did not push the reopen time
    clock.now += 0.1
    assert breaker.acquire() is True  # half-open: this is the probe


def test_half_open_admits_one_probe_at_a_time_and_closes_after_two(breaker, clock):
    fail(breaker, 5)
    clock.now += 60
    probe = breaker.acquire()
    assert probe is True
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # a second caller while the probe is in flight
    breaker.success(probe)
    assert breaker.current_state() is State.HALF_OPEN
    breaker.success(breaker.acquire())
    assert breaker.current_state() is State.CLOSED
    assert breaker.acquire() is False


def test_failed_probe_reopens_with_fresh_timer_then_probes_every_30s(breaker, clock):
    fail(breaker, 5)
    clock.now += 60
    breaker.failure(breaker.acquire())
    assert breaker.current_state() is State.OPEN
    assert breaker.remaining_s() == pytest.approx(30)
    clock.now += 29
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.now += 1
    assert breaker.acquire() is True


def test_neutral_outcomes_do_not_count_and_free_the_probe(breaker, clock):
    for _ in range(10):
        breaker.neutral(breaker.acquire())  # 429s and other 4xx
    assert breaker.current_state() is State.CLOSED
    fail(breaker, 5)
    clock.now += 60
    breaker.neutral(breaker.acquire())  # a cancelled probe
    assert breaker.acquire() is True  # the next caller may probe


def test_the_seed_settings_drive_every_transition(clock):
    settings = Breaker(
        failure_threshold=3, timeout_s=20, half_open_interval_s=7, success_threshold=3
    )
    breaker = CircuitBreaker("gpt-4o", settings, clock)
    fail(breaker, 2)
    assert breaker.current_state() is State.CLOSED
    fail(breaker, 1)  # failure_threshold
    assert breaker.remaining_s() == pytest.approx(20)  # timeout_s
    clock.now += 20
    breaker.failure(breaker.acquire())  # the probe fails
    assert breaker.remaining_s() == pytest.approx(7)  # half_open_interval_s
    clock.now += 7
    for _ in range(2):
        breaker.success(breaker.acquire())
        assert breaker.current_state() is State.HALF_OPEN
    breaker.success(breaker.acquire())  # success_threshold
    assert breaker.current_state() is State.CLOSED


class _Retry:
    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


def test_backoff_doubles_from_base_ms_up_to_max_ms():
    plain = backoff(base_ms=200, max_ms=8000, jitter=False)
    waits = [plain(_Retry(n)) for n in range(1, 10)]
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 8.0, 8.0, 8.0]
    jittered = backoff(base_ms=200, max_ms=8000, jitter=True)
    for n, ceiling in enumerate(waits, start=1):  # full jitter: uniform below the ceiling
        samples = [jittered(_Retry(n)) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples) and len(set(samples)) > 1


def test_retry_after_forms_and_cap():
    assert retry_after_seconds({"retry-after-ms": "1500"}, 60) == 1.5
    assert retry_after_seconds({"retry-after": "7"}, 60) == 7
    assert retry_after_seconds({"retry-after": "0.25"}, 60) == 0.25
    assert retry_after_seconds({"retry-after": "3600"}, 60) == 60
    assert retry_after_seconds({"retry-after": "-3"}, 60) == 0
    assert retry_after_seconds({}, 60) is None
    assert retry_after_seconds({"retry-after": "soon"}, 60) is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, 60, now=lambda: 1_000_000) == 30
    both = {"retry-after-ms": "100", "retry-after": "9"}
    assert retry_after_seconds(both, 60) == 0.1  # the ms form wins, as in the SDK
