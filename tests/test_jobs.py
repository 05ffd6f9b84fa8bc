"""Background and batch jobs in process: aligned results, failed rows as values, the store
(committed per result, stored once), waiting for budget, interactive first, cancel and resume
after a SIGKILL — against a real offline server over HTTP and a real SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from serverproc import wait_until

from mirai_magics.api import batch
from mirai_magics.client.limits import TokenBucket
from mirai_magics.errors import JobError, UsageError
from mirai_magics.jobs.store import JobStore

KEY = "sk-test-jobs-0123456789abcdef0123"
CHAT = "/v1/chat/completions"
NO_MEMORY = "context: {rag: {enabled: false}}\n"


def chat_count(server) -> int:
    return server.stats_snapshot().by_path.get(CHAT, 0)


def test_batch_results_are_aligned_and_a_bad_row_is_a_value(make_session, offline_server):
    session = make_session(NO_MEMORY, fake_time=False)
    rows = [{"city": "Paris"}, {"town": "Lyon"}, {"city": "Oslo"}]
    results = batch(rows, template="One fact about {item.city}.", session=session)
    assert [r.index for r in results] == [0, 1, 2]
    assert "One fact about Paris." in results[0].text and "Oslo" in str(results[2])
    bad = results[1]
    assert not bad.ok and bad.text == "" and bad.error_code == "template"
    assert "no field 'city'" in bad.error and "town" in bad.error
    assert results.failed == [bad] and "<error: template" in repr(bad)
    assert results[0].record.model == "gpt-4o-mini" and results[0].record.attempts == 1
    assert chat_count(offline_server) == 2  # the bad row was never sent
    assert "history" not in repr(session.history.window())  # batch carries no history
    assert session.history.window() == []


def test_json_format_parses_each_item(make_session):
    session = make_session(NO_MEMORY, fake_time=False)
    results = batch(["a", "b"], format="json", session=session)
    assert all(r.ok for r in results)
    assert results[0].data["echo"] == "a" and results[1].value["echo"] == "b"


def test_a_series_comes_back_as_a_series_with_its_index(make_session):
    pd = pytest.importorskip("pandas")
    session = make_session(NO_MEMORY, fake_time=False)
    prompts = pd.Series(["x", "y"], index=["first", "second"])
    out = batch(prompts, template="Say {item}", session=session)
    assert isinstance(out, pd.Series) and list(out.index) == ["first", "second"]
    assert "Say y" in out["second"].text


def test_bad_calls_to_batch_are_one_line_errors(make_session):
    session = make_session(NO_MEMORY, fake_time=False)
    with pytest.raises(UsageError, match="one string"):
        batch("just one", session=session)
    with pytest.raises(UsageError, match="no prompts"):
        batch([], session=session)
    with pytest.raises(UsageError, match="unknown profile 'nope'"):
        batch(["a"], profile="nope", session=session)
    with pytest.raises(JobError, match="no job 'zzz'"):
        session.jobs.store.job("zzz")
    assert session.jobs.rows() == []  # nothing half-created


def test_results_are_committed_as_they_arrive_and_stored_once(make_session, tmp_path):
    session = make_session(NO_MEMORY + "limits: {rps: {chat: 4}}\n", fake_time=False)
    job_id = batch([f"q{i}" for i in range(8)], session=session, wait=False)
    path = session.jobs.store.path
    deadline = time.monotonic() + 10
    seen = 0
    while time.monotonic() < deadline and seen == 0:  # another connection sees them early
        other = JobStore(path)
        seen = sum(r is not None for r in other.results(job_id))
        other.close()
        time.sleep(0.05)
    assert 0 < seen < 8, "results must be readable from the file before the batch ends"
    session.jobs.wait(job_id)
    store = session.jobs.store
    first = store.results(job_id)[0]
    assert store.store_result(job_id, 0, {"text": "a second answer"}) is False
    assert store.results(job_id)[0] == first


def test_items_wait_for_token_budget_instead_of_failing(make_session, sleeps):
    session = make_session(
        NO_MEMORY + "limits: {tokens: {per_user_minute: 600, per_minute: 100000}}\n"
        "models: {main: {name: gpt-4o-mini, max_tokens: 60}}\n"
    )
    results = batch([f"item {i}" for i in range(12)], session=session)
    assert all(r.ok for r in results), [r.error for r in results.failed]
    assert sum(sleeps.calls) >= 60, "12 items of ~100 tokens in a 600/min budget must wait"
    assert all(r.record.quota is None for r in results)  # a wait is not a refusal …
    assert not +session.policy.rejections  # … and is not counted as one
    big = batch(["word " * 900], session=session)[0]
    assert big.error_code == "quota_exceeded" and "limits.tokens.per_user_minute" in big.error


def test_background_takes_no_rate_token_while_a_cell_waits_for_one(clock):
    bucket = TokenBucket("chat", 2, clock)
    assert bucket.take_if_free() == 0 and bucket.take_if_free() == 0  # the burst
    assert bucket.take_if_free() > 0  # none free now: nothing taken
    wait = bucket.take(max_wait_s=10)  # an interactive call queues (debt) …
    bucket.waiting += 1  # … and sleeps for it, as Policy._rate_token does
    clock.now += wait + 5  # long after the bucket refilled
    assert bucket.take_if_free() > 0, "background must not pass a cell that is waiting"
    bucket.waiting -= 1
    assert bucket.take_if_free() == 0


def test_cancel_keeps_what_finished_and_marks_the_rest(make_session, offline_server):
    offline_server.set_faults(latency_ms=150)
    session = make_session(NO_MEMORY + "limits: {concurrency: {background: 2}}\n", fake_time=False)
    job_id = batch([f"q{i}" for i in range(30)], session=session, wait=False)
    wait_until(lambda: session.jobs.store.job(job_id).done > 0, 10, "the first result")
    row = session.jobs.cancel(job_id)
    assert row.state == "cancelled" and 0 < row.done < 30
    results = session.jobs.results(job_id)
    assert sum(r.ok for r in results) == row.done
    assert {r.error_code for r in results if not r.ok} == {"cancelled"}
    with pytest.raises(JobError, match="already ended"):
        session.jobs.cancel(job_id)


KILLED_BATCH = """
import os, signal, sys, time
from mirai_magics.api import batch
from mirai_magics.config import parse_config
from mirai_magics.session import Session
session = Session(parse_config(sys.argv[1], "test.yaml"))
job_id = batch([f"q{i}" for i in range(40)], session=session, wait=False)
print(job_id, flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if session.jobs.store.job(job_id).done >= 8:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
"""


def test_sigkill_mid_batch_then_resume_finishes_only_the_rest(
    make_session, offline_server, isolated_home
):
    offline_server.set_faults(latency_ms=80)
    yaml_text = f"endpoint: {{base_url: '{offline_server.url}'}}\n{NO_MEMORY}"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "MIRAI_HOME": str(isolated_home)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_BATCH), yaml_text],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    job_id = proc.stdout.split()[0]
    session = make_session(NO_MEMORY, fake_time=False)
    row = session.jobs.store.job(job_id)
    assert row.orphaned and 8 <= row.done < 40  # finished results survived the SIGKILL
    kept = session.jobs.store.results(job_id)
    pending = len(session.jobs.store.pending(job_id))
    before = chat_count(offline_server)
    session.jobs.resume(job_id)
    row = session.jobs.wait(job_id, timeout_s=30)
    assert row.state == "done" and row.done == 40
    assert chat_count(offline_server) - before == pending  # finished items were not redone
    after = session.jobs.store.results(job_id)
    assert [a for a, k in zip(after, kept, strict=True) if k is not None] == [
        k for k in kept if k is not None
    ]
    assert KEY not in session.jobs.store.path.read_bytes().decode("utf-8", "replace")
