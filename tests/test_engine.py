"""The engine through the real openai SDK over loopback to the offline server (no mocks)."""

from __future__ import annotations

import logging
import time

import pytest
from serverproc import requests_reach

from mirai_magics.client.records import FALLBACK, Degradation
from mirai_magics.errors import (
    CircuitOpenError,
    ClientRequestError,
    MiraiError,
    RetriesExhaustedError,
    UsageError,
)
from mirai_magics.session import Session, StreamRestart

KEY = "sk-test-engine-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]
SAMPLING = ("model", "temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens")


@pytest.fixture
def session(make_session):
    return make_session()


def requests_seen(server) -> int:
    return server.stats_snapshot()["requests"]


def test_chat_success_has_usage_and_one_attempt(session, offline_server):
    reply = session.chat(HELLO)
    assert "offline" in reply.text.lower()
    record = reply.record
    assert (record.profile, record.model, record.attempts) == ("main", "gpt-4o-mini", 1)
    assert record.tokens_in and record.tokens_out and record.offline
    assert record.retry_reasons == [] and record.error is None
    body = offline_server.stats_snapshot()["recent"][-1]["body"]
    sent = {k: body.get(k) for k in SAMPLING}
    assert sent == {
        "model": "gpt-4o-mini",
        "temperature": 0.25,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.0,
        "max_tokens": 2000,
    }


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("heavy", ("gpt-4o", 0.25, 0.9, 0.1, 0.0, 2500)),
        ("fast", ("gpt-3.5-turbo", 0.2, 0.9, None, None, 1200)),  # no penalties written
        ("creative", ("gpt-4o", 0.4, 0.9, 0.3, 0.2, 2000)),
    ],
)
def test_each_profile_sends_its_seed_values(session, offline_server, profile, expected):
    session.chat(HELLO, profile)
    body = offline_server.stats_snapshot()["recent"][-1]["body"]
    assert tuple(body.get(k) for k in SAMPLING) == expected


def test_stream_yields_chunks_then_reply_with_usage(session, offline_server):
    items = list(session.stream_chat(HELLO, "heavy"))
    reply = items[-1]
    chunks = [i for i in items[:-1] if isinstance(i, str)]
    assert len(chunks) >= 2 and "".join(chunks) == reply.text
    assert reply.record.streamed and reply.record.tokens_out
    assert reply.record.tokens_in == session.chat(HELLO, "heavy").record.tokens_in
    body = offline_server.stats_snapshot()["recent"][-2]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_reasoning_profile_sends_max_completion_tokens_only(session, offline_server):
    session.chat(HELLO, "reasoning")  # the config writes temperature 1.0 and top_p 1.0
    body = offline_server.stats_snapshot()["recent"][-1]["body"]
    assert body["model"] == "o1-preview" and body["max_completion_tokens"] == 4096
    assert not set(body) & {"max_tokens", *SAMPLING[1:5]}
    reply = session.chat(HELLO, "reasoning", max_tokens=300)
    body = offline_server.stats_snapshot()["recent"][-1]["body"]
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert reply.record.attempts == 1


def test_reasoning_profile_refuses_sampling_options_before_sending(session, offline_server):
    with pytest.raises(UsageError, match="reasoning model and takes no temperature"):
        session.chat(HELLO, "reasoning", temperature=0.5)
    assert requests_seen(offline_server) == 0


def test_429_retry_after_is_honoured_on_the_injected_sleep(session, offline_server, sleeps):
    offline_server.set_faults(retry_after=7)
    offline_server.script(["429", "ok"])
    reply = session.chat(HELLO)
    assert sleeps.calls == [7.0]
    assert reply.record.attempts == 2 and reply.record.retry_reasons == ["429"]
    assert requests_seen(offline_server) == 2


def test_retry_after_ms_and_cap(make_session, offline_server, sleeps):
    session = make_session("defaults: {retry_after_cap_s: 5}")
    offline_server.set_faults(retry_after_ms=1500)
    offline_server.script(["429", "ok"])
    session.chat(HELLO)
    offline_server.set_faults(retry_after_ms=None, retry_after=3600)
    offline_server.script(["429", "ok"])
    session.chat(HELLO)
    assert sleeps.calls == [1.5, 5.0]


def test_5xx_retried_with_jittered_backoff_within_bounds(session, offline_server, sleeps):
    offline_server.script(["500", "html503", "502", "ok"])
    reply = session.chat(HELLO)
    assert reply.record.attempts == 4
    assert reply.record.retry_reasons == ["500", "503", "502"]
    ceilings = [0.2, 0.4, 0.8]
    assert all(0 <= s <= c for s, c in zip(sleeps.calls, ceilings, strict=True))


def test_retries_exhausted_after_four_attempts(session, offline_server):
    offline_server.set_faults(fail_5xx=1.0)
    with pytest.raises(RetriesExhaustedError) as info:
        session.chat(HELLO, "fast")
    assert requests_seen(offline_server) == 4
    assert "server error (HTTP 500) after 4 attempt(s)" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(session, offline_server, status):
    offline_server.set_faults(force_status=status)
    with pytest.raises(ClientRequestError) as info:
        session.chat(HELLO)
    assert requests_seen(offline_server) == 1
    assert info.value.status == status
    assert "\n" not in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize("status", ["408", "409"])
