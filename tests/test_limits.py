"""Quotas on a fake clock: rate buckets, rolling token budgets, request cap, concurrency caps."""

from __future__ import annotations

import asyncio

import pytest

from mirai_magics.client.limits import Reservation, RollingBudget, TokenBucket, TokenBudgets
from mirai_magics.errors import QuotaExceededError
from mirai_magics.tokens import context_window, count_messages

KEY = "sk-test-limits-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


def requests_seen(server) -> int:
    return server.stats_snapshot()["requests"]


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


# --- token bucket ---------------------------------------------------------------------


def test_bucket_bursts_then_spaces_requests_and_refills(clock):
    bucket = TokenBucket("chat", rate=2, clock=clock)
    assert [bucket.take(10) for _ in range(2)] == [0.0, 0.0]  # burst of one second
    assert bucket.take(10) == pytest.approx(0.5)  # queued behind the burst
    assert bucket.take(10) == pytest.approx(1.0)
    clock.now += 5  # refills, but never above the burst
    assert bucket.take(10) == 0.0 and bucket.tokens == pytest.approx(1.0)


def test_bucket_refuses_beyond_max_wait_and_says_when(clock):
    bucket = TokenBucket("chat", rate=1, clock=clock)
    bucket.take(0)
    with pytest.raises(QuotaExceededError) as info:
        bucket.take(0.5)
    assert info.value.retry_in_s == pytest.approx(1.0) and info.value.kind == "rate"
    assert "retry in 1 s" in str(info.value)
    clock.now += 1
    assert bucket.take(0.5) == 0.0  # the refused call did not take a token


# --- rolling budgets -------------------------------------------------------------------


def test_budget_rolls_over_after_a_minute(clock):
    budget = RollingBudget("global", 1000, clock)
    budgets = (budget,)
    first = Reservation(600, budgets, id=1)
    budget.check(600)
    budget.hold(first)
    first.settle(600)
    clock.now += 20
    with pytest.raises(QuotaExceededError) as info:
        budget.check(500)
    assert info.value.retry_in_s == pytest.approx(40)  # the 600 leave the window at t+60
    clock.now += 40
    budget.check(500)
    assert budget.used() == 0


def test_reservation_settles_to_the_reported_usage(clock):
    budgets = TokenBudgets(global_per_minute=10_000, per_user_per_minute=1_000, clock=clock)
    held = budgets.reserve("ada", 900)
    assert budgets.user("ada").used() == 900 and budgets.global_budget.used() == 900
    with pytest.raises(QuotaExceededError) as info:
        budgets.reserve("ada", 200)
    assert info.value.kind == "tokens_user"
    budgets.reserve("grace", 900)  # another user has a budget of her own
    held.settle(150)
    held.settle(999)  # idempotent
    assert budgets.user("ada").used() == 150
    budgets.reserve("ada", 800)
    assert budgets.global_budget.used() == 150 + 900 + 800


def test_the_budget_user_comes_from_config_then_env_then_the_request(
    make_session, offline_server, monkeypatch
):
    monkeypatch.setenv("MIRAI_USER", "ada")
    assert make_session().user == "ada"
    session = make_session("limits: {user: grace}")
    assert session.user == "grace"  # config wins over MIRAI_USER
    session.chat(HELLO, max_tokens=50)
    session.chat(HELLO, max_tokens=50, user="linus")  # a per-request user has its own budget
    rows = dict(session.policy.status_rows())
    assert set(session.policy.budgets.users) == {"grace", "linus"}
    assert rows["tokens this minute (grace)"].split(" / ")[0] != "0"
    assert offline_server.stats_snapshot()["recent"][-1]["body"]["user"] == "linus"


def test_session_budget_refuses_then_frees_up(make_session, offline_server, clock):
    session = make_session("limits: {tokens: {per_user_minute: 400}}")
    used = 0
    with pytest.raises(QuotaExceededError) as info:
        for _ in range(20):
            record = session.chat(HELLO, max_tokens=50).record
            used += record.tokens_in + record.tokens_out
            clock.now += 1
    sent = requests_seen(offline_server)
    assert 1 < sent < 20 and "per-user" in str(info.value)
    assert session.policy.budgets.user(session.user).used() == used  # settled usage only
    assert session.policy.rejections == {"tokens_user": 1}
    clock.now += info.value.retry_in_s
    session.chat(HELLO, max_tokens=50)
    assert requests_seen(offline_server) == sent + 1


def test_per_request_max_caps_the_output_tokens_sent(make_session, offline_server):
    session = make_session("limits: {tokens: {per_request_max: 300}}")

    def cap_sent(profile: str = "main", **overrides) -> int:
        record = session.chat(HELLO, profile, **overrides).record
        body = last_body(offline_server)
        cap = body.get("max_tokens") or body["max_completion_tokens"]
        assert record.tokens_estimated == count_messages(HELLO)[0] + cap  # what is reserved
        return cap

    assert cap_sent() == 300  # min(profile max_tokens 2000, per_request_max 300)
    assert cap_sent("fast") == 300  # 1200
    assert cap_sent(max_tokens=5000) == 300  # an override is capped too
    assert cap_sent(max_tokens=100) == 100  # below the cap: sent as asked
    assert cap_sent("reasoning") == 300  # as max_completion_tokens (4096)
    assert "max_tokens" not in last_body(offline_server)
    assert requests_seen(offline_server) == 5  # capped, never refused


