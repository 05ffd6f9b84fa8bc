"""The SQLite call log: every call with its fields, secrets redacted, shared by kernels."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from kernelutil import Kernel, kernel_env

from mirai_magics.calllog import FILE_NAME, CallLog, read_calls
from mirai_magics.client.records import CallRecord
from mirai_magics.config import parse_config
from mirai_magics.errors import ClientRequestError, ConfigError, RetriesExhaustedError
from mirai_magics.replay import Replay
from mirai_magics.session import Session
from mirai_magics.tools import Answer
from mirai_magics.ui.cell import CellRequest
from mirai_magics.ui.log_cmd import log_row, show_log

KEY = "sk-test-calllog-0123456789abcdef"
SECRET = "plain-db-secret-4711"  # not key-shaped: redacted because its variable says TOKEN
FAST_RETRIES = "defaults: {backoff: {base_ms: 1, max_ms: 2}}\ncontext: {rag: {enabled: false}}\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for name in ("MIRAI_RECORD", "MIRAI_REPLAY", "MIRAI_CONFIG", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIRAI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MIRAI_DB_TOKEN", SECRET)


@pytest.fixture
def make(offline_server, monkeypatch):
    monkeypatch.setenv("MIRAI_BASE_URL", offline_server.url)
    made: list[Session] = []

    def session(extra: str = "") -> Session:
        made.append(Session(parse_config(FAST_RETRIES + extra, "test.yaml")))
        return made[-1]

    session.made = made
    yield session
    for item in made:
        item.close()


def calls(tmp_path: Path, make=None) -> list[dict]:
    for session in getattr(make, "made", []):
        session.flush_logs()  # rows are written by a background thread
    return read_calls(tmp_path / "home" / "calls.sqlite", 100)


def test_every_call_is_logged_with_its_fields_and_no_secret(make, offline_server, tmp_path):
    session = make()
    prompt = f"my key is {KEY} and the db token is {SECRET}"
    reply = session.chat([{"role": "user", "content": prompt}], "main", max_tokens=300)
    offline_server.set_faults(force_status=400)
    with pytest.raises(ClientRequestError):
        session.chat([{"role": "user", "content": "rejected"}], "fast")
    offline_server.set_faults(force_status=500)
    with pytest.raises(RetriesExhaustedError):
        session.chat([{"role": "user", "content": "failing"}], "fast")
    offline_server.set_faults(force_status=None)
    session.embed(["a cell"])
    session.close()

    ok, rejected, failed, embedded = calls(tmp_path, make)
    assert ok["response"] == reply.text.replace(KEY, "[REDACTED]").replace(SECRET, "[REDACTED]")
    assert ok["messages"] == [
        {"role": "user", "content": "my key is [REDACTED] and the db token is [REDACTED]"}
    ]
    assert ok["params"] == {
        "model": "gpt-4o-mini",
        "temperature": 0.25,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.0,
        "max_tokens": 300,
    }
    assert (ok["profile"], ok["model"], ok["attempts"], ok["error"]) == (
        "main",
        "gpt-4o-mini",
        1,
        None,
    )
    assert ok["tokens_in"] == reply.record.tokens_in and ok["tokens_out"] > 0
    assert ok["latency_ms"] > 0 and ok["time"] > 1.7e9 and ok["session"] and ok["conversation"]
    assert ok["request_hash"] and ok["offline"] and not ok["replayed"]
    assert rejected["error_code"] == "client_error" and rejected["attempts"] == 1
    assert "HTTP 400" in rejected["error"] and rejected["response"] is None
    assert failed["error_code"] == "retries_exhausted" and failed["attempts"] == 4
    assert failed["retry_reasons"] == ["500", "500", "500", "500"]
    assert embedded["kind"] == "embeddings" and embedded["messages"] is None
    assert embedded["params"]["model"] == "text-embedding-3-large"
    for path in (tmp_path / "home").iterdir():  # the database, its WAL and shared memory
        data = path.read_bytes()
        assert KEY.encode() not in data and SECRET.encode() not in data, path


def test_a_rotated_secret_is_redacted_and_so_is_the_old_value(make, monkeypatch, tmp_path):
    session = make()
    session.chat([{"role": "user", "content": "before the rotation"}])
    session.flush_logs()
    rotated = "rotated-db-secret-0815"  # same variable, new value: `%env MIRAI_DB_TOKEN=…`
    monkeypatch.setenv("MIRAI_DB_TOKEN", rotated)
    session.chat([{"role": "user", "content": f"new token {rotated}, old token {SECRET}"}])
    session.close()
    (_, row) = calls(tmp_path, make)
    assert row["messages"][-1]["content"] == "new token [REDACTED], old token [REDACTED]"
    for path in (tmp_path / "home").iterdir():
        data = path.read_bytes()
        assert rotated.encode() not in data and SECRET.encode() not in data, path


def test_a_corrupt_log_is_one_clear_error_and_calls_keep_working(make, tmp_path, caplog):
    path = tmp_path / "home" / "calls.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite database " * 200)
    session = make()
    with caplog.at_level(logging.WARNING, logger="mirai_magics.calllog"):
        replies = [session.chat([{"role": "user", "content": f"asked {i}"}]) for i in range(3)]
        session.flush_logs()
    assert all(f"asked {i}" in r.text for i, r in enumerate(replies))
    warned = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0]  # once per outage, not once per call
    with pytest.raises(ConfigError) as error:
        show_log(session)
    message = str(error.value)
    assert message.startswith(f"call log {path} cannot be read") and "\n" not in message
    assert message.endswith(
        "rename it (e.g. to calls.sqlite.broken): the next call starts a new log"
    )
    assert path.read_bytes().startswith(b"this is not an SQLite database")  # left as it was


def test_prompts_stay_out_when_include_prompts_is_off(make, tmp_path):
    session = make("observability: {call_log: {include_prompts: false}}")
    session.chat([{"role": "user", "content": "private words"}])
    session.close()
    (row,) = calls(tmp_path, make)
    assert row["messages"] is None and row["request_hash"]
    assert b'"content":"private words"' not in (tmp_path / "home" / "calls.sqlite").read_bytes()


def test_disabled_log_writes_nothing(make, tmp_path):
    prompt = "a prompt that a disabled call log must not keep"
    make("observability: {call_log: {enabled: false}}").chat([{"role": "user", "content": prompt}])
    home = tmp_path / "home"  # the JSON log and keys.json have switches of their own
    assert not (home / FILE_NAME).exists()
    assert not any(prompt in p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())


def test_reload_keeps_one_writer_per_log(make, tmp_path):
    session = make()
    session.chat([{"role": "user", "content": "before"}])
    session.reload()
    session.chat([{"role": "user", "content": "after"}])
    rows = calls(tmp_path, make)
    assert [r["messages"][-1]["content"] for r in rows] == ["before", "after"]
    assert rows[0]["session"] == rows[1]["session"]


def test_conversation_follows_the_history(make, tmp_path):
    session = make()

    def cell(text: str) -> None:
        request = CellRequest(text=text, profile="main", fmt="markdown", overrides={})
        prepared = session.prepare(text, request)
        reply = session.chat(prepared.messages, "main", **prepared.send_kwargs())
        session.history.append_turn(prepared.user_text, reply.text)

    cell("first")
    cell("second, with the first turn as history")
    session.history.clear()
    cell("a fresh start")
    rows = calls(tmp_path, make)
    assert rows[0]["conversation"] == rows[1]["conversation"] != rows[2]["conversation"]
    assert len(rows[1]["messages"]) == 4


ODD = 'token=abc"def'  # a quote after a secret-named assignment, inside a JSON string


def odd_call(tmp_path: Path) -> Path:
    """A cassette with one call whose message, parameters and tool calls hold odd text and
    secrets, plainly and under secret names."""
    path = tmp_path / "odd.sqlite"
    record = CallRecord(profile="main", model="gpt-4o-mini", requested_profile="main")
    record.params = {"model": "gpt-4o-mini", "metadata": {"db_password": "hunter2"}}
    content = f'grep {ODD} log.txt, then {{"password": "hunter2"}} with {KEY} and {SECRET}'
    arguments = {"q": ODD, "password": "hunter2", "key": KEY, "X-Api-Key": SECRET}
    call = {"id": "call_1", "name": "search", "arguments": arguments}
    log = CallLog(path, cassette=True)
    log.write(record, [{"role": "user", "content": content}], Answer("", [call]))
    log.close()
    return path


def test_json_columns_are_redacted_as_data_so_they_stay_json(tmp_path):
    path = odd_call(tmp_path)
    data = path.read_bytes()
    for secret in ("hunter2", KEY, SECRET):
        assert secret.encode() not in data, secret
    with sqlite3.connect(path) as conn:
        cells = conn.execute("SELECT params, messages, tool_calls FROM calls").fetchone()
    conn.close()
    params, messages, tool_calls = (json.loads(cell) for cell in cells)  # valid JSON, each
    assert params["metadata"] == {"db_password": "[REDACTED]"}
    assert messages[0]["content"] == (
        f'grep {ODD} log.txt, then {{"password": "[REDACTED]"}} with [REDACTED] and [REDACTED]'
    )
    assert tool_calls[0]["arguments"] == {
        "q": ODD,  # `abc` is a word, not a password: nothing to redact
        "password": "[REDACTED]",
        "key": "[REDACTED]",
        "X-Api-Key": "[REDACTED]",
    }
    (row,) = read_calls(path)
    assert (row["params"], row["messages"], row["tool_calls"]) == (params, messages, tool_calls)
    found = Replay(path).lookup(row["request_hash"])
    assert found is not None and found.tool_calls == tuple(tool_calls)


def test_a_row_whose_json_does_not_decode_is_skipped_with_one_warning(tmp_path, caplog):
    path = tmp_path / "calls.sqlite"
    log = CallLog(path, cassette=True)
    for i in range(4):
        record = CallRecord(profile="main", model="m", requested_profile="main")
        log.write(record, [{"role": "user", "content": f"asked {i}"}], f"answer {i}")
    log.close()
    with sqlite3.connect(path) as conn:  # as a version that redacted JSON as text wrote it
        broken = '[{"arguments":{"q":"token=[REDACTED]"def"},"id":"c1","name":"search"}]'
        conn.execute("UPDATE calls SET tool_calls = ? WHERE seq = 2", (broken,))
        conn.execute("UPDATE calls SET messages = '7' WHERE seq = 3")  # JSON, not a list
    conn.close()
    with caplog.at_level(logging.WARNING, logger="mirai_magics.calllog"):
        rows = read_calls(path)
    assert [row["response"] for row in rows] == ["answer 0", "answer 3"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("\n" not in w and str(path) in w for w in warned)
    assert "row 2 skipped: its tool_calls column does not decode (Expecting" in warned[0]
    assert "row 3 skipped: its messages column does not decode (7 is not" in warned[1]


def test_log_row():  # `%mirai log`'s arguments: tests/test_commands.py
    row = {
        "time": 0,
        "cell": "[2]",
        "profile": "main",
        "model": "m",
        "tokens_in": 3,
        "tokens_out": None,
        "latency_ms": 12.4,
        "attempts": 2,
        "error_code": None,
        "error": None,
        "response": "hi\nthere",
        "replayed": True,
        "offline": False,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "degraded_from": "heavy",
        "retry_reasons": ["429"],
    }
    cells = log_row(row)
    assert cells[1:] == (
        "[2]",
        "main/m",
        "3 → ?",
        "12 ms",
        "2",
        "ok · replayed · degraded from heavy · retried 429",
        "q",
        "hi there",
    )


LOOP = """
s = get_ipython().find_magic('mirai').__self__.session
for i in range(25):
    s.chat([{{"role": "user", "content": "{tag} " + str(i)}}], "fast")
