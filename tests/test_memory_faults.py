"""Notebook memory when things go wrong: texts the endpoint refuses, an endpoint with other
dimensions, a corrupt ``memory.sqlite``, malformed notebooks, opt-outs racing in one batch.

The offline server plays OpenAI's strictness where a test needs it (its input check or its
``dimensions`` handling is swapped for the test's, at the server, not in the client).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from mirai_magics.config import parse_config
from mirai_magics.errors import ConfigError, MiraiError
from mirai_magics.session import Session
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-memfaults-0123456789abcdef"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIRAI_HOME", str(tmp_path / ".mirai"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return tmp_path / ".mirai"


@pytest.fixture
def open_session(home, offline_server):
    sessions: list[Session] = []

    def make(embedder: str = "openai", extra: str = "", **memory: object) -> Session:
        memory["embedder"] = embedder
        rag = f"context: {{rag: {json.dumps(memory)}}}\n"
        yaml = f"endpoint: {{base_url: '{offline_server.url}'}}\n{rag}"
        session = Session(parse_config(yaml + extra, "test.yaml"))
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def sent_inputs(server) -> list[str]:
    """Every embedding input the server received (accepted or not)."""
    texts: list[str] = []
    for record in server.stats_snapshot()["recent"]:
        if record["path"] == "/v1/embeddings":
            value = record["body"]["input"]
            texts += [value] if isinstance(value, str) else value
    return texts


@contextlib.contextmanager
def one_round(session: Session):
    """Hold the engine loop: every cell queued meanwhile is indexed in one round."""
    session.memory.state()
    assert session.memory.flush(30)
    started, gate = threading.Event(), threading.Event()

    async def hold() -> None:
        started.set()
        gate.wait(30)  # blocks the loop on purpose: the indexer cannot take a batch yet

    job = session.engine.submit(hold())
    assert started.wait(30)
    try:
        yield
    finally:
        gate.set()
        job.result()
    assert session.memory.flush(30)


def stats(session: Session) -> dict[str, str]:
    return dict(session.memory.stats())


# --- texts the endpoint refuses ---------------------------------------------------------------


def test_a_refused_text_is_recorded_and_the_others_are_embedded(open_session, offline_server):
    offline_server.set_faults(embed_refuse="FORBIDDEN")
    session = open_session()
    session.memory.add_cell("note = 'FORBIDDEN'", count=1)
    assert session.memory.flush(30)
    for n in range(2, 5):
        session.memory.add_cell(f"value_{n} = compute_{n}(data)", count=n)
        assert session.memory.flush(30)
    found = stats(session)
    assert found["pending"].startswith("0 ") and found["refused"].startswith("1 ")
    assert session.memory.search("value_3 compute_3", 1)[0].label == "In[3]"
    session.close()

    offline_server.reset_stats()
    again = open_session()
    again.memory.add_cell("later = 1 + 1", count=1)
    assert again.memory.flush(30) and stats(again)["pending"].startswith("0 ")
    assert not [t for t in sent_inputs(offline_server) if "FORBIDDEN" in t]  # never re-sent
    again.memory.rebuild()  # …until a rebuild tries it again
    assert again.memory.flush(30)
    assert [t for t in sent_inputs(offline_server) if "FORBIDDEN" in t]


def test_an_input_over_the_model_limit_is_embedded_from_its_beginning(open_session, offline_server):
    offline_server.set_faults(embed_max_chars=4000)  # a model's token limit
    session = open_session()
    session.memory.add_cell("notes = '" + "東京" * 3000 + "'", count=1)
    session.memory.add_cell("rows = load_rows()", count=2)
    assert session.memory.flush(30)
    found = stats(session)
    assert found["pending"].startswith("0 ") and "refused" not in found
    assert session.memory.search("東京 notes", 1)[0].label == "In[1]"


def test_each_sub_batch_is_kept_when_a_later_one_fails(open_session, offline_server):
    session = open_session()
    offline_server.script(["ok", "401"])  # the second request of the round fails
    with one_round(session):
        for n in range(100):
            session.memory.add_cell(f"metric_{n} = measure({n})", count=n + 1)
    found = stats(session)
    assert found["pending"].startswith("36 ")  # the first 64 are cached and searchable
    assert "HTTP 401" in found["last error"]
    assert len(session.memory.state().index) == 64


# --- an endpoint that ignores `dimensions` ----------------------------------------------------


def test_other_dimensions_are_a_config_error_not_a_poisoned_cache(
    open_session, offline_server, home
):
    offline_server.set_faults(embed_dims=768)  # an endpoint that ignores `dimensions`
    session = open_session(extra="models: {embed: {dimensions: 1024}}")
    session.memory.add_cell("x_0 = load_data()", count=1)
    assert session.memory.flush(30)
    found = stats(session)
    assert "models.embed.dimensions: 768" in found["last error"]
    assert found["pending"].startswith("1 ")
    with pytest.raises(ConfigError, match=r"models\.embed\.dimensions: 768"):
        session.memory.search("load data", 2)
    request = CellRequest(text="load data?", profile="main", fmt="markdown", overrides={})
    flags = session.prepare(request.text, request).flags
    assert flags[0].startswith("memory unavailable: ") and "768" in flags[0]
    session.close()
    db = sqlite3.connect(home / "memory.sqlite")
    assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0
    db.close()


def test_cached_vectors_of_the_wrong_size_are_embedded_again(open_session, home):
    first = open_session("local")
    first.memory.add_cell("total = sum(order_amounts)", count=1)
    first.memory.add_cell("plt.hist(ages, bins=20)", count=2)
    assert first.memory.flush(30)
    first.close()
    db = sqlite3.connect(home / "memory.sqlite")
    db.execute("UPDATE vectors SET vector = zeroblob(3072)")  # as an older version cached them
    db.commit()
    db.close()
    again = open_session("local")
    assert again.memory.flush(30) and stats(again)["pending"].startswith("0 ")
    assert again.memory.search("histogram of ages", 1)[0].label == "In[2]"
    assert len(again.memory.state().index) == 2


def test_a_failed_open_closes_the_database(open_session, home):
    home.mkdir()
    (home / "memory.usearch.lock").mkdir()  # the index cannot take its file lock
    session = open_session("local", exact_search_below=0)
    with pytest.raises(OSError) as failure:  # its traceback stays referenced (as IPython's)
        session.memory.state()
    fds = Path("/proc/self/fd")
    if not fds.exists():
        pytest.skip("needs /proc")
    database = str(home / "memory.sqlite")
    still_open = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            still_open += [fd] if os.readlink(fd).startswith(database) else []
    assert still_open == [] and isinstance(failure.value, IsADirectoryError)


# --- opt-out re-run in the same round -----------------------------------------------------------


def test_no_index_wins_when_both_runs_land_in_one_round(open_session):
    session = open_session("local")
    with one_round(session):
        session.memory.add_cell("db_password = 'hunter2-long'", cell_id="c1", count=1)
        opted_out = "db_password = 'hunter2-long'  # mirai: no-index"
        session.memory.add_cell(opted_out, cell_id="c1", count=2)
    assert session.memory.search("db password", 3) == []

    with one_round(session):  # and the other way round: the last run counts
        session.memory.add_cell("rows = load()  # mirai: no-index", cell_id="c2", count=3)
        session.memory.add_cell("rows = load()", cell_id="c2", count=4)
    assert [h.label for h in session.memory.search("rows load", 3)] == ["In[4]"]


# --- a corrupt memory.sqlite -------------------------------------------------------------------


def test_malformed_database_is_one_error_and_forget_all_starts_over(open_session, home):
    first = open_session("local")
    for n in range(40):
        first.memory.add_cell(f"value_{n} = compute_{n}(data) * {n}", count=n + 1)
    assert first.memory.flush(30)
    first.close()
    data = bytearray((home / "memory.sqlite").read_bytes())
    data[4096:] = b"\x5a" * (len(data) - 4096)  # pages after the header: garbage
    (home / "memory.sqlite").write_bytes(bytes(data))

    session = open_session("local")
    with pytest.raises(MiraiError, match=r"memory\.sqlite is unreadable") as failure:
        session.memory.stats()
    assert "forget all" in str(failure.value) and "\n" not in str(failure.value)
    note = session.memory.forget("all")
    assert note.startswith("memory.sqlite was unreadable: moved to memory.sqlite.corrupt-")
    moved = [p for p in home.glob("memory.sqlite.corrupt-*") if not p.name.endswith("-wal")]
    assert len(moved) == 1 and moved[0].read_bytes() == bytes(data)  # kept, byte for byte
    session.memory.add_cell("fresh = start()", count=1)
    assert session.memory.flush(30)
    assert [h.label for h in session.memory.search("fresh start", 1)] == ["In[1]"]
