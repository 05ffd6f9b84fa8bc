"""Degradation rules ({trigger, action}) engage and lift (with hysteresis) on a fake clock."""

from __future__ import annotations

import typing

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirai_magics.client.degrade import (
    ACTIONS,
    TRIGGERS,
    RateLimited,
    Rule,
    WindowTrigger,
    action,
    build_rules,
    hysteresis,
    p95,
    trigger,
)
from mirai_magics.client.records import FALLBACK, Attempt, CallRecord, Degradation
from mirai_magics.config import RateLimitRule, parse_config
from mirai_magics.schema import Action as ActionName
from mirai_magics.schema import Rule as RuleSettings
from mirai_magics.ui.badges import badge_text
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-degrade-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]
HEAVY_ONLY_429 = ["429"] * 4 + ["ok"]  # gpt-4o rate limits all four attempts, main answers


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def models_sent(server, last: int) -> list[str]:
    return [r["model"] for r in server.stats_snapshot()["recent"][-last:]]


def degradations_counted(session) -> dict[str, float]:
    families = text_string_to_metric_families(session.telemetry.metrics.text())
    family = next(f for f in families if f.name == "mirai_openai_degradations")
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


class _Attempts:
    """Feeds a RateLimited trigger attempts of one model, as the client does."""

    def __init__(self, state: RateLimited, model: str = "m"):
        self.state, self.record = state, CallRecord(profile="heavy", model=model)

    def __call__(self, reason: str, *, final: bool = False) -> None:
        ok = reason == "ok"
        self.state.on_attempt(self.record, Attempt(reason, ok=ok, final=final))

    def call(self, *reasons: str) -> None:
        """One call: its attempts in order; the last one ends the model's tries."""
        for i, reason in enumerate(reasons):
            self(reason, final=i == len(reasons) - 1)


def test_rate_limit_engages_on_half_of_at_least_twenty_attempts_and_lifts(clock):
    state = RateLimited(RateLimitRule(min_attempts=20), clock)  # 0.5 of ≥ 20 attempts in 60 s
    send = _Attempts(state)
    for _ in range(19):
        send("429")
    assert not state.engaged_for("m")  # 19 attempts: too few to judge
    send("429")
    assert state.engaged_for("m") and not state.engaged_for("other") and state.engaged()
    assert state.status() == "rate_limit_429 (m)" and state.engagements == 1
    for _ in range(20):
        send("ok")
    assert state.engaged_for("m")  # 20 of 40 attempts: still half
    send("ok")
    assert not state.engaged_for("m") and state.status() is None  # 20 of 41
    for _ in range(30):
        send("429")
    assert state.engaged_for("m") and state.engagements == 2
    clock.now += 60  # the window empties: it lifts by itself
    assert not state.engaged_for("m") and not state.engaged()


def test_one_exhausted_call_early_in_a_run_does_not_engage(clock):
    state = RateLimited(RateLimitRule(), clock)  # defaults: 0.5 of ≥ 5 calls, of ≥ 50 attempts
    send = _Attempts(state)
    send.call("429", "429", "429", "429")  # unlucky: every retry met a random 429
    for _ in range(4):
        send.call("429", "ok")  # and the next calls' first attempts too
    assert not state.engaged_for("m")  # 1 of 5 calls; 8 of 12 attempts, too few to judge
    for _ in range(2):
        send.call("429", "429", "429", "429")
    assert not state.engaged_for("m")  # 3 of 7 calls (43%); 16 of 20 attempts, too few
    send.call("429", "429", "429", "429")
    assert state.engaged_for("m")  # 4 of 8 calls used up their retries on 429: sustained


def test_rate_limit_engages_on_calls_whose_retries_ended_in_429(clock):
    state = RateLimited(RateLimitRule(min_calls=5, exhausted_share=0.1), clock)  # 0.1 of ≥ 5
    send = _Attempts(state)
    send.call("429", "429", "429", "429")  # retries used up on 429
    for _ in range(3):
        send.call("ok")
    assert not state.engaged_for("m")  # 4 calls: too few to judge
    send.call("429", "ok")  # a 429 that the retry absorbed is not an exhausted call
    assert state.engaged_for("m")  # 1 of 5 calls ended in 429
    for _ in range(5):
        send.call("ok")
    assert state.engaged_for("m")  # 1 of 10: exactly exhausted_share
    send.call("ok")
    assert not state.engaged_for("m")  # 1 of 11