def test_408_and_409_are_retried(session, offline_server, status):
    offline_server.script([status, "ok"])
    assert session.chat(HELLO).record.retry_reasons == [status]


def test_x_should_retry_header_wins(session, offline_server):
    offline_server.set_faults(should_retry=False)
    offline_server.script(["500"])
    with pytest.raises(ClientRequestError):
        session.chat(HELLO)
    assert requests_seen(offline_server) == 1
    offline_server.set_faults(should_retry=True)
    offline_server.script(["400", "ok"])
    assert session.chat(HELLO).record.retry_reasons == ["400"]


def test_timeouts_and_dropped_connections_are_retried(make_session, offline_server):
    # 1 s, not less: the hung attempt must be read (and take "hang") before the client gives
    # up, or the retry would take it instead
    session = make_session("defaults: {timeout_s: 1}")
    offline_server.script(["hang", "drop", "ok"])
    reply = session.chat(HELLO)
    assert reply.record.retry_reasons == ["timeout", "connection"]
    assert reply.record.attempts == 3


def test_the_embed_profile_makes_its_own_five_attempts(session, offline_server):
    offline_server.set_faults(fail_429=1.0, retry_after=0)
    with pytest.raises(RetriesExhaustedError, match="after 5 attempt"):
        session.embed(["alpha"])
    assert offline_server.stats_snapshot()["by_path"] == {"/v1/embeddings": 5}


def test_a_profile_timeout_overrides_the_default(make_session, offline_server):
    # 1 s, not less: on a loaded machine a shorter attempt can end before its request is sent
    session = make_session("models: {embed: {timeout_s: 1, max_retries: 2}}")
    offline_server.set_faults(hang=True)
    started = time.monotonic()
    with pytest.raises(
        RetriesExhaustedError,
        match=r"no complete answer within 1 s \(models.embed.timeout_s\) after 2 attempt",
    ):
        session.embed(["alpha"])  # with defaults.timeout_s (90 s) this would take minutes
    assert 1.9 <= time.monotonic() - started < 10
    assert requests_reach(offline_server, 2) == 2  # the 2nd is counted when the server reads it


def test_deadline_bounds_total_time(make_session, offline_server, sleeps):
    session = make_session("defaults: {deadline_s: 10}")
    offline_server.set_faults(fail_429=1.0, retry_after=6)
    with pytest.raises(RetriesExhaustedError):
        session.chat(HELLO, "fast")
    assert sleeps.calls == [6.0]  # a second 6 s wait would end past the 10 s deadline
    assert requests_seen(offline_server) == 2


def test_breaker_lifecycle_on_a_fake_clock(session, offline_server, clock):
    offline_server.set_faults(fail_5xx=1.0)
    with pytest.raises(RetriesExhaustedError):
        session.chat(HELLO, "fast")  # 4 attempts, 4 counted failures
    with pytest.raises(CircuitOpenError):
        session.chat(HELLO, "fast")  # the 5th attempt opens it, the next is refused
    assert session.breaker_states()["gpt-3.5-turbo"] == "open"
    seen = requests_seen(offline_server)
    assert seen == 5
    clock.now += 30
    with pytest.raises(CircuitOpenError) as info:
        session.chat(HELLO, "fast")
    assert requests_seen(offline_server) == seen  # refused without touching the network
    assert info.value.remaining_s == pytest.approx(30, abs=1)
    clock.now += 30  # half-open; the probe fails and re-opens with a fresh timer
    with pytest.raises(CircuitOpenError):
        session.chat(HELLO, "fast")
    assert requests_seen(offline_server) == seen + 1
    assert session.breaker_states()["gpt-3.5-turbo"] == "open"
    offline_server.set_faults(fail_5xx=0.0)
    clock.now += 30
    session.chat(HELLO, "fast")  # probe 1 succeeds
    assert session.breaker_states()["gpt-3.5-turbo"] == "half-open"
    session.chat(HELLO, "fast")  # probe 2 succeeds and closes it
    assert session.breaker_states()["gpt-3.5-turbo"] == "closed"


def test_429s_do_not_open_the_breaker(session, offline_server):
    offline_server.set_faults(fail_429=1.0, retry_after=0)
    for _ in range(3):
        with pytest.raises(RetriesExhaustedError):
            session.chat(HELLO, "fast")
    assert session.breaker_states()["gpt-3.5-turbo"] == "closed"


