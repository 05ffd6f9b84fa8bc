"""Degradation rules engage and lift (with hysteresis) on a fake clock, end to end."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirai_magics.client.degrade import RULES, RateLimited, WindowRule, hysteresis, p95, rule
from mirai_magics.client.records import FALLBACK, Degradation
from mirai_magics.config import RateLimitRule
from mirai_magics.ui.badges import badge_text
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-degrade-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def degradations_counted(session) -> dict[str, float]:
    families = text_string_to_metric_families(session.telemetry.metrics.text())
    family = next(f for f in families if f.name == "mirai_degradations")
    return {s.labels["rule"]: s.value for s in family.samples if s.name.endswith("_total")}


def active_row(session) -> str:
    return dict(session.extra_status())["degradations active"]


# --- pure pieces ----------------------------------------------------------------------------


def test_p95_and_hysteresis():
    assert p95([1.0] * 19 + [100.0]) == 1.0 and p95([1.0] * 18 + [100.0] * 2) == 100.0
    assert hysteresis(False, 0.04, 0.05, 0.02) is False
    assert hysteresis(False, 0.05, 0.05, 0.02) is True
    assert hysteresis(True, 0.03, 0.05, 0.02) is True  # between the levels: stays engaged
    assert hysteresis(True, 0.01, 0.05, 0.02) is False


def test_rate_limit_state_window_and_recovery(clock):
    state = RateLimited(RateLimitRule(engage_after=3, window_s=60, recover_after_s=120), clock)
    state.record_429("m")
    clock.now += 61  # the first 429 leaves the window
    assert not state.record_429("m") and not state.record_429("m")
    assert state.record_429("m") and state.reroutes("m")
    clock.now += 119
    assert state.reroutes("m") and state.engaged()
    clock.now += 1
    assert not state.reroutes("m") and not state.reroutes("other") and not state.engaged()


class _MaxOver(WindowRule):
    engage_key, lift_key = "engage_at", "lift_below"

    def measure(self, samples):
        return max(samples)


class _Settings:
    window_calls, min_calls, engage_at, lift_below = 4, 3, 0.5, 0.2


def test_window_rule_needs_min_calls_and_lifts_only_below_recovery(clock):
    rule = _MaxOver(_Settings(), clock)
    assert not rule.add(0.9) and not rule.add(0.9)  # below min_calls
    assert rule.add(0.9) and rule.engaged()
    for _ in range(4):
        rule.add(0.3)  # under the threshold, above the recovery level
    assert rule.engaged()
    for _ in range(4):
        rule.add(0.1)
    assert not rule.engaged()


def test_rules_are_registered_once_with_their_config_block():
    from mirai_magics.config import Rules

    assert list(RULES) == list(Rules.model_fields)  # one class per configured rule, in order

    @rule("test_only_rule")
    class Probe(WindowRule):
        pass

    try:
        assert RULES["test_only_rule"] is Probe and Probe.name == "test_only_rule"
    finally:
        del RULES["test_only_rule"]


# --- end to end through the session -----------------------------------------------------------


def test_rate_limit_429_diverts_to_the_fallback_and_lifts(make_session, offline_server, clock):
    session = make_session(
        "degradation: {rules: {rate_limit_429: {engage_after: 3, window_s: 60, "
        "recover_after_s: 120}}}"
    )
    offline_server.script(["429", "429", "429", "ok"])
    first = session.chat(HELLO, "heavy")
    assert first.record.model == "gpt-4o" and first.record.degradations == []
    assert active_row(session) == "rate_limit_429 (gpt-4o)"

    second = session.chat(HELLO, "heavy")
    assert last_body(offline_server)["model"] == "gpt-4o-mini"
    assert (second.record.profile, second.record.requested_profile) == ("main", "heavy")
    assert second.record.degradations == [Degradation("rate_limit_429", "", "heavy", "main")]
    assert second.record.degraded_from == "heavy"
    badge = badge_text(second.record)
    assert "degraded heavy→main (rate_limit_429)" in badge
    assert badge.count("degraded") == 1  # one degradation, said once
    assert session.chat(HELLO, "main").record.model == "gpt-4o-mini"  # main is not diverted

    clock.now += 121
    third = session.chat(HELLO, "heavy")
    assert last_body(offline_server)["model"] == "gpt-4o" and third.record.degradations == []
    assert active_row(session) == "none"
    assert degradations_counted(session) == {"rate_limit_429": 1.0}


def test_latency_high_cuts_max_tokens_and_lifts(make_session, offline_server):
    session = make_session(
        "degradation: {rules: {rate_limit_429: {enabled: false}, latency_high: "
        "{p95_threshold_s: 20, recover_below_s: 15, window_calls: 4, min_calls: 3}}}"
    )
    offline_server.set_faults(retry_after=25)  # each 429 costs 25 s on the fake clock
    for _ in range(3):
        offline_server.script(["429", "ok"])
        session.chat(HELLO)
    assert last_body(offline_server)["max_tokens"] == 1024
    assert active_row(session).startswith("latency_high (p95 25.0 s)")

    slowed = session.chat(HELLO)
    assert last_body(offline_server)["max_tokens"] == int(1024 * 0.7)
    assert slowed.record.degradations == [Degradation("latency_high", "max_tokens 1024→716")]
    assert "degraded: latency_high (max_tokens 1024→716)" in badge_text(slowed.record)
    session.chat(HELLO, max_tokens=100)
    assert last_body(offline_server)["max_tokens"] == 70  # overrides are cut too

    for _ in range(3):  # fast calls push the slow ones out of the window of 4
        session.chat(HELLO)
    assert active_row(session) == "none"
    assert session.chat(HELLO).record.degradations == []
    assert last_body(offline_server)["max_tokens"] == 1024
    assert degradations_counted(session) == {"latency_high": 4.0}  # calls 4 to 7


def test_error_rate_trims_history_and_lifts(make_session, offline_server):
    session = make_session(
        "degradation: {rules: {error_rate_5percent: {threshold: 0.2, recover_below: 0.1, "
        "window_calls: 10, min_calls: 5, history_messages: 4}}}"
    )
    for i in range(6):
        session.history.append_turn(f"question {i}", f"answer {i}")
    request = CellRequest(text="next", profile="main", fmt="markdown", overrides={})
    request.memory = False

    def history_sent() -> tuple[int, object]:
        prepared = session.prepare("next", request)
        reply = session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs())
        roles = [m["role"] for m in last_body(offline_server)["messages"]]
        assert roles[0] == "system" and roles[-1] == "user"
        return len(roles) - 2, reply.record

    assert history_sent()[0] == 12
    offline_server.script(["400", "400"])
    for _ in range(2):
        with pytest.raises(Exception, match="HTTP 400"):
            session.chat(HELLO)
    for _ in range(2):
        session.chat(HELLO)
    assert active_row(session) == "error_rate_5percent (40% errors)"

    sent, record = history_sent()
    assert sent == 4 and record.degradations == [Degradation("error_rate_5percent", "history ≤ 4")]
    assert "degraded: error_rate_5percent" in badge_text(record)

    for _ in range(14):  # the two errors leave the window of 10: the rate drops to 0
        session.chat(HELLO)
    assert active_row(session) == "none"
    sent, record = history_sent()
    assert sent == 12 and record.degradations == []
    assert degradations_counted(session) == {"error_rate_5percent": 8.0}  # calls 6 to 13


def test_diverted_call_still_tries_the_skipped_profiles_last(make_session, offline_server):
    session = make_session("degradation: {rules: {rate_limit_429: {engage_after: 1}}}")
    offline_server.set_faults(retry_after=0)
    offline_server.script(["429"] * 4 + ["ok"])  # heavy rate limited → main answers
    session.chat(HELLO, "heavy")
    offline_server.script(["429"] * 4 + ["ok"])  # main too → fast answers
    session.chat(HELLO, "heavy")
    offline_server.script(["500"] * 4 + ["ok"])  # now diverted to fast, which fails
    reply = session.chat(HELLO, "heavy")
    models = [r["model"] for r in offline_server.stats_snapshot()["recent"][-5:]]
    assert models == ["gpt-3.5-turbo"] * 4 + ["gpt-4o"]  # the skipped heavy is the last resort
    assert reply.record.profile == "heavy" and reply.record.degraded_from is None
    assert reply.record.degradations == [  # the whole path: two diversions, one fallback
        Degradation("rate_limit_429", "", "heavy", "main"),
        Degradation("rate_limit_429", "", "main", "fast"),
        Degradation(FALLBACK, "5xx", "fast", "heavy"),
    ]
    assert "degraded" not in badge_text(reply.record)  # the requested profile answered