def test_isolated_429s_that_retries_absorb_do_not_engage(clock):
    state = RateLimited(RateLimitRule(), clock)
    send = _Attempts(state)
    for i in range(200):  # every fifth call meets one 429 (or two), then succeeds
        send.call(*(["429"] * (1 + i % 2) if i % 5 == 0 else []), "ok")
    assert not state.engaged() and state.engagements == 0


class _MaxOver(WindowTrigger):
    engage_key, lift_key = "engage_at", "lift_below"

    def measure(self, samples):
        return max(samples)


class _Settings:
    window_calls, min_calls, engage_at, lift_below = 4, 3, 0.5, 0.2


def test_window_trigger_needs_min_calls_and_lifts_only_below_recovery(clock):
    rule = _MaxOver(_Settings(), clock)
    assert not rule.add(0.9) and not rule.add(0.9)  # below min_calls
    assert rule.add(0.9) and rule.engaged()
    for _ in range(4):
        rule.add(0.3)  # under the threshold, above the recovery level
    assert rule.engaged()
    for _ in range(4):
        rule.add(0.1)
    assert not rule.engaged()


def test_actions_cut_the_output_cap_by_30_percent_and_history_from_12_to_6(clock):
    rules = build_rules(parse_config("").degradation, clock)
    by_action = {r.action.name: r.action for r in rules}
    cut = by_action["reduce_max_tokens"]
    assert cut.adjust({"max_tokens": 2000}) == ({"max_tokens": 1400}, "max_tokens 2000→1400")
    params, note = cut.adjust({"max_completion_tokens": 4096})
    assert params == {"max_completion_tokens": 2867} and note == "max_completion_tokens 4096→2867"
    assert cut.adjust({"model": "m"}) == ({"model": "m"}, "no output cap to cut")
    trim = by_action["trim_context"]
    assert trim.history_limit(12) == 6 and trim.history_limit(4) == 4
    assert trim.adjust({"max_tokens": 10}) == ({"max_tokens": 10}, "history ≤ 6")
    assert by_action["switch_to_fast"].reroutes and not cut.reroutes and not trim.reroutes


def test_triggers_and_actions_are_declared_once_with_their_config_names(clock):
    union = typing.get_args(typing.get_args(RuleSettings)[0])
    tags = [typing.get_args(m.model_fields["trigger"].annotation)[0] for m in union]
    assert list(TRIGGERS) == tags == ["rate_limit_429", "latency_high", "error_rate_5percent"]
    assert list(ACTIONS) == list(typing.get_args(ActionName))

    @trigger("test_only_trigger")
    class Probe(WindowTrigger):
        pass

    @action("test_only_action")
    class Nothing(ACTIONS["trim_context"].__mro__[1]):  # the Action base
        pass

    try:
        assert TRIGGERS["test_only_trigger"] is Probe and Probe.name == "test_only_trigger"
        assert ACTIONS["test_only_action"] is Nothing and Nothing.name == "test_only_action"
    finally:
        del TRIGGERS["test_only_trigger"], ACTIONS["test_only_action"]


def test_a_rule_pairs_any_trigger_with_any_action(clock):
    text = (
        "degradation: {rules: [{trigger: error_rate_5percent, action: reduce_max_tokens}, "
        "{trigger: rate_limit_429, action: trim_context, enabled: false}, "
        "{trigger: latency_high, action: switch_to_fast}]}"
    )
    rules = build_rules(parse_config(text).degradation, clock)
    assert [(type(r.trigger).__name__, r.action.name) for r in rules] == [
        ("ErrorRateHigh", "reduce_max_tokens"),
        ("LatencyHigh", "switch_to_fast"),  # the disabled entry builds nothing
    ]
    assert all(isinstance(r, Rule) for r in rules)


def test_degradation_disabled_builds_no_rules(clock, make_session):
    assert build_rules(parse_config("degradation: {enabled: false}").degradation, clock) == []
    session = make_session("degradation: {enabled: false}")
    assert session.policy.rules == [] and session.policy.observers == []
    assert active_row(session) == "none"


# --- end to end through the session -----------------------------------------------------------


