"""``limits.backend: redis`` through the Policy: two Sessions (two kernels' worth of quota
state) on one real redis-server and the offline server, real SDK over loopback.

Asserted is what the outside saw: requests (and their arrival times) at the server, the
error a call raised, the degradation on its record.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from redisutil import redis_server  # noqa: F401  (fixture)
from serverproc import arrivals_at, server_process

from mirai_magics.errors import CircuitOpenError, QuotaExceededError, RedisUnavailableError

KEY = "sk-test-shared-policy-0123456789abcdef"
CONFIG = """
defaults: {{timeout_s: 3, deadline_s: 20, backoff: {{base_ms: 20, max_ms: 60}}}}
redis: {{namespace: "{ns}", connect_timeout_s: 0.5}}
degradation: {{fallback_chain: [main]}}
context: {{rag: {{enabled: false}}}}
limits: {{backend: redis, user: alice{limits}}}
"""


@pytest.fixture
def make_shared(make_session, redis_server, monkeypatch):  # noqa: F811
    """``make_shared(limits="", extra="")``: Sessions sharing one namespace of ``redis_server``."""
    monkeypatch.setenv("MIRAI_REDIS_URL", redis_server.url)
    ns = f"t{secrets.token_hex(3)}"

    def make(limits: str = "", extra: str = ""):
        config = CONFIG.format(ns=ns, limits=limits) + extra
        return make_session(config, fake_time=False)

    return make


def ask(session, text: str, **overrides):
    return session.chat([{"role": "user", "content": text}], **overrides)


def chats(server) -> int:
    return server.stats_snapshot().by_path.get("/v1/chat/completions", 0)


def peak_per_second(arrivals: list[float]) -> int:
    """The most requests in any one-second window starting at an arrival."""
    times = sorted(arrivals)
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def test_two_kernels_share_the_per_user_budget(make_shared, offline_server):
    a = make_shared(", tokens: {per_user_minute: 900}")
    b = make_shared(", tokens: {per_user_minute: 900}")
    # b's client and Redis connection exist before a's call: b's refusal then comes while
    # a's estimate is held, however slow a loaded machine is at making them
    warm = ask(b, "hi", max_tokens=5).record
    offline_server.reset_stats()
    offline_server.set_faults(latency_ms=1500)
    holder = threading.Thread(target=ask, args=(a, "first"), kwargs={"max_tokens": 500})
    holder.start()
    deadline = time.monotonic() + 10
    while offline_server.stats.in_flight < 1:  # a's request is at the server: its estimate
        assert time.monotonic() < deadline, "a's call never reached the server"
        time.sleep(0.01)  # (~500 tokens) is held in Redis until it is settled
    with pytest.raises(QuotaExceededError) as refused:
        ask(b, "second", max_tokens=500)
    holder.join(timeout=10)
    assert "per-user (alice) token budget of 900/min is used up" in str(refused.value)
    assert chats(offline_server) == 1  # b's call was never sent
    rows = dict(b.extra_status())
    assert rows["limits"].startswith("redis redis://127.0.0.1:")
    used = int(rows["tokens this minute (shared, alice)"].split(" / ")[0].replace(",", ""))
    record = a.records[-1]
    # a's settled usage, seen from b, on top of b's own warm-up
    assert used == record.tokens_in + record.tokens_out + warm.tokens_in + warm.tokens_out


def test_a_breaker_opened_in_one_kernel_is_open_in_the_other(make_shared, offline_server):
    breaker = "circuit_breaker: {failure_threshold: 3, timeout_s: 30}\n"
    a = make_shared(extra=breaker)
    b = make_shared(extra=breaker)
    ask(b, "warm up")  # b's client exists, its breaker watcher reads Redis every 0.2 s
    offline_server.set_faults(force_status=500)
    with pytest.raises(Exception):  # noqa: B017  (retries exhausted: the kind is tested elsewhere)
        ask(a, "fails")
    offline_server.set_faults(force_status=None)
    offline_server.reset_stats()
    seen_by_b = b.client.breaker("gpt-4o-mini")
    deadline = time.monotonic() + 5
    while seen_by_b.current_state().value != "open":  # b's watcher reads Redis every 0.2 s
        assert time.monotonic() < deadline, "b never saw the breaker a opened"
        time.sleep(0.02)
    with pytest.raises(CircuitOpenError):
        ask(b, "refused without a request")
    assert chats(offline_server) == 0


def test_redis_down_is_one_line_and_nothing_is_sent(make_shared, offline_server, redis_server):  # noqa: F811
    session = make_shared()
    redis_server.stop()
    with pytest.raises(RedisUnavailableError) as down:
        ask(session, "hello")
    message = str(down.value)
    assert "\n" not in message and f"127.0.0.1:{redis_server.port}" in message
    assert chats(offline_server) == 0


def test_redis_down_with_local_fallback_says_so(make_shared, offline_server, redis_server):  # noqa: F811
    session = make_shared(", on_redis_down: local")
    redis_server.stop()
    reply = ask(session, "hello")
    assert reply.text
    assert "redis_down" in [d.rule for d in reply.record.degradations]
    assert chats(offline_server) == 1
    rows = dict(session.extra_status())
    assert "unreachable" in rows["limits"]


def test_retries_take_slots_of_the_shared_window(make_shared, monkeypatch):
    limit = 5
    breaker = "circuit_breaker: {failure_threshold: 1000}\n"
    replies: list = []

    def cells(session, tag: str) -> None:
        replies.extend(ask(session, f"{tag} {i}") for i in range(5))

    # the server in its own process: arrival times not delayed by these threads' GIL
    with server_process("--fail-5xx", "0.4") as url:
        monkeypatch.setenv("MIRAI_BASE_URL", url)
        sessions = [make_shared(f", rps: {{chat: {limit}}}", breaker) for _ in range(2)]
        pairs = zip(sessions, "ab", strict=True)
        threads = [threading.Thread(target=cells, args=pair) for pair in pairs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        arrivals = arrivals_at(url)
    retried = sum(r.record.attempts - 1 for r in replies)
    assert len(replies) == 10 and retried > 0  # the faults made retries happen
    assert len(arrivals) == 10 + retried  # every attempt reached the server ...
    assert peak_per_second(arrivals) <= limit  # ... and none above the shared limit