def test_fallback_heavy_to_main_on_persistent_429(session, offline_server):
    offline_server.set_faults(retry_after=0)
    offline_server.script(["429"] * 4 + ["ok"])
    reply = session.chat(HELLO, "heavy")
    record = reply.record
    assert (record.profile, record.model) == ("main", "gpt-4o-mini")
    assert record.degradations == [Degradation(FALLBACK, "429", "heavy", "main")]
    assert (record.degraded_from, record.reroute.reason) == ("heavy", "429")
    assert record.attempts == 5
    models = [r["model"] for r in offline_server.stats_snapshot()["recent"]]
    assert models == ["gpt-4o"] * 4 + ["gpt-4o-mini"]


def test_fallback_on_persistent_5xx(session, offline_server):
    offline_server.script(["500"] * 4 + ["ok"])
    reply = session.chat(HELLO, "heavy")
    assert (reply.record.model, reply.record.reroute.reason) == ("gpt-4o-mini", "5xx")
    assert reply.record.attempts == 5


def test_timeouts_do_not_fall_back(make_session, offline_server):
    session = make_session("defaults: {timeout_s: 0.2}")
    offline_server.set_faults(hang=True)
    with pytest.raises(
        RetriesExhaustedError,
        match=r"no complete answer within 0.2 s \(defaults.timeout_s\) after 4 attempt",
    ):
        session.chat(HELLO, "heavy")
    assert offline_server.stats_snapshot()["by_model"] == {"gpt-4o": 4}


def test_fallback_on_open_breaker(session, offline_server):
    offline_server.script(["500"] * 4 + ["ok"])
    session.chat(HELLO, "heavy")  # 4 counted failures on gpt-4o, then main answers
    offline_server.script(["500", "ok"])
    reply = session.chat(HELLO, "heavy")  # the 5th failure opens the breaker mid-call
    assert session.breaker_states()["gpt-4o"] == "open"
    assert (reply.record.model, reply.record.reroute.reason) == ("gpt-4o-mini", "circuit_open")
    seen = requests_seen(offline_server)
    reply = session.chat(HELLO, "heavy")  # refused at once, straight to main
    assert reply.record.degraded_from == "heavy" and reply.record.attempts == 1
    assert requests_seen(offline_server) == seen + 1


def test_embeddings_return_vectors_of_configured_dimensions(session, offline_server):
    vectors = session.embed(["alpha beta", "gamma"])
    assert len(vectors) == 2 and all(len(v) == 3072 for v in vectors)
    assert offline_server.stats_snapshot()["embedding_inputs"] == 2


def test_mid_stream_retry_tells_the_consumer_to_restart(make_session, offline_server):
    session = make_session()
    offline_server.script(["500", "ok"])
    items = list(session.stream_chat(HELLO))
    assert not any(isinstance(i, StreamRestart) for i in items)  # failed before any text
    assert items[-1].record.attempts == 2


def test_key_never_in_repr_records_errors_or_logs(session, offline_server, caplog):
    caplog.set_level(logging.DEBUG)
    offline_server.set_faults(force_status=401)
    with pytest.raises(ClientRequestError) as info:
        session.chat(HELLO)
    offline_server.set_faults(force_status=None)
    reply = session.chat(HELLO)
    texts = [
        repr(session),
        repr(session.client),
        repr(reply),
        str(reply.record.to_dict()),
        str(info.value),
        repr(info.value),
        caplog.text,
    ]
    assert all(KEY not in t for t in texts)
    assert "%mirai reload" in str(info.value)


def test_reload_picks_up_a_rotated_key(monkeypatch):
    from mirai_magics.server import OfflineServer

    rotated = "sk-test-rotated-0000000000"
    with OfflineServer(expected_key=rotated).start() as server:
        monkeypatch.setenv("MIRAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        with Session() as session:
            with pytest.raises(ClientRequestError, match="HTTP 401"):
                session.chat(HELLO)
            monkeypatch.setenv("OPENAI_API_KEY", rotated)
            session.reload()
            assert session.chat(HELLO).text


def test_a_pinned_model_is_not_carried_into_fallback_hops(session, offline_server):
    offline_server.set_faults(retry_after=0)
    offline_server.script(["429"] * 4 + ["ok"])
    reply = session.chat(HELLO, "heavy", model="gpt-4o-2024-08-06")
    models = [r["model"] for r in offline_server.stats_snapshot()["recent"]]
    assert models == ["gpt-4o-2024-08-06"] * 4 + ["gpt-4o-mini"]
    assert (reply.record.model, reply.record.degraded_from) == ("gpt-4o-mini", "heavy")


def test_open_breaker_refuses_before_waiting_for_quota(make_session, offline_server, sleeps):
    session = make_session("limits: {rps: {chat: 0.2}, max_wait_s: 30}")
    offline_server.set_faults(fail_5xx=1.0)
    for _ in range(2):
        with pytest.raises(MiraiError):
            session.chat(HELLO, "fast")  # 4 + 1 failures open the breaker
    waited, tokens = list(sleeps.calls), session.policy.buckets["chat"].tokens
    with pytest.raises(CircuitOpenError):
        session.chat(HELLO, "fast")
    assert sleeps.calls == waited  # no rate-token wait, no backoff: refused at once
    assert session.policy.buckets["chat"].tokens == tokens  # and no rate token was taken