def test_rate_limit_429_engages_on_sustained_429s_moves_one_step_and_lifts(
    make_session, offline_server, clock
):
    session = make_session()  # the seed's rule: sustained only
    offline_server.set_faults(retry_after=0)
    for i in range(5):
        offline_server.script(HEAVY_ONLY_429)
        record = session.chat(HELLO, "heavy").record
        assert record.degradations == [Degradation(FALLBACK, "429", "heavy", "main")]
        assert active_row(session) == (
            "none" if i < 4 else "rate_limit_429 (gpt-4o) → switch_to_fast"
        )

    diverted = session.chat(HELLO, "heavy")
    assert models_sent(offline_server, 1) == ["gpt-4o-mini"]  # gpt-4o is not even tried
    record = diverted.record
    assert (record.profile, record.requested_profile, record.attempts) == ("main", "heavy", 1)
    assert record.degradations == [Degradation("rate_limit_429", "switch_to_fast", "heavy", "main")]
    badge = badge_text(record)
    assert "degraded heavy→main (rate_limit_429)" in badge
    assert badge.count("degraded") == 1  # one degradation, said once
    assert session.chat(HELLO, "main").record.model == "gpt-4o-mini"  # main is not diverted
    assert session.chat(HELLO, "fast").record.model == "gpt-3.5-turbo"

    clock.now += 61  # the evidence leaves the 60 s window
    again = session.chat(HELLO, "heavy")
    assert models_sent(offline_server, 1) == ["gpt-4o"] and again.record.degradations == []
    assert active_row(session) == "none"
    assert degradations_counted(session) == {"fallback": 5.0, "rate_limit_429": 1.0}


def test_switch_to_fast_is_one_step_even_when_main_is_rate_limited_too(
    make_session, offline_server
):
    # judged over ≥ 5 calls (the default is 20), so one exhausted call of main's 6 engages it
    session = make_session(
        "degradation: {rules: [{trigger: rate_limit_429, action: switch_to_fast, min_calls: 5, "
        "exhausted_share: 0.1}]}"
    )
    offline_server.set_faults(retry_after=0)
    for _ in range(5):
        offline_server.script(HEAVY_ONLY_429)
        session.chat(HELLO, "heavy")
    offline_server.script(HEAVY_ONLY_429)  # now main's retries end in 429: 1 of its 6 calls
    assert session.chat(HELLO, "main").record.model == "gpt-3.5-turbo"
    assert active_row(session) == "rate_limit_429 (gpt-4o, gpt-4o-mini) → switch_to_fast"

    offline_server.script(HEAVY_ONLY_429)
    record = session.chat(HELLO, "heavy").record
    assert models_sent(offline_server, 5) == ["gpt-4o-mini"] * 4 + ["gpt-3.5-turbo"]
    assert record.degradations == [  # the route moved it one step; only a failure moved it on
        Degradation("rate_limit_429", "switch_to_fast", "heavy", "main"),
        Degradation(FALLBACK, "429", "main", "fast"),
    ]
    assert (record.profile, record.degraded_from) == ("fast", "heavy")
    record = session.chat(HELLO, "main").record  # main itself moves one step: to fast
    assert models_sent(offline_server, 1) == ["gpt-3.5-turbo"]
    assert record.degradations == [Degradation("rate_limit_429", "switch_to_fast", "main", "fast")]


def test_isolated_429s_never_divert_a_call(make_session, offline_server):
    session = make_session()
    offline_server.set_faults(fail_429=0.2, retry_after=0)  # random, absorbed by retries
    records = [session.chat(HELLO, "heavy").record for _ in range(100)]
    assert offline_server.stats_snapshot()["by_status"]["429"] >= 10  # they did happen
    assert not any(d.rule == "rate_limit_429" for r in records for d in r.degradations)
    assert session.policy.rules[0].engagements == 0 and active_row(session) == "none"
    moved = [r for r in records if r.model != "gpt-4o"]
    assert all(r.degradations[0] == Degradation(FALLBACK, "429", "heavy", "main") for r in moved)
    assert len(moved) <= 2  # only calls whose four attempts all met a 429


def test_disabled_degradation_never_diverts_even_sustained_429s(make_session, offline_server):
    session = make_session("degradation: {enabled: false}")
    offline_server.set_faults(retry_after=0)
    for _ in range(8):
        offline_server.script(HEAVY_ONLY_429)
        record = session.chat(HELLO, "heavy").record
        assert models_sent(offline_server, 5) == ["gpt-4o"] * 4 + ["gpt-4o-mini"]
        assert record.degradations == [Degradation(FALLBACK, "429", "heavy", "main")]


def test_diverted_call_still_tries_the_skipped_profile_last(make_session, offline_server):
    session = make_session()
    offline_server.set_faults(retry_after=0)
    for _ in range(5):
        offline_server.script(HEAVY_ONLY_429)
        session.chat(HELLO, "heavy")
    offline_server.script(["500"] * 8 + ["ok"])  # diverted to main, which fails, then fast too
    reply = session.chat(HELLO, "heavy")
    assert models_sent(offline_server, 9) == ["gpt-4o-mini"] * 4 + ["gpt-3.5-turbo"] * 4 + [
        "gpt-4o"  # the skipped heavy is the last resort
    ]
    assert reply.record.profile == "heavy" and reply.record.degraded_from is None
    assert reply.record.degradations == [  # the whole path: one diversion, two fallbacks
        Degradation("rate_limit_429", "switch_to_fast", "heavy", "main"),
        Degradation(FALLBACK, "5xx", "main", "fast"),
        Degradation(FALLBACK, "5xx", "fast", "heavy"),
    ]
    assert "degraded" not in badge_text(reply.record)  # the requested profile answered


