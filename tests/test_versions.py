"""Pinned model versions: what is sent, what the API reports answering, and where it shows."""

from __future__ import annotations

import sqlite3

import openai
import pytest

from mirai_magics.calllog import SCHEMA, CallLog, read_calls
from mirai_magics.client.records import CallRecord
from mirai_magics.config import parse_config
from mirai_magics.pricing import price_for, undated
from mirai_magics.ui.badges import badge_text, estimated_cost
from mirai_magics.ui.defaults import CellDefaults
from mirai_magics.ui.status import status_rows

KEY = "sk-test-versions-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]
PINNED = "models: {heavy: {name: gpt-4o-2024-08-06}}"


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def logged(session) -> list[dict]:
    session.flush_logs()
    return read_calls(session.call_logs[0].path, limit=50)


def test_a_pinned_version_is_sent_and_reported_as_asked(make_session, offline_server):
    session = make_session(PINNED)
    reply = session.chat(HELLO, "heavy")
    assert last_body(offline_server)["model"] == "gpt-4o-2024-08-06"
    record = reply.record
    assert (record.model, record.response_model) == ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06")
    text = badge_text(record)
    assert "heavy/gpt-4o-2024-08-06" in text and "answered by" not in text
    assert not [row for row in status_rows(session, CellDefaults()) if "answered by" in row[0]]


@pytest.mark.parametrize("stream", [False, True])
def test_another_reported_model_shows_on_badge_status_and_log(make_session, offline_server, stream):
    offline_server.set_faults(answer_model="gpt-4o-2024-08-06")
    session = make_session()
    if stream:
        reply = list(session.stream_chat(HELLO, "heavy"))[-1]
    else:
        reply = session.chat(HELLO, "heavy")
    assert last_body(offline_server)["model"] == "gpt-4o"  # asked for the alias
    assert reply.record.response_model == "gpt-4o-2024-08-06"
    assert badge_text(reply.record).endswith("· offline · answered by gpt-4o-2024-08-06")
    rows = dict(status_rows(session, CellDefaults()))
    assert rows["answered by heavy"] == "gpt-4o-2024-08-06 (asked gpt-4o)"
    assert "answered by main" not in rows
    row = logged(session)[-1]
    assert (row["model"], row["response_model"], row["canary"]) == (
        "gpt-4o",
        "gpt-4o-2024-08-06",
        None,
    )


def test_answer_model_and_fail_models_faults(offline_server):
    client = openai.OpenAI(base_url=offline_server.url, api_key=KEY, max_retries=0)
    offline_server.set_faults(fail_models="gpt-4o-2024-11-20, o1", answer_model="x-model")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-2024-11-20", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="o1", input="a")
    answer = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.model == "x-model"
    offline_server.set_faults(status_5xx=503)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="o1", messages=HELLO)
    assert failed.value.status_code == 503
    by_status = offline_server.stats_snapshot()["by_status"]
    assert (by_status["500"], by_status["503"], by_status["200"]) == (2, 1, 1)


def test_an_old_call_log_gains_the_version_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)  # the first layout, without response_model / canary
    conn.execute("INSERT INTO calls (id, kind, model) VALUES ('old-1', 'chat', 'gpt-4o')")
    conn.commit()
    conn.close()
    record = CallRecord(profile="heavy", model="gpt-4o-2024-11-20", requested_profile="heavy")
    record.response_model, record.canary = "gpt-4o-2024-11-20", "gpt-4o-2024-11-20"
    log = CallLog(path)
    log.write(record, HELLO, "answer")
    log.close()
    old, new = read_calls(path)
    assert (old["response_model"], old["canary"]) == (None, None)
    assert (new["response_model"], new["canary"]) == ("gpt-4o-2024-11-20", "gpt-4o-2024-11-20")
    CallLog(path).close()  # reopening a file that has the columns changes nothing


def test_a_dated_model_is_priced_as_its_undated_name_unless_listed():
    config = parse_config(
        "pricing: {gpt-4o: {input: 2.5, output: 10}, gpt-4o-2024-11-20: {input: 1.0, output: 2.0}}"
    )
    prices = config.pricing
    assert undated("gpt-4o-2024-08-06") == "gpt-4o" and undated("o1-preview") == "o1-preview"
    assert price_for("gpt-4o-2024-08-06", prices) is prices["gpt-4o"]
    assert price_for("gpt-4o-2024-11-20", prices).input == 1.0
    assert price_for("llama3", prices) is None
    record = CallRecord(profile="heavy", model="gpt-4o-2024-08-06", tokens_in=1000)
    record.tokens_out = 100
    assert estimated_cost(record, prices) == pytest.approx((1000 * 2.5 + 100 * 10) / 1e6)