print("done")
"""


@pytest.mark.kernel
def test_two_kernels_share_the_log_and_it_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.delenv("MIRAI_HOME")
    env = kernel_env(MIRAI_DB_TOKEN=SECRET)  # no key: each kernel has its own offline server
    with Kernel(tmp_path, env) as a, Kernel(tmp_path, env) as b:
        for k in (a, b):
            k.run("%load_ext mirai_magics")
        ids = [k.kc.execute(LOOP.format(tag=tag)) for k, tag in ((a, "A"), (b, "B"))]
        for k, msg_id in zip((a, b), ids, strict=True):
            assert k.collect(msg_id).text.strip().endswith("done")
        a.restart()
        a.run("%load_ext mirai_magics")
        a.run("%%mirai fast\nafter the restart")
        table = a.run("%mirai log -n 3").text
        dumped = json.loads(a.run("%mirai log -n 100 --json").text)

    path = tmp_path / ".mirai" / "calls.sqlite"  # the default home: .mirai under the cwd
    assert "after the restart" in table and "fast/gpt-3.5-turbo" in table and "cell" in table
    assert len(dumped) == 51 and dumped[-1]["cell"] == "[2]"
    assert {d["messages"][-1]["content"] for d in dumped[:-1]} == {
        f"{tag} {i}" for tag in "AB" for i in range(25)
    }
    assert len({d["id"] for d in dumped}) == 51 and len({d["session"] for d in dumped}) == 3
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