def test_latency_high_cuts_max_tokens_by_30_percent_and_lifts(make_session, offline_server):
    session = make_session(
        "degradation: {rules: [{trigger: latency_high, action: reduce_max_tokens, "
        "p95_threshold_s: 20, recover_below_s: 15, window_calls: 4, min_calls: 3}]}"
    )
    offline_server.set_faults(retry_after=25)  # each 429 costs 25 s on the fake clock
    for _ in range(3):
        offline_server.script(["429", "ok"])
        session.chat(HELLO)
    assert last_body(offline_server)["max_tokens"] == 2000
    assert active_row(session).startswith("latency_high (p95 25.0 s) → reduce_max_tokens")

    slowed = session.chat(HELLO)
    assert last_body(offline_server)["max_tokens"] == 1400  # 2000 − 30%
    assert slowed.record.degradations == [Degradation("latency_high", "max_tokens 2000→1400")]
    assert "degraded: latency_high (max_tokens 2000→1400)" in badge_text(slowed.record)
    session.chat(HELLO, "heavy")
    assert last_body(offline_server)["max_tokens"] == 1750  # 2500 − 30%
    session.chat(HELLO, max_tokens=100)
    assert last_body(offline_server)["max_tokens"] == 70  # overrides are cut too

    for _ in range(3):  # fast calls push the slow ones out of the window of 4
        session.chat(HELLO)
    assert active_row(session) == "none"
    assert session.chat(HELLO).record.degradations == []
    assert last_body(offline_server)["max_tokens"] == 2000
    assert degradations_counted(session) == {"latency_high": 4.0}  # calls 4 to 7


def history_sent(session, server) -> tuple[int, CallRecord]:
    request = CellRequest(text="next", profile="main", fmt="markdown", overrides={})
    request.memory = False
    prepared = session.prepare("next", request)
    reply = session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs())
    roles = [m["role"] for m in last_body(server)["messages"]]
    assert roles[0] == "system" and roles[-1] == "user"
    return len(roles) - 2, reply.record


def test_error_rate_trims_history_from_12_to_6_and_lifts(make_session, offline_server):
    session = make_session(
        "degradation: {rules: [{trigger: error_rate_5percent, action: trim_context, "
        "threshold: 0.2, recover_below: 0.1, window_calls: 10, min_calls: 5}]}"
    )
    for i in range(6):
        session.history.append_turn(f"question {i}", f"answer {i}")
    assert history_sent(session, offline_server)[0] == 12
    offline_server.script(["400", "400"])
    for _ in range(2):
        with pytest.raises(Exception, match="HTTP 400"):
            session.chat(HELLO)
    for _ in range(2):
        session.chat(HELLO)
    assert active_row(session) == "error_rate_5percent (40% errors) → trim_context"

    sent, record = history_sent(session, offline_server)
    assert sent == 6 and record.degradations == [Degradation("error_rate_5percent", "history ≤ 6")]
    assert "degraded: error_rate_5percent (history ≤ 6)" in badge_text(record)

    for _ in range(14):  # the two errors leave the window of 10: the rate drops to 0
        session.chat(HELLO)
    assert active_row(session) == "none"
    sent, record = history_sent(session, offline_server)
    assert sent == 12 and record.degradations == []
    assert degradations_counted(session) == {"error_rate_5percent": 8.0}  # calls 6 to 13


def test_an_error_rate_rule_can_cut_max_tokens_instead(make_session, offline_server):
    session = make_session(
        "degradation: {rules: [{trigger: error_rate_5percent, action: reduce_max_tokens, "
        "threshold: 0.2, recover_below: 0.1, window_calls: 10, min_calls: 5}]}"
    )
    for _ in range(6):
        session.history.append_turn("q", "a")
    offline_server.script(["400", "400"])
    for _ in range(2):
        with pytest.raises(Exception, match="HTTP 400"):
            session.chat(HELLO)
    for _ in range(3):
        session.chat(HELLO)
    sent, record = history_sent(session, offline_server)
    assert last_body(offline_server)["max_tokens"] == 1400 and sent == 12  # history untouched
    assert record.degradations == [Degradation("error_rate_5percent", "max_tokens 2000→1400")]
