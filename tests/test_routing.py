"""`auto`: the local classifier on the labelled set, the fast classifier, what the server saw."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kernelutil import Kernel, server_kernel_env
from prometheus_client.parser import text_string_to_metric_families
from serverproc import requests_reach

from mirai_magics.calllog import SCHEMA, CallLog, main_log_path, read_calls
from mirai_magics.client.records import CallRecord, Degradation, Reply, Route
from mirai_magics.client.routing import LocalClassifier, Router, parse_verdict
from mirai_magics.config import load_config, parse_config
from mirai_magics.errors import ConfigError, UsageError
from mirai_magics.server import OfflineServer
from mirai_magics.ui.badges import badge_text
from mirai_magics.ui.cell import request_from_args
from mirai_magics.ui.defaults import CellDefaults
from mirai_magics.ui.status import status_rows

KEY = "sk-test-routing-0123456789abcdef"
SET = Path(__file__).resolve().parent / "routing_set.yaml"
CODE = "Write a function that returns the median of a list of numbers."
SPAM = "Is this message spam? 'You won a FREE cruise, click here'"
QUESTION = "What does the acronym ETL stand for?"
HEAVY_ONLY_429 = ["429"] * 4 + ["ok"]  # gpt-4o rate limits all four attempts, main answers
FAST_ROUTER = "routing: {classifier: fast}"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def models_sent(server) -> list[str]:
    return [r["model"] for r in server.stats_snapshot()["recent"]]


def bodies(server) -> list[dict]:
    return [r["body"] for r in server.stats_snapshot()["recent"]]


@pytest.fixture(scope="module")
def classifier() -> LocalClassifier:
    return LocalClassifier.from_config(load_config())


# --- the local classifier on the labelled set ---------------------------------------------


def test_the_labelled_set_is_realistic_in_size_and_languages():
    cases = yaml.safe_load(SET.read_text(encoding="utf-8"))
    russian = [c for c in cases if re.search(r"[а-яё]", c["text"], re.I)]
    assert len(cases) >= 80 and 0.4 <= len(russian) / len(cases) <= 0.6
    assert {c["label"] for c in cases} == {"main", "heavy", "fast"}
    assert sum(1 for c in cases if c.get("asks")) >= 20


def test_the_labelled_set_is_routed_90_percent_right_and_never_code_to_fast(classifier):
    cases = yaml.safe_load(SET.read_text(encoding="utf-8"))
    chosen = [classifier.classify(c["text"]).profile for c in cases]
    right = sum(p == c["label"] for p, c in zip(chosen, cases, strict=True))
    assert right / len(cases) >= 0.90
    to_fast = [
        c["text"] for p, c in zip(chosen, cases, strict=True) if c.get("asks") and p == "fast"
    ]
    assert to_fast == []


@pytest.mark.parametrize(
    ("text", "profile", "reason"),
    [
        ("Проанализируйте выручку по регионам", "heavy", "data analysis"),
        ("Нужен рефакторинг этого модуля", "heavy", "refactoring"),
        ("Оптимизировать этот запрос", "heavy", "optimisation"),
        ("Докажите, что сумма углов треугольника 180°", "heavy", "proof"),
        ("Explain {In[3]}", "heavy", "code in the prompt"),
        ("What stands out in {Out[5]}?", "heavy", "data analysis"),
        ("Отфильтруйте спам из списка", "fast", "spam filtering"),
        ("Нужна классификация отзывов", "fast", "classification"),
        ("Переведите на английский: «спасибо»", "main", "translation"),
        ("Hello!", "main", "simple question"),
    ],
)
def test_russian_inflection_and_references(classifier, text, profile, reason):
    assert classifier.classify(text) == Route(profile, reason)


def test_code_for_a_fast_task_still_goes_to_heavy(classifier):
    decision = classifier.decide("Write a function that classifies emails as spam")
    assert decision.route == Route("heavy", "code generation") and decision.technical


def test_use_cases_of_the_config_count_with_every_word(classifier):
    config = parse_config("models: {heavy: {use_cases: ['временные ряды']}}")
    local = LocalClassifier.from_config(config)
    assert local.classify("Помоги с временными рядами") == Route("heavy", "временные ряды")
    assert local.classify("Помоги со временем").profile == "main"  # one word of two: no point


def test_config_rules_decide_first_and_bad_ones_are_one_line_errors():
    config = parse_config(r"routing: {rules: {fast: ['^label:'], creative: ['\breadme\b']}}")
    local = LocalClassifier.from_config(config)
    assert local.classify("label: Write a function") == Route("fast", "rule: ^label:")
    assert local.classify("Draft the README intro").profile == "creative"
    # refused when the config loads (with its line), not at the first auto call
    with pytest.raises(ConfigError, match=r"routing.rules.heavy\[0\]: not a regular expression"):
        LocalClassifier.from_config(parse_config("routing: {rules: {heavy: ['(']}}"))
    with pytest.raises(ConfigError, match=r"routing\.rules\.embed: unknown profile"):
        LocalClassifier.from_config(parse_config("routing: {rules: {embed: ['x']}}"))


def test_the_fast_classifiers_verdict_is_validated():
    reasons = {"main": ["simple question"], "fast": ["spam filtering"]}
    assert parse_verdict('{"profile": "fast", "reason": "Spam filtering"}', reasons) == (
        "fast",
        "spam filtering",
    )
    for bad in ("not json", "[1]", '{"profile": "heavy", "reason": "proof"}',
                '{"profile": "main", "reason": "spam filtering"}'):  # fmt: skip
        with pytest.raises(ValueError):
            parse_verdict(bad, reasons)


def test_a_fast_verdict_never_sends_code_to_fast_and_a_bad_one_falls_back(clock):
    answers = ['{"profile": "fast", "reason": "spam filtering"}', "definitely heavy"]

    async def fake_fast(messages, profile, **params):  # the queue-backed stand-in for `fast`
        record = CallRecord(profile=profile, model="gpt-3.5-turbo", tokens_in=90, tokens_out=9)
        return Reply(answers.pop(0), record)

    router = Router(parse_config(FAST_ROUTER), clock)
    loop = __import__("asyncio").new_event_loop()
    try:
        route = loop.run_until_complete(router.route(CODE, fake_fast))
        assert route == Route("heavy", "code generation", "fast", 90, 9)
        fallback = loop.run_until_complete(router.route(SPAM, fake_fast))
    finally:
        loop.close()
    assert fallback == Route("fast", "spam filtering", "local (fast failed: invalid answer)")


# --- through a Session, against the offline server --------------------------------------------


def test_auto_sends_each_prompt_to_its_model(make_session, offline_server):
    session = make_session()
    replies = [session.chat(user(t), "auto") for t in (CODE, SPAM, QUESTION)]
    assert models_sent(offline_server) == ["gpt-4o", "gpt-3.5-turbo", "gpt-4o-mini"]
    record = replies[0].record
    assert record.route == Route("heavy", "code generation")
    assert (record.profile, record.requested_profile) == ("heavy", "heavy")
    assert "· auto → heavy (code generation) ·" in badge_text(record)
    assert [r.record.route.reason for r in replies[1:]] == ["spam filtering", "simple question"]


def test_an_explicit_profile_always_wins(make_session, offline_server):
    record = make_session().chat(user(CODE), "fast").record
    assert models_sent(offline_server) == ["gpt-3.5-turbo"] and record.route is None
    assert "auto" not in badge_text(record)


def test_the_cell_as_typed_is_classified_not_the_interpolated_text(make_session, offline_server):
    session = make_session()
    session.chat(user("Explain this: x = 1"), "auto", route_text="Explain {In[3]}")
    assert models_sent(offline_server) == ["gpt-4o"]


def test_degradation_still_moves_a_routed_heavy_call_one_step(make_session, offline_server):
    session = make_session()
    offline_server.set_faults(retry_after=0)
    for _ in range(5):  # sustained 429s on gpt-4o engage rate_limit_429
        offline_server.script(HEAVY_ONLY_429)
        session.chat(user("hello"), "heavy")
    offline_server.reset_stats()
    record = session.chat(user(CODE), "auto").record
    assert models_sent(offline_server) == ["gpt-4o-mini"]  # gpt-4o not even tried
    assert record.route == Route("heavy", "code generation")
    assert (record.requested_profile, record.profile) == ("heavy", "main")
    assert record.degradations == [Degradation("rate_limit_429", "switch_to_fast", "heavy", "main")]
    badge = badge_text(record)
    assert "auto → heavy (code generation)" in badge and "degraded heavy→main" in badge


def test_the_fast_classifier_asks_gpt35_first_then_caches(make_session, offline_server):
    session = make_session(FAST_ROUTER)
    record = session.chat(user(CODE), "auto").record
    assert models_sent(offline_server) == ["gpt-3.5-turbo", "gpt-4o"]
    ask = bodies(offline_server)[0]
    assert ask["response_format"] == {"type": "json_object"}
    assert (ask["temperature"], ask["max_tokens"]) == (0, 40)
    assert ask["messages"][-1]["content"] == CODE
    router_call = session.records[0]  # the classifier's own call is a record of its own
    assert (router_call.profile, router_call.route) == ("fast", None)
    route = record.route
    assert (route.profile, route.reason, route.classifier) == ("heavy", "code generation", "fast")
    assert (route.tokens_in, route.tokens_out) == (router_call.tokens_in, router_call.tokens_out)
    assert f"router {route.tokens_in}→{route.tokens_out} tokens" in badge_text(record)

    offline_server.reset_stats()
    again = session.chat(user(CODE), "auto").record
    assert models_sent(offline_server) == ["gpt-4o"]  # same prompt: no classifier request
    assert again.route.classifier == "fast (cached)"
    assert "router: fast (cached)" in badge_text(again)


def test_a_failing_fast_classifier_falls_back_to_local_and_rests(
    make_session, offline_server, clock
):
    session = make_session(FAST_ROUTER)
    offline_server.script(["500"] * 4 + ["ok"])  # fast's four attempts, then the routed call
    record = session.chat(user(SPAM), "auto").record
    assert models_sent(offline_server) == ["gpt-3.5-turbo"] * 5
    assert record.route == Route("fast", "spam filtering", "local (fast failed: 5xx)")
    assert "router: local (fast failed: 5xx)" in badge_text(record)

    offline_server.reset_stats()
    resting = session.chat(user(CODE), "auto").record
    assert models_sent(offline_server) == ["gpt-4o"]  # it rests: no classifier request
    assert resting.route.classifier == "local (fast resting)"
    clock.now += 61
    session.chat(user(QUESTION), "auto")
    assert models_sent(offline_server)[1:] == ["gpt-3.5-turbo", "gpt-4o-mini"]


def test_a_hanging_fast_classifier_times_out_to_local(make_session, offline_server):
    # 1 s: the classifier's request is surely read (and takes "hang") before it gives up
    session = make_session("routing: {classifier: fast, classifier_timeout_s: 1}")
    offline_server.script(["hang", "ok"])
    record = session.chat(user(CODE), "auto").record
    assert requests_reach(offline_server, 2) == 2
    assert models_sent(offline_server) == ["gpt-3.5-turbo", "gpt-4o"]
    assert record.route == Route("heavy", "code generation", "local (fast failed: timeout)")
    assert record.ok and record.attempts == 1
    router_call = session.records[0]  # its record says why it ended, not "cancelled by the user"
    assert router_call.error == "no verdict within 1 s (routing.classifier_timeout_s)"
    assert router_call.error_code == "timeout"


def test_status_shows_the_split_next_to_the_target(make_session):
    session = make_session()
    defaults = CellDefaults()
    assert "routing" not in dict(status_rows(session, defaults))  # until auto is in use
    for text in [CODE, CODE, SPAM, QUESTION, QUESTION, QUESTION, QUESTION, QUESTION]:
        session.chat(user(text), "auto")
    session.chat(user(CODE), "heavy")  # a named profile is not routed: not counted
    row = dict(status_rows(session, defaults))["routing"]
    assert row == "main 62% · heavy 25% · fast 12% (target 70/25/5) over 8 auto calls"
    defaults.use("auto")
    assert dict(status_rows(make_session(), defaults))["routing"] == (
        "no auto calls yet (target 70/25/5)"
    )


def test_metrics_and_the_call_log_carry_the_route(make_session):
    session = make_session()
    session.chat(user(CODE), "auto")
    session.chat(user(SPAM), "auto")
    session.chat(user(QUESTION), "main")
    families = text_string_to_metric_families(session.telemetry.metrics.text())
    family = next(f for f in families if f.name == "mirai_openai_routes")
    counted = {
        (s.labels["profile"], s.labels["reason"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counted == {("heavy", "code generation"): 1.0, ("fast", "spam filtering"): 1.0}
    session.flush_logs()
    rows = read_calls(main_log_path(session.config), 10)
    assert [(r["route_profile"], r["route_reason"]) for r in rows] == [
        ("heavy", "code generation"),
        ("fast", "spam filtering"),
        (None, None),
    ]


def test_an_old_call_log_opens_and_gains_the_route_columns(tmp_path):
    path = tmp_path / "old-calls.sqlite"
    old = sqlite3.connect(path)  # the layout before the route columns existed
    old.executescript(SCHEMA)
    old.execute("INSERT INTO calls (id, profile, model) VALUES ('call-old', 'main', 'gpt-4o-mini')")
    old.commit()
    old.close()
    log = CallLog(path)
    record = CallRecord(profile="heavy", model="gpt-4o", requested_profile="heavy")
    record.route = Route("heavy", "refactoring")
    log.write(record, user("Refactor {In[2]}"), "done")
    log.close()
    rows = read_calls(path, 10)
    assert [(r["id"], r["route_profile"], r["route_reason"]) for r in rows] == [
        ("call-old", None, None),
        (record.id, "heavy", "refactoring"),
    ]


def test_cells_ask_for_auto_by_name_by_use_or_by_config(make_session):
    args = SimpleNamespace(
        profile=None, model=None, temperature=None, max_tokens=None, format=None, out=None,
        system=None, no_history=False, no_memory=False, k=None, stream=None, no_interp=False,
    )  # fmt: skip
    config = make_session("ui: {default_profile: auto}").config
    assert request_from_args(args, "hi", config).profile == "auto"
    defaults = CellDefaults()
    defaults.use("main")
    assert request_from_args(args, "hi", config, defaults).profile == "main"
    with pytest.raises(UsageError, match="auto picks the profile") as refused:
        request_from_args(SimpleNamespace(**{**vars(args), "model": "gpt-4o"}), "hi", config)
    assert "--model" in str(refused.value)
    with pytest.raises(UsageError, match=r"unknown profile 'turbo' — use one of: .*, or auto"):
        request_from_args(SimpleNamespace(**{**vars(args), "profile": "turbo"}), "hi", config)


# --- a real kernel -------------------------------------------------------------------------------

KERNEL_CONFIG = """
context: {rag: {enabled: false}}
ui: {default_profile: auto}
"""


@pytest.mark.kernel
def test_auto_in_a_kernel_by_config_by_name_and_by_use(tmp_path):
    with OfflineServer().start() as server:
        env = server_kernel_env(server.url, tmp_path, KERNEL_CONFIG, KEY)
        with Kernel(tmp_path, env) as kernel:
            kernel.run("%load_ext mirai_magics")
            by_config = kernel.run("%%mirai\n" + SPAM)  # ui.default_profile: auto
            assert "auto → fast (spam filtering)" in by_config.text
            kernel.run("%mirai use main")
            assert "auto" not in kernel.run("%%mirai\n" + CODE).text
            by_name = kernel.run("%%mirai auto\n" + CODE)
            assert "auto → heavy (code generation)" in by_name.text
            note = kernel.run("%mirai use auto").text
            assert "default profile: auto (routing picks main, heavy or fast per cell" in note
            by_use = kernel.run("%%mirai\n" + QUESTION)
            assert "auto → main (simple question)" in by_use.text
            assert models_sent(server) == ["gpt-3.5-turbo", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
            status = kernel.run("%mirai status").text
            assert "main 33% · heavy 33% · fast 33% (target 70/25/5) over 3 auto calls" in status


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ("routing: {rules: {heavy: ['(unclosed']}}", "routing.rules.heavy[0]: not a regular"),
        ("routing: {target: {hevy: 25}}", "routing.target.hevy: unknown profile"),
        ("routing:\n  rules:\n    nope: ['x']\n", "line 3: routing.rules.nope: unknown profile"),
        ("ui: {default_profile: embed}", "ui.default_profile: unknown profile 'embed'"),
    ],
)
def test_bad_routing_settings_are_refused_when_the_config_loads(yaml_text, where):
    from mirai_magics.config import parse_config
    from mirai_magics.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(yaml_text, "routing.yaml")
    message = str(caught.value)
    assert where in message and message.startswith("routing.yaml: line ")
    assert "\n" not in message
