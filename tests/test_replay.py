"""Replay mode: record against a varying offline server, then answer exactly from the cassette."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kernelutil import REPO, Kernel, kernel_env
from nbclient import NotebookClient

from mirai_magics.calllog import CallLog, read_calls
from mirai_magics.calllog_rows import request_key
from mirai_magics.client.records import CallRecord
from mirai_magics.config import parse_config
from mirai_magics.errors import ConfigError, ReplayMissError
from mirai_magics.memory.context import HEADER
from mirai_magics.prompt import MemoryBlock
from mirai_magics.replay import Replay, chunks, replay_from_env
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session, StreamRestart
from mirai_magics.tools import Answer
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-replay-0123456789abcdef"
PLACEHOLDER = "sk-your-key-goes-here"  # key-shaped: redacted in the call log and the cassette
NOTEBOOK = REPO / "notebooks" / "replay.ipynb"
CASSETTE = REPO / "notebooks" / "replay.cassette.sqlite"
SANITIZE = REPO / "notebooks" / "nbval_sanitize.cfg"


def chat_requests(server: OfflineServer) -> int:
    return server.stats_snapshot().by_path.get("/v1/chat/completions", 0)


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for name in ("MIRAI_RECORD", "MIRAI_REPLAY", "MIRAI_REPLAY_MODE", "MIRAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("MIRAI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def varying():
    # A random seed: the recorded variants cannot be reproduced by any later live run.
    with OfflineServer(vary=True, seed=int.from_bytes(os.urandom(4), "big")).start() as srv:
        yield srv


@pytest.fixture
def sessions(varying, monkeypatch):
    monkeypatch.setenv("MIRAI_BASE_URL", varying.url)
    made: list[Session] = []

    def make() -> Session:
        made.append(Session(parse_config("context: {rag: {enabled: false}}", "test.yaml")))
        return made[-1]

    yield make
    for session in made:
        session.close()


def record(make, monkeypatch, cassette: Path, prompts: list[str]) -> list[str]:
    monkeypatch.setenv("MIRAI_RECORD", str(cassette))
    session = make()
    texts = [session.chat(ask(p)).text for p in prompts]
    session.close()
    monkeypatch.delenv("MIRAI_RECORD")
    return texts


def cells(session: Session, texts: list[str], memory: bool = False) -> list:
    """Run prompts the way `%%mirai` cells do: prepared, sent, remembered as history."""
    replies = []
    for text in texts:
        request = CellRequest(text, "main", "markdown", {}, memory=memory)
        prepared = session.prepare(text, request)
        replies.append(session.chat(prepared.messages, "main", **prepared.send_kwargs()))
        session.history.append_turn(prepared.user_text, replies[-1].text)
    return replies


def test_request_key_is_stable_and_sees_every_part():
    params = {"model": "gpt-4o-mini", "temperature": 0.25, "max_tokens": 10}
    key = request_key(params, ask("hi"))
    assert key == request_key(dict(reversed(params.items())), ask("hi"))
    assert key != request_key({**params, "temperature": 0.3}, ask("hi"))
    assert key != request_key({**params, "model": "gpt-4o"}, ask("hi"))
    assert key != request_key(params, ask("hi!"))
    memory = {
        "role": "system",
        "content": MemoryBlock(f"{HEADER}\n\nIn [1] — similarity 0.91\n```\nx = 1\n```"),
    }
    assert key == request_key(params, [*ask("hi")[:1], memory, *ask("hi")[1:]])  # memory: out
    # marked by its type, not its text: a message that only quotes the header is kept
    quoted = {"role": "system", "content": str(memory["content"])}
    assert key != request_key(params, [*ask("hi")[:1], quoted, *ask("hi")[1:]])
    secret = [{"role": "user", "content": f"the {PLACEHOLDER} and plain-db-secret"}]
    redacted = [{"role": "user", "content": "the [REDACTED] and [REDACTED]"}]
    assert request_key(params, secret, ["plain-db-secret"]) == request_key(params, redacted)
    assert all("".join(chunks(t)) == t for t in ("", "one", "a b c d e f g h", "x " * 50))
    assert len(chunks("word " * 40)) > 2


def test_record_then_replay_exactly_in_order_without_network(
    sessions, varying, monkeypatch, tmp_path
):
    cassette = tmp_path / "run.cassette.sqlite"
    texts = record(sessions, monkeypatch, cassette, ["same", "same", "other"])
    assert texts[0] != texts[1] and "[variant " in texts[0]  # the server varies its answers
    assert not list(tmp_path.glob("run.cassette.sqlite-*"))  # one committable file
    sent = chat_requests(varying)

    session = sessions()
    session.set_replay(Replay(cassette))
    replies = [session.chat(ask(p)) for p in ["same", "same", "other", "same"]]
    assert [r.text for r in replies] == [*texts, texts[1]]
    record_ = replies[0].record
    assert (record_.replayed, record_.attempts, record_.offline) == (True, 1, True)
    assert record_.tokens_out and record_.tokens_in and record_.finish_reason == "stop"
    streamed = list(session.stream_chat(ask("other")))
    pieces = [p for p in streamed if isinstance(p, str)]
    assert len(pieces) > 1 and "".join(pieces) == texts[2]
    assert not any(isinstance(p, StreamRestart) for p in streamed)
    assert streamed[-1].record.replayed
    assert chat_requests(varying) == sent  # nothing went over the network


def test_replaying_from_the_main_log_twice_gives_the_recorded_answers(sessions, tmp_path):
    session = sessions()
    recorded = [session.chat(ask("same")).text for _ in range(2)]
    session.close()
    main_log = tmp_path / "home" / "calls.sqlite"  # MIRAI_REPLAY may name the main call log
    for _ in range(2):  # each replay run appends its replayed rows to that same log
        session = sessions()
        session.set_replay(Replay(main_log))
        replayed = []
        for _ in range(2):
            replayed.append(session.chat(ask("same")).text)
            session.flush_logs()  # the replayed row is in the log before the next lookup
        assert replayed == recorded
        session.close()
    with sqlite3.connect(main_log) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls WHERE replayed = 1").fetchone()[0] == 4
    conn.close()
    assert Replay(main_log).count() == 2  # replayed rows are not recordings


def test_a_redacted_answer_still_replays_the_cells_that_follow(sessions, monkeypatch, tmp_path):
    cassette = tmp_path / "c.sqlite"
    prompts = [f"What does {PLACEHOLDER} in our README mean?", "And where do I put it?"]
    monkeypatch.setenv("MIRAI_RECORD", str(cassette))
    session = sessions()
    recorded = [r.text for r in cells(session, prompts)]
    session.close()
    monkeypatch.delenv("MIRAI_RECORD")
    assert PLACEHOLDER in recorded[0]  # the server echoes it; the cassette holds [REDACTED]
    assert PLACEHOLDER.encode() not in cassette.read_bytes()

    session = sessions()
    session.set_replay(Replay(cassette))  # strict: the follow-up carries the redacted answer
    replayed = cells(session, prompts)
    assert [r.text for r in replayed] == [t.replace(PLACEHOLDER, "[REDACTED]") for t in recorded]
    assert all(r.record.replayed for r in replayed)


def test_strict_miss_explains_and_fallthrough_goes_live(sessions, varying, monkeypatch, tmp_path):
    cassette = tmp_path / "c.sqlite"
    record(sessions, monkeypatch, cassette, ["recorded prompt"])
    session = sessions()
    session.set_replay(Replay(cassette))
    with pytest.raises(ReplayMissError, match="never recorded") as miss:
        session.chat(ask("a prompt nobody recorded"))
    assert '"a prompt nobody recorded"' in str(miss.value) and "MIRAI_REPLAY_MODE" in str(
        miss.value
    )
    with pytest.raises(ReplayMissError, match="other history, system prompt or options"):
        session.chat(ask("recorded prompt"), temperature=0.5)
    assert session.records[-1].error_code == "replay_miss"

    sent = chat_requests(varying)
    session.set_replay(Replay(cassette, "fallthrough"))
    live = session.chat(ask("a prompt nobody recorded"))
    assert not live.record.replayed and "[variant " in live.text
    assert chat_requests(varying) == sent + 1
    assert session.replay.misses == 1


def test_environment_switches(sessions, monkeypatch, tmp_path):
    cassette = tmp_path / "c.sqlite"
    record(sessions, monkeypatch, cassette, ["hello"])
    monkeypatch.setenv("MIRAI_REPLAY", str(cassette))
    assert replay_from_env().mode == "strict"
    assert sessions().chat(ask("hello")).record.replayed
    monkeypatch.setenv("MIRAI_REPLAY_MODE", "fallthrough")
    assert replay_from_env().mode == "fallthrough"
    monkeypatch.setenv("MIRAI_RECORD", str(tmp_path / "new.sqlite"))
    assert replay_from_env() is None  # a recording run always goes live
    monkeypatch.delenv("MIRAI_RECORD")
    monkeypatch.setenv("MIRAI_REPLAY_MODE", "lenient")
    with pytest.raises(ConfigError, match=r"strict \(default\) or fallthrough"):
        replay_from_env()
    monkeypatch.setenv("MIRAI_REPLAY_MODE", "strict")
    monkeypatch.setenv("MIRAI_REPLAY", str(tmp_path / "missing.sqlite"))
    with pytest.raises(ConfigError, match="does not exist"):
        sessions().chat(ask("hello"))
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a mirai call log"):
        Replay(tmp_path / "junk.sqlite").count()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = ask('Say "Checking." and call get_weather.')


def test_a_recorded_tool_call_answer_replays_with_its_calls(
    sessions, varying, monkeypatch, tmp_path
):
    cassette = tmp_path / "tools.cassette.sqlite"
    monkeypatch.setenv("MIRAI_RECORD", str(cassette))
    session = sessions()
    live = session.chat(CALL, tools=[WEATHER])
    live_streamed = list(session.stream_chat(CALL, tools=[WEATHER], temperature=0.5))[-1]
    session.close()
    monkeypatch.delenv("MIRAI_RECORD")
    assert live.tool_calls and live_streamed.tool_calls  # the server asked for get_weather
    sent = chat_requests(varying)

    session = sessions()
    session.set_replay(Replay(cassette))
    replayed = session.chat(CALL, tools=[WEATHER])
    assert replayed.record.replayed and replayed.record.finish_reason == "tool_calls"
    assert (replayed.text, replayed.tool_calls) == ("Checking.", live.tool_calls)
    streamed = list(session.stream_chat(CALL, tools=[WEATHER], temperature=0.5))
    assert "".join(p for p in streamed if isinstance(p, str)) == "Checking."
    assert streamed[-1].tool_calls == live_streamed.tool_calls
    assert chat_requests(varying) == sent  # nothing went over the network


def test_tool_calls_are_stored_redacted_like_answers(tmp_path):
    path = tmp_path / "calls.sqlite"
    call = {"id": "call_9", "name": "login", "arguments": {"api_key": "plain-value-xyz"}}
    leaked = {"id": "call_10", "name": "connect", "arguments": f"use {PLACEHOLDER}"}
    record = CallRecord(profile="main", model="gpt-4o-mini", requested_profile="main")
    log = CallLog(path, cassette=True)
    log.write(record, ask("log me in"), Answer("", [call, leaked]))
    log.close()
    stored = path.read_bytes()
    assert b"plain-value-xyz" not in stored and PLACEHOLDER.encode() not in stored
    (row,) = read_calls(path)
    assert row["tool_calls"] == [
        {"id": "call_9", "name": "login", "arguments": {"api_key": "[REDACTED]"}},
        {"id": "call_10", "name": "connect", "arguments": "use [REDACTED]"},
    ]
    found = Replay(path).lookup(row["request_hash"])
    assert found is not None and found.tool_calls == tuple(row["tool_calls"])


def test_a_log_written_before_tool_calls_were_kept_still_replays(sessions, monkeypatch, tmp_path):
    cassette = tmp_path / "old.cassette.sqlite"
    texts = record(sessions, monkeypatch, cassette, ["hello"])
    with sqlite3.connect(cassette) as conn:  # the layout before the tool_calls column
        conn.execute("ALTER TABLE calls DROP COLUMN tool_calls")
    conn.close()
    session = sessions()
    session.set_replay(Replay(cassette))
    reply = session.chat(ask("hello"))
    assert (reply.text, reply.tool_calls, reply.record.replayed) == (texts[0], [], True)
    (row,) = read_calls(cassette)
    assert row["tool_calls"] == []


ODD = 'grep token=abc"def log.txt, then {"password": "hunter2"} with ' + KEY


def test_a_prompt_with_quotes_and_secrets_records_as_json_and_replays(
    sessions, varying, monkeypatch, tmp_path
):
    cassette = tmp_path / "odd.cassette.sqlite"
    record(sessions, monkeypatch, cassette, [ODD])
    data = cassette.read_bytes()
    assert b"hunter2" not in data and KEY.encode() not in data
    (row,) = read_calls(cassette)  # the messages column decodes
    assert row["messages"][-1]["content"] == (
        'grep token=abc"def log.txt, then {"password": "[REDACTED]"} with [REDACTED]'
    )
    sent = chat_requests(varying)
    session = sessions()
    session.set_replay(Replay(cassette))
    reply = session.chat(ask(ODD))
    assert (reply.text, reply.record.replayed) == (row["response"], True)
    assert chat_requests(varying) == sent


def test_a_damaged_tool_calls_cell_is_one_clear_error_and_other_rows_replay(
    sessions, varying, monkeypatch, tmp_path
):
    cassette = tmp_path / "damaged.cassette.sqlite"
    texts = record(sessions, monkeypatch, cassette, ["hello", "bye"])
    with sqlite3.connect(cassette) as conn:  # as a version that redacted JSON as text wrote it
        broken = '[{"arguments":{"q":"token=[REDACTED]"def"},"id":"c1","name":"search"}]'
        conn.execute("UPDATE calls SET tool_calls = ? WHERE seq = 2", (broken,))
    conn.close()
    sent = chat_requests(varying)
    for mode in ("strict", "fallthrough"):
        session = sessions()
        session.set_replay(Replay(cassette, mode))
        assert session.chat(ask("hello")).text == texts[0]
        with pytest.raises(ConfigError) as error:
            session.chat(ask("bye"))
        message = str(error.value)
        assert message.startswith(f"replay file {cassette}: row 2 (call ") and "\n" not in message
        assert "has tool calls that are not JSON" in message and "MIRAI_RECORD" in message
    assert chat_requests(varying) == sent  # nothing went live in place of the damaged row


MEMORY_CELLS = [
    "sales = [{'month': 'jan', 'amount': 3}, {'month': 'feb', 'amount': 5}]",
    "monthly = {row['month']: row['amount'] for row in sales}",
]
MEMORY_PROMPT = "%%mirai\nPlot the monthly sales totals."
FLUSH = "get_ipython().find_magic('mirai').__self__.session.flush_logs()"


def run_memory_notebook(cwd: Path, env: dict[str, str], first: str) -> tuple[str, str]:
    """(answer, badge) of a `%%mirai` cell with memory on, after two code cells."""
    with Kernel(cwd, env) as kernel:
        kernel.run("%load_ext mirai_magics")
        kernel.run(first)
        for cell in MEMORY_CELLS:
            kernel.run(cell)
        texts = kernel.run(MEMORY_PROMPT).data("text/plain")
        kernel.run(FLUSH)  # the test shuts the kernel down hard: write the cassette first
    badge = [t for t in texts if t.startswith("[mirai] ")]
    assert len(texts) == 2 and len(badge) == 1, texts
    return texts[0], badge[0]


@pytest.mark.kernel
def test_notebook_recorded_with_memory_on_replays_strictly_in_a_fresh_home(varying, tmp_path):
    cassette = tmp_path / "memory.cassette.sqlite"
    every_cell_hits = "context: {rag: {min_score: -1.0}}\n"
    (tmp_path / "mirai.yaml").write_text(every_cell_hits)
    recording = kernel_env(
        MIRAI_BASE_URL=varying.url,
        OPENAI_API_KEY=KEY,
        MIRAI_HOME=str(tmp_path / "recording-home"),
        MIRAI_CONFIG=str(tmp_path / "mirai.yaml"),
        MIRAI_RECORD=str(cassette),
    )
    answer, badge = run_memory_notebook(tmp_path, recording, "%env MIRAI_STREAM=0")
    assert "memory: 2 cells" in badge and "replayed" not in badge
    with sqlite3.connect(cassette) as conn:
        (sent,) = conn.execute("SELECT messages FROM calls").fetchone()
    conn.close()
    assert sum(m["content"].startswith(HEADER) for m in json.loads(sent)) == 1

    # CI: a fresh checkout, no key, no endpoint, an empty memory, strict replay.
    fresh = kernel_env(MIRAI_HOME=str(tmp_path / "ci-home"))
    replayed, badge = run_memory_notebook(tmp_path, fresh, f"%mirai replay {cassette}")
    assert replayed == answer and "[variant " in answer
    assert "replayed" in badge and "memory: off (replay)" in badge


# --- the notebook ------------------------------------------------------------------------------


def execute(notebook: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3").execute(env=env, cwd=str(notebook.parent))
    return nb


def answers(nb: nbformat.NotebookNode) -> list[str]:
    """The text of every answer (not badges, not notes) in a notebook's outputs."""
    found = []
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%mirai"):
            found += [
                o.data["text/plain"]
                for o in cell.outputs
                if "data" in o and not o.data["text/plain"].startswith("[mirai]")
            ]
    return found