def test_seed_per_request_max_leaves_the_profiles_caps_as_written(make_session, offline_server):
    session = make_session()
    session.chat(HELLO, max_tokens=9000)
    assert last_body(offline_server)["max_tokens"] == 4096
    session.chat(HELLO, "heavy")
    assert last_body(offline_server)["max_tokens"] == 2500


def test_request_over_the_context_window_is_refused_before_sending(make_session, offline_server):
    session = make_session("limits: {context_windows: {gpt-4o-mini: 300}}")
    with pytest.raises(QuotaExceededError) as info:
        session.chat([{"role": "user", "content": "word " * 400}], max_tokens=50)
    message = str(info.value)
    assert "300-token context window of gpt-4o-mini" in message and "not sent" in message
    assert "shorten the prompt" in message and info.value.kind == "request"
    with pytest.raises(QuotaExceededError):
        session.chat(HELLO, max_tokens=400)  # the output cap counts too
    assert requests_seen(offline_server) == 0
    session.chat(HELLO, max_tokens=50)
    assert requests_seen(offline_server) == 1
    assert session.policy.rejections == {"request": 2}


def test_the_built_in_windows_differ_per_model(make_session, offline_server):
    session = make_session("limits: {tokens: {per_minute: 10000000, per_user_minute: 10000000}}")
    long = [{"role": "user", "content": "word " * 20_000}]  # ≥ 20k tokens, counted or estimated
    with pytest.raises(QuotaExceededError, match=r"16,385-token context window of gpt-3\.5-turbo"):
        session.chat(long, "fast")
    assert requests_seen(offline_server) == 0
    assert session.chat(long, "main").record.model == "gpt-4o-mini"  # 128k
    assert requests_seen(offline_server) == 1


def test_context_window_matches_dated_versions_and_overrides():
    assert context_window("gpt-4o-2024-08-06") == 128_000
    assert context_window("gpt-3.5-turbo") == 16_385
    assert context_window("gpt-4") == 8_192 and context_window("gpt-4o") == 128_000
    assert context_window("o1-preview") == 128_000
    assert context_window("some-local-model") == 128_000
    assert context_window("some-local-model", {"some-local-model": 4096}) == 4096


def test_session_rate_limit_waits_on_the_injected_sleep_then_refuses(
    make_session, offline_server, clock, sleeps
):
    session = make_session("limits: {rps: {chat: 1}, max_wait_s: 0.5}")
    session.chat(HELLO)
    with pytest.raises(QuotaExceededError) as info:
        session.chat(HELLO)
    assert "rate limit" in str(info.value) and info.value.retry_in_s == pytest.approx(1.0)
    assert requests_seen(offline_server) == 1
    clock.now += 0.6  # the next token is 0.4 s away: within max_wait, so the call waits
    session.chat(HELLO)
    assert sleeps.calls == [pytest.approx(0.4)]
    assert requests_seen(offline_server) == 2


# --- concurrency caps, measured at the server ---------------------------------------------


def test_concurrency_never_exceeds_the_caps(make_session, offline_server):
    offline_server.set_faults(latency_ms=60)
    session = make_session(
        "limits: {concurrency: {chat: 3, embeddings: 5, background: 2}, "
        "rps: {chat: 1000, embeddings: 1000}}",
        fake_time=False,
    )
    client = session.client

    async def burst() -> None:
        chats = [client.chat(HELLO, max_tokens=20) for _ in range(12)]
        background = [client.chat(HELLO, max_tokens=20, background=True) for _ in range(6)]
        embeds = [client.embed([f"text {i}"]) for i in range(15)]
        await asyncio.gather(*chats, *background, *embeds)

    session.engine.run(burst())
    peak = offline_server.stats_snapshot()["max_in_flight_by_kind"]
    assert peak["chat"] == 3 and peak["embeddings"] == 5  # reached, never exceeded
    assert session.policy.slots.in_flight == {"chat": 0, "embeddings": 0, "background": 0}


def test_background_work_has_its_own_smaller_cap(make_session, offline_server):
    offline_server.set_faults(latency_ms=60)
    session = make_session(
        "limits: {concurrency: {embeddings: 8, background: 2}, rps: {embeddings: 1000}}",
        fake_time=False,
    )
    client = session.client

    async def indexing() -> None:
        await asyncio.gather(*(client.embed([f"cell {i}"], background=True) for i in range(8)))

    session.engine.run(indexing())
    stats = offline_server.stats_snapshot()
    assert stats["by_path"]["/v1/embeddings"] == 8
    assert stats["max_in_flight_by_kind"]["embeddings"] == 2
