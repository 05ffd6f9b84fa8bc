"""Deadlines that hold: a server that drips its answer cannot keep a call past its bounds.

The drip faults of the offline server send something every interval, so httpx's per-read
timeout never fires; ``timeout_s`` must bound each attempt end to end and ``deadline_s`` the
whole call (waits, retries and fallback included). These tests run on the real clock — the
bounds are timers on the event loop — and bound the elapsed time generously (noisy machines).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import openai
import pytest
from kernelutil import Kernel, server_kernel_env

from mirai_magics.client.deadline import AttemptTimedOut, _LoopTimer, bounded
from mirai_magics.client.params import output_cap
from mirai_magics.client.records import FALLBACK, Degradation
from mirai_magics.errors import RetriesExhaustedError
from mirai_magics.session import StreamRestart
from mirai_magics.ui.badges import badge_flags

KEY = "sk-test-deadlines-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]
EVEN_BACKOFF = "backoff: {base_ms: 100, max_ms: 100, jitter: false}"


def bounds(timeout_s: float, deadline_s: float, extra: str = "") -> str:
    return (
        f"defaults: {{timeout_s: {timeout_s}, deadline_s: {deadline_s}, {EVEN_BACKOFF}}}\n{extra}"
    )


def timed(call) -> tuple[BaseException | None, float]:
    """Run ``call``; the error it raised (or None) and the seconds it took."""
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def wait_until(condition, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the drip faults of the offline server -------------------------------------------------


def test_a_dripped_body_outlives_a_per_read_timeout(offline_server):
    with openai.OpenAI(base_url=offline_server.url, api_key=KEY, max_retries=0) as sdk:
        whole = sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
        offline_server.set_faults(drip_body_s=0.001)
        started = time.monotonic()
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, timeout=0.3
        )
    took = time.monotonic() - started
    assert raw.parse().choices[0].message.content == whole.choices[0].message.content
    assert took >= len(raw.content) * 0.001 > 0.3  # each byte waited; no read waited 0.3 s
    assert offline_server.stats_snapshot()["by_status"] == {"200": 2}


def test_a_dripped_stream_sends_the_answer_then_keep_alives_without_end(offline_server):
    offline_server.set_faults(drip_sse_s=0.01)
    conn = http.client.HTTPConnection("127.0.0.1", offline_server.port, timeout=5)
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True}).encode()
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    lines: list[bytes] = []
    while lines.count(b": keep-alive\n") < 5:
        lines.append(response.readline())
    conn.close()
    events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert "You said: hello" in text and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert b"data: [DONE]\n" not in lines  # it never finishes
    assert wait_until(lambda: offline_server.stats_snapshot()["in_flight"] == 0)  # nor leaks
    assert offline_server.stats_snapshot()["by_status"] == {"aborted": 1}


# -- the bounds themselves -------------------------------------------------------------------


def test_bounded_cuts_work_and_names_the_setting():
    async def main() -> None:
        assert await bounded(asyncio.sleep(0, "done"), 1.0, "defaults.timeout_s") == "done"
        with pytest.raises(AttemptTimedOut) as info:
            await bounded(asyncio.sleep(30), 0.05, "models.embed.timeout_s")
        assert str(info.value) == "no complete answer within 0.05 s (models.embed.timeout_s)"
        assert isinstance(info.value, TimeoutError)  # classify(): a retryable timeout

    asyncio.run(main())


def test_the_python_310_timer_cuts_and_lets_other_cancels_through():
    async def main() -> None:
        timer = _LoopTimer(0.05)
        with pytest.raises(TimeoutError):
            async with timer:
                await asyncio.sleep(30)
        assert timer.expired()

        async def held() -> None:
            async with _LoopTimer(30):
                await asyncio.sleep(30)

        task = asyncio.ensure_future(held())
        await asyncio.sleep(0.01)
        task.cancel()  # Ctrl-C: not a timeout
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_the_python_310_timer_hands_a_joint_cut_to_the_outer_scope():
    """The call's deadline and an attempt's timeout firing in one tick: the outer scope
    (the deadline) ends the call, as with 3.11's asyncio.timeout, not the attempt's retry."""

    async def main() -> str:
        outer, inner = _LoopTimer(0.05), _LoopTimer(0.05)
        try:
            async with outer:
                try:
                    async with inner:
                        await asyncio.sleep(30)
                except TimeoutError:
                    return "inner took it"  # the attempt would be retried past the deadline
                return "no cut"
        except TimeoutError:
            return "outer" if inner.expired() and outer.expired() else "outer only"

    assert asyncio.run(main()) == "outer"


# -- calls through the real SDK against a dripping server ------------------------------------


def test_a_dripping_stream_ends_at_the_deadline(make_session, offline_server):
    session = make_session(bounds(1, 3), fake_time=False)
    offline_server.set_faults(drip_sse_s=0.2)
    items: list[object] = []
    error, took = timed(lambda: items.extend(session.stream_chat(HELLO)))
    assert isinstance(error, RetriesExhaustedError)
    assert "gpt-4o-mini: timed out after 3 s (defaults.deadline_s), 3 attempt(s)" in str(error)
    assert 2.9 <= took < 6
    assert offline_server.stats_snapshot()["stream_requests"] == 3  # 1 s, 1 s, the last second
    assert any(isinstance(i, StreamRestart) for i in items)  # text shown, then retried
    record = session.records[-1]
    assert record.retry_reasons == ["timeout"] * 3 and record.error == str(error)


def test_streams_cut_before_their_usage_are_counted_not_free(make_session, offline_server):
    priced = "pricing: {gpt-4o-mini: {input: 0.15, output: 0.60}}\n"  # on 3.10 too
    session = make_session(bounds(1, 3, priced), fake_time=False)
    offline_server.set_faults(drip_sse_s=0.2)  # text arrives, the usage chunk never does
    error, _took = timed(lambda: list(session.stream_chat(HELLO)))
    assert isinstance(error, RetriesExhaustedError)
    record = session.records[-1]
    assert record.tokens_in is None  # no attempt reported usage
    prompt = record.tokens_estimated - output_cap(record.params)
    assert record.attempts == 3 and prompt > 0
    assert record.cut_tokens_in == 3 * prompt  # each cut attempt's prompt, once
    assert record.cut_tokens_out > 0  # and the text it had received
    spent = session.policy.spend.session_total
    assert spent > 0  # a keyed endpoint bills cut streams: the budget saw them
    assert spent == session.policy.prices.cost(record)
    flags = badge_flags(record)
    assert any(f.startswith("cut stream: ~") for f in flags), flags
    offline_server.set_faults(drip_sse_s=None)
    whole = session.chat(HELLO)  # a call that reports usage has no estimate on it
    assert (whole.record.cut_tokens_in, whole.record.cut_tokens_out) == (0, 0)


def test_a_cut_hop_is_settled_once_at_its_own_model_after_a_fallback(make_session, offline_server):
    from mirai_magics.server import OfflineServer

    prices = "pricing: {gpt-4o: {input: 2.5, output: 10}, gpt-4o-mini: {input: 0.15, output: 0.6}}"
    with OfflineServer().start() as dripping:
        dripping.set_faults(drip_sse_s=0.2)  # heavy's endpoint: text, never a usage chunk
        session = make_session(
            f"endpoints: {{slow: {{base_url: '{dripping.url}', api_key_env_var: null}}}}\n"
            "defaults: {timeout_s: 0.6, deadline_s: 20, max_retries: 2, "
            f"{EVEN_BACKOFF}}}\n"
            "models: {heavy: {name: gpt-4o, endpoint: slow}}\n"
            "degradation: {fallback_chain: [heavy, main]}\n" + prices + "\n",
            fake_time=False,
        )
        reply = list(session.stream_chat(HELLO, "heavy"))[-1]
    record, spend = reply.record, session.policy.spend
    assert (record.profile, record.model) == ("main", "gpt-4o-mini")  # heavy's hop was cut
    assert {c.model for c in record.cuts} == {"gpt-4o"} and len(record.cuts) == 2
    cut_in, cut_out = record.cut_tokens_in, record.cut_tokens_out
    heavy = (cut_in * 2.5 + cut_out * 10) / 1e6
    mini = (record.tokens_in * 0.15 + record.tokens_out * 0.6) / 1e6
    assert spend.by_model["gpt-4o"].cost == pytest.approx(heavy)  # at its own model, once
    assert spend.by_model["gpt-4o-mini"].cost == pytest.approx(mini)  # not heavy's again
    assert session.policy.prices.cost(record) == pytest.approx(heavy + mini)  # the badge's
    used = session.policy.budgets.global_budget.used()
    assert used == cut_in + cut_out + record.tokens_in + record.tokens_out


def test_a_dripping_body_ends_at_the_deadline(make_session, offline_server):
    session = make_session(bounds(1, 3), fake_time=False)
    offline_server.set_faults(drip_body_s=0.05)
    error, took = timed(lambda: session.chat(HELLO))
    assert isinstance(error, RetriesExhaustedError)
    assert "timed out after 3 s (defaults.deadline_s), 3 attempt(s)" in str(error)
    assert 2.9 <= took < 6
    assert offline_server.stats_snapshot()["by_path"] == {"/v1/chat/completions": 3}


def test_the_attempt_timeout_bounds_each_attempt_end_to_end(make_session, offline_server):
    session = make_session(bounds(0.5, 60, "models: {main: {max_retries: 2}}"), fake_time=False)
    offline_server.set_faults(drip_body_s=0.05)  # some ~600 bytes: half a minute per answer
    error, took = timed(lambda: session.chat(HELLO))
    assert isinstance(error, RetriesExhaustedError)
    assert (error.attempts, error.last_reason) == (2, "timeout")  # not the deadline's line
    assert "deadline" not in str(error)
    assert 1.0 <= took < 4
    assert offline_server.stats_snapshot()["requests"] == 2
    assert session.records[-1].retry_reasons == ["timeout", "timeout"]


def test_the_deadline_spans_retries_and_fallback(make_session, offline_server):
    session = make_session(bounds(30, 3), fake_time=False)
    offline_server.script(["500"] * 4)  # heavy fails fast, main's answer then drips
    offline_server.set_faults(drip_body_s=0.05)
    error, took = timed(lambda: session.chat(HELLO, "heavy"))
    assert isinstance(error, RetriesExhaustedError)
    assert "gpt-4o-mini: timed out after 3 s (defaults.deadline_s), 5 attempt(s)" in str(error)
    assert 2.9 <= took < 6
    assert offline_server.stats_snapshot()["by_model"] == {"gpt-4o": 4, "gpt-4o-mini": 1}
    record = session.records[-1]
    assert record.degradations == [Degradation(FALLBACK, "5xx", "heavy", "main")]


def test_embeddings_keep_the_deadline_too(make_session, offline_server):
    session = make_session(bounds(30, 2), fake_time=False)
    offline_server.set_faults(drip_body_s=0.05)
    error, took = timed(lambda: session.embed(["alpha"]))
    assert "text-embedding-3-large: timed out after 2 s (defaults.deadline_s)" in str(error)
    assert 1.9 <= took < 5
    assert offline_server.stats_snapshot()["by_path"] == {"/v1/embeddings": 1}


def test_the_deadline_holds_while_waiting_for_a_rate_slot(make_session, offline_server):
    limits = "limits: {rps: {chat: 0.2}, max_wait_s: 30}"  # the second call waits 5 s
    session = make_session(bounds(30, 1, limits), fake_time=False)
    session.chat(HELLO)
    error, took = timed(lambda: session.chat(HELLO))
    assert "timed out after 1 s (defaults.deadline_s), 0 attempt(s)" in str(error)
    assert 0.9 <= took < 3
    assert offline_server.stats_snapshot()["requests"] == 1  # the waiting call sent nothing


def test_a_wait_past_the_deadline_on_a_fake_clock_sends_nothing(
    make_session, offline_server, sleeps
):
    session = make_session(bounds(30, 5, "limits: {rps: {chat: 0.1}, max_wait_s: 30}"))
    session.chat(HELLO)
    with pytest.raises(RetriesExhaustedError, match=r"timed out after 5 s \(defaults.deadline_s"):
        session.chat(HELLO)  # its rate slot is 10 s away on the injected clock
    assert sleeps.calls == [10.0]
    assert offline_server.stats_snapshot()["requests"] == 1


def test_a_spent_deadline_does_not_fall_back_to_another_endpoint(
    make_session, offline_server, sleeps
):
    from mirai_magics.server import OfflineServer

    with OfflineServer(models=("llama3.2",)).start() as local:
        extra = (
            f"limits: {{rps: {{chat: 0.1}}, max_wait_s: 30}}\n"
            f"endpoints: {{local: {{base_url: '{local.url}', api_key_env_var: null}}}}\n"
            "models: {local-llama: {name: llama3.2, endpoint: local, max_tokens: 300}}\n"
            "degradation: {fallback_chain: [main, local-llama]}"
        )
        session = make_session(bounds(30, 5, extra))
        session.chat(HELLO)
        with pytest.raises(RetriesExhaustedError, match=r"gpt-4o-mini: timed out after 5 s"):
            session.chat(HELLO)
        assert session.records[-1].degradations == []  # no hop after the deadline
        assert sleeps.calls == [10.0]  # and no second wait for the other profile's rate slot
        assert local.stats_snapshot()["requests"] == 0


def test_slow_answers_within_their_bounds_succeed(make_session, offline_server):
    session = make_session(bounds(2, 3), fake_time=False)
    offline_server.set_faults(stream_delay_ms=50)  # a dozen events, ~0.6 s in all
    items = list(session.stream_chat(HELLO))
    assert items[-1].record.attempts == 1 and "You said: hello" in items[-1].text
    offline_server.set_faults(latency_ms=800)
    reply = session.chat(HELLO)
    assert reply.record.attempts == 1 and reply.record.retry_reasons == []
    assert offline_server.stats_snapshot()["by_status"] == {"200": 2}


@pytest.mark.kernel
def test_a_cell_on_a_dripping_stream_ends_at_its_deadline_in_one_line(offline_server, tmp_path):
    config = f"{bounds(1, 2)}context: {{rag: {{enabled: false}}}}\n"
    with Kernel(tmp_path, server_kernel_env(offline_server.url, tmp_path, config, KEY)) as kernel:
        kernel.run("%load_ext mirai_magics")
        offline_server.set_faults(drip_sse_s=0.2)
        started = time.monotonic()
        run = kernel.run("%%mirai --stream\nhello", timeout=30)
        took = time.monotonic() - started
        assert run.status == "ok" and run.of_type("error") == []
        shown = run.of_type("display_data", "update_display_data")
        line = shown[-1]["content"]["data"]["text/plain"]  # the error replaces the stream
        assert line.startswith("[mirai] ✗ ")
        assert "timed out after 2 s (defaults.deadline_s)" in line and "\n" not in line
        assert took < 6
        offline_server.set_faults(drip_sse_s=None)
        assert kernel.run("print(1 + 1)").text.strip() == "2"  # the kernel is alive