def badges(nb: nbformat.NotebookNode) -> list[str]:
    texts = [
        o.data.get("text/plain", "") for c in nb.cells for o in c.get("outputs", []) if "data" in o
    ]
    return [t for t in texts if t.startswith("[mirai]")]


def nbval(notebook: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    command += ["--nbval"]
    command += ["--nbval-sanitize-with", str(SANITIZE), str(notebook)]
    return subprocess.run(
        command, cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=240
    )


def replay_env(home: Path) -> dict[str, str]:
    return kernel_env(MIRAI_STREAM="0", MIRAI_HOME=str(home), MIRAI_USER="notebook")


@pytest.mark.kernel
def test_notebook_recorded_against_varying_server_replays_exactly(varying, tmp_path):
    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / "replay.ipynb")
    cassette = work / "replay.cassette.sqlite"
    live = dict(MIRAI_BASE_URL=varying.url, OPENAI_API_KEY=KEY, MIRAI_HOME=str(tmp_path / "h"))
    recorded = execute(work / "replay.ipynb", kernel_env(MIRAI_RECORD=str(cassette), **live))
    assert len(answers(recorded)) == 4 and all("variant" in a for a in answers(recorded))
    sent = chat_requests(varying)
    assert sent == 4

    # Replay with the live endpoint still configured: any call that went out would be counted.
    replayed = execute(work / "replay.ipynb", kernel_env(**live))
    assert answers(replayed) == answers(recorded)
    assert len(badges(replayed)) == 4 and all("replayed" in b for b in badges(replayed))
    assert chat_requests(varying) == sent  # (embeddings for the memory index are not replayed)
    nbformat.write(replayed, work / "replay.ipynb")
    if os.environ.get("MIRAI_RERECORD") == "1":  # refresh the committed notebook and cassette
        shutil.copy(work / "replay.ipynb", NOTEBOOK)
        shutil.copy(cassette, CASSETTE)

    # Strict replay fails as soon as the cassette lacks one recording: a red line naming the
    # cell in the notebook, and a failing nbval run.
    with sqlite3.connect(cassette) as conn:
        conn.execute("DELETE FROM calls WHERE seq = (SELECT MAX(seq) FROM calls)")
    conn.close()
    damaged = execute(work / "replay.ipynb", replay_env(tmp_path / "h2"))
    missing = damaged.cells[8].outputs[0].data["text/plain"]
    assert missing.startswith("[mirai] ✗ replay: no recording for cell [6] (reasoning/o1-preview: ")
    result = nbval(work / "replay.ipynb", replay_env(tmp_path / "h3"))
    assert result.returncode != 0
    assert "Cell 5: Cell outputs differ" in result.stdout and "3 failed, 5 passed" in result.stdout


@pytest.mark.kernel
def test_committed_notebook_passes_nbval_strictly_from_its_cassette(tmp_path):
    assert CASSETTE.stat().st_size < 100_000
    meta = nbformat.read(NOTEBOOK, as_version=4).metadata
    assert meta.kernelspec.name == "python3"
    result = nbval(NOTEBOOK, replay_env(tmp_path / "home"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout
