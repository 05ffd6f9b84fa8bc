"""Notebook memory through a real Session: SQLite + usearch files on disk, embeddings over
HTTP to the offline server (the SHA cache is checked by counting what the server saw)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mirai_magics.config import parse_config
from mirai_magics.session import Session
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-memory-0123456789abcdef"
CELLS = [
    ("import csv\nrows = list(csv.DictReader(open('sales_2023.csv')))\nlen(rows)", "1200"),
    ("monthly = {}\nfor r in rows:\n    monthly[r['month']] = monthly.get(r['month'], 0) + 1", ""),
    (
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a",
        "",
    ),
    ("import matplotlib.pyplot as plt\nplt.hist(amounts, bins=40)", ""),
    ("settings = yaml.safe_load(open('config.yaml'))\nsettings['database']['host']", "'db'"),
]


def memory_yaml(server_url: str | None, **memory: object) -> str:
    lines = [f"context: {{rag: {json.dumps(memory)}}}"]
    if server_url:
        lines.append(f"endpoint: {{base_url: '{server_url}'}}")
    return "\n".join(lines)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Each test gets its own memory directory and working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIRAI_HOME", str(tmp_path / ".mirai"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("MIRAI_BASE_URL", "OPENAI_BASE_URL", "MIRAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / ".mirai"


@pytest.fixture
def server(shared_offline_server):
    shared_offline_server.reset()
    yield shared_offline_server
    shared_offline_server.reset()


@pytest.fixture
def make_session(home, server):
    sessions: list[Session] = []

    def make(remote: bool = True, **memory: object) -> Session:
        memory.setdefault("embedder", "openai" if remote else "local")
        session = Session(parse_config(memory_yaml(server.url, **memory), "test.yaml"))
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def index_cells(session: Session, cells=CELLS, start: int = 1, ids: bool = False) -> None:
    for n, (source, output) in enumerate(cells, start=start):
        cell_id = f"cell-{n}" if ids else None
        session.memory.add_cell(source, cell_id=cell_id, count=n, output=output)
    assert session.memory.flush(30)


def embedded(server) -> int:
    return server.stats_snapshot()["embedding_inputs"]


def labels(hits) -> list[str]:
    return [h.label for h in hits]


def test_unchanged_cells_are_never_embedded_twice(make_session, server):
    first = make_session()
    index_cells(first)
    assert embedded(server) == len(CELLS)
    assert server.stats_snapshot()["by_path"]["/v1/embeddings"] >= 1
    index_cells(first, start=10)  # the same cells run again: new In[n], same text
    assert embedded(server) == len(CELLS)
    assert (first.memory.hits, first.memory.misses) == (len(CELLS), len(CELLS))
    first.close()

    restarted = make_session()  # a new kernel on the same directory
    index_cells(restarted, start=1)
    assert embedded(server) == len(CELLS)  # zero requests after the restart
    index_cells(restarted, [("x = 41 + 1", "42")], start=20)
    assert embedded(server) == len(CELLS) + 1


def test_memory_survives_a_restart_and_answers(make_session, server):
    first = make_session()
    index_cells(first)
    first.close()
    server.reset_stats()
    again = make_session()
    hits = again.memory.search("fibonacci function", 2)
    assert hits[0].label == "In[3]" and "def fibonacci" in hits[0].body
    assert embedded(server) == 1  # only the query


def test_changed_cell_replaces_its_vector(make_session, home):
    session = make_session(remote=False)
    memory = session.memory
    memory.add_cell("total_orders = sum(order_counts)", cell_id="abc", count=1)
    memory.flush(10)
    memory.add_cell("plt.scatter(ages, spend)  # age against yearly spend", cell_id="abc", count=2)
    memory.flush(10)
    state = memory.state()
    assert len(state.index) == 1
    assert state.store.counts(state.embedder.name)["entries"] == 1
    hits = memory.search("scatter plot of age against spend", 1)
    assert hits[0].label == "In[2]" and "scatter" in hits[0].body
    assert all("total_orders" not in h.body for h in memory.search("total orders sum", 5))


def test_skipped_cells_and_opt_out(make_session):
    session = make_session(remote=False)
    memory = session.memory
    skipped = [
        "",
        "   \n",
        "%%markdown\n# Title",
        "%load_ext mirai_magics\n%mirai use heavy",
        "%%mirai\nExplain the data",
        "password = 'hunter2'  # mirai: no-index",
    ]
    for n, source in enumerate(skipped, start=1):
        memory.add_cell(source, count=n)
    memory.add_cell("rows = load_rows()", cell_id="keep", count=7)
    memory.flush(10)
    assert labels(memory.search("anything at all", 10)) == ["In[7]"]
    memory.add_cell("rows = load_rows()  # mirai: no-index", cell_id="keep", count=8)
    memory.flush(10)
    assert memory.search("load rows", 10) == []  # the opted-out cell is forgotten


def test_prompt_gets_memory_block_and_badge_flag(make_session, server):
    session = make_session(remote=False)
    index_cells(session, ids=True)
    request = CellRequest(
        text="how did we load the sales csv?", profile="main", fmt="markdown", overrides={}
    )
    prepared = session.prepare(request.text, request)
    block = prepared.messages[1]["content"]
    assert prepared.messages[1]["role"] == "system" and "csv.DictReader" in block
    n = block.count("— similarity")
    assert n >= 1 and prepared.flags == [f"memory: {n} cell{'s' if n != 1 else ''}"]

    request.top_k = 1
    one = session.prepare(request.text, request)
    assert one.flags == ["memory: 1 cell"] and one.messages[1]["content"].count("— similarity") == 1
    request.memory = False
    assert session.prepare(request.text, request).flags == []

    # the cell being run is never its own context
    request.memory, request.top_k = True, 4
    session.memory.current_cell = ("cell-1", CELLS[0][0])
    excluded = session.prepare(request.text, request)
    assert all("DictReader" not in m["content"] for m in excluded.messages)
    reply = session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs())
    assert "DictReader" in server.stats_snapshot()["recent"][-1]["body"]["messages"][1]["content"]
    assert reply.text


def test_a_search_before_the_index_caught_up_says_so(make_session, server, monkeypatch):
    session = make_session()
    index_cells(session, CELLS[:1])
    monkeypatch.setenv("MIRAI_INDEX_WAIT_S", "0.2")
    server.set_faults(latency_ms=1500)  # a slow embeddings endpoint
    session.memory.add_cell(CELLS[1][0], cell_id=None, count=2, output=CELLS[1][1])
    request = CellRequest(text="csv rows", profile="main", fmt="markdown", overrides={})
    request.top_k = 1
    flags = session.prepare(request.text, request).flags
    assert "memory: earlier cells still indexing (waited 0.2 s)" in flags
    assert session.memory.flush(30)
    server.set_faults(latency_ms=0)
    assert session.prepare(request.text, request).flags == ["memory: 1 cell"]


def test_memory_failure_is_a_flag_not_an_error(home, server, monkeypatch):
    home.parent.joinpath("blocked").write_text("a file where the memory directory should be")
    text = memory_yaml(server.url, embedder="local", dir="blocked")
    monkeypatch.delenv("MIRAI_HOME")
    with Session(parse_config(text, "test.yaml")) as session:
        request = CellRequest(text="hello", profile="main", fmt="markdown", overrides={})
        prepared = session.prepare("hello", request)
        assert prepared.flags and prepared.flags[0].startswith("memory unavailable: ")
        assert session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs()).text


def test_missing_or_corrupt_index_file_is_rebuilt(make_session, home):
    session = make_session(remote=False, exact_search_below=0)  # HNSW + usearch file
    index_cells(session)
    session.close()
    cache, sidecar = home / "memory.usearch", home / "memory.usearch.json"
    assert cache.exists() and json.loads(sidecar.read_text())["count"] == len(CELLS)
    assert json.loads(sidecar.read_text())["ndim"] == 256
    good = cache.read_bytes()

    damage = {
        "missing": lambda: cache.unlink(),
        "garbage": lambda: cache.write_bytes(b"\x00not an index" * 100),
        "truncated": lambda: cache.write_bytes(good[: len(good) // 2]),
        "flipped": lambda: cache.write_bytes(good[:-9] + bytes([good[-9] ^ 0xFF]) + good[-8:]),
        "wrong ndim": lambda: sidecar.write_text(sidecar.read_text().replace("256", "512")),
    }
    for name, harm in damage.items():
        harm()
        again = make_session(remote=False, exact_search_below=0)
        assert labels(again.memory.search("fibonacci function", 1)) == ["In[3]"], name
        assert "rebuilt" in again.memory.state().index.note, name
        again.close()
        assert json.loads(sidecar.read_text())["ndim"] == 256

    loaded = make_session(remote=False, exact_search_below=0)
    assert loaded.memory.state().index.note == "HNSW loaded from memory.usearch"


def test_stale_index_file_catches_up_with_sqlite(make_session, home):
    first = make_session(remote=False, exact_search_below=0)
    index_cells(first, CELLS[:2])
    first.close()
    old = (home / "memory.usearch").read_bytes(), (home / "memory.usearch.json").read_text()
    second = make_session(remote=False, exact_search_below=0)
    index_cells(second, CELLS[2:], start=3)
    second.close()
    (home / "memory.usearch").write_bytes(old[0])  # as if the last save never happened
    (home / "memory.usearch.json").write_text(old[1])
    third = make_session(remote=False, exact_search_below=0)
    assert third.memory.state().index.note == "HNSW loaded from memory.usearch"
    assert len(third.memory.state().index) == len(CELLS)
    assert labels(third.memory.search("fibonacci function", 1)) == ["In[3]"]


def test_switching_embedders_rebuilds(make_session, server, home):
    local = make_session(remote=False, exact_search_below=0)
    index_cells(local)
    local.close()
    assert embedded(server) == 0

    remote = make_session(remote=True, exact_search_below=0)
    state = remote.memory.state()
    assert state.embedder.name == "openai/text-embedding-3-large/3072"
    assert "embedder changed" in state.index.note
    assert remote.memory.flush(30)
    assert embedded(server) == len(CELLS)  # the backfill, once
    assert labels(remote.memory.search("fibonacci function", 1)) == ["In[3]"]
    remote.close()
    assert json.loads((home / "memory.usearch.json").read_text())["ndim"] == 3072

    back = make_session(remote=False, exact_search_below=0)
    server.reset_stats()
    assert labels(back.memory.search("fibonacci function", 1)) == ["In[3]"]
    assert back.memory.state().embedder.dims == 256 and embedded(server) == 0


def test_secrets_are_redacted_before_embedding_and_storage(make_session, server, home, monkeypatch):
    token = "tok-0d1e2f3a4b5c6d7e8f9a"
    key_shaped = "sk-live-abcdefghijklmnop1234"
    monkeypatch.setenv("ACME_SERVICE_TOKEN", token)
    session = make_session()
    session.memory.add_cell(
        f"import os\nprint(os.environ['ACME_SERVICE_TOKEN'])\nclient = Acme('{key_shaped}')",
        count=1,
        output=f"'{token}'",
    )
    session.memory.add_cell(f"fail('{token}')", count=2, error=ValueError(f"bad {token}"))
    assert session.memory.flush(30)
    hits = session.memory.search("acme client", 2)
    assert hits and all(token not in h.body + h.output for h in hits)
    assert "[REDACTED]" in hits[0].body + hits[0].output
    session.close()
    bodies = json.dumps([r["body"] for r in server.stats_snapshot()["recent"]])
    assert "ACME_SERVICE_TOKEN" in bodies  # the cell did reach the server…
    assert token not in bodies and key_shaped not in bodies  # …without its secrets
    for path in home.iterdir():
        data = path.read_bytes()
        assert token.encode() not in data and key_shaped.encode() not in data, path.name


def test_forget_one_cell_and_everything(make_session, home):
    session = make_session(remote=False)
    index_cells(session)
    memory = session.memory
    assert memory.forget("3") == "forgot 1 entry"
    assert "In[3]" not in labels(memory.search("fibonacci function", 5))
    assert memory.forget("all") == f"forgot {len(CELLS) - 1} entries"
    assert memory.search("fibonacci", 5) == []
    session.close()
    db = sqlite3.connect(home / "memory.sqlite")
    assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0
    db.close()
    assert b"DictReader" not in (home / "memory.sqlite").read_bytes()


def test_embedding_failure_leaves_entries_pending_then_retries(make_session, server):
    session = make_session(remote=True)
    server.set_faults(force_status=400)  # a client error: not retried
    index_cells(session, CELLS[:2])
    stats = dict(session.memory.stats())
    assert stats["pending"].startswith("2 ") and "HTTP 400" in stats["last error"]
    server.set_faults(force_status=None)
    index_cells(session, CELLS[2:3], start=3)  # the next round retries what is pending
    stats = dict(session.memory.stats())
    assert stats["pending"].startswith("0 ") and "last error" not in stats
    assert labels(session.memory.search("fibonacci function", 1)) == ["In[3]"]


def test_exact_index_grows_into_hnsw_built_off_the_indexing_round(make_session, home):
    session = make_session(remote=False, exact_search_below=20)
    builds: list = []
    session.memory.graph.spawn = builds.append  # run the graph job when the test says so
    cells = [(f"value_{i} = compute_metric_{i}(data)", "") for i in range(30)]
    index_cells(session, cells)  # flush() returned although the graph is not built yet
    state = session.memory.state()
    assert state.index.backend.kind == "exact" and len(builds) == 1
    assert labels(session.memory.search("compute_metric_17", 1)) == ["In[18]"]  # exact meanwhile
    index_cells(session, [("late_value = compute_late(data)", "")], start=31)
    assert len(builds) == 1  # one build at a time
    builds[0]()
    assert state.index.backend.kind == "hnsw" and len(state.index) == 31
    assert (home / "memory.usearch").exists()
    assert labels(session.memory.search("compute_metric_17", 1)) == ["In[18]"]
    assert labels(session.memory.search("compute_late", 1)) == ["In[31]"]


def test_learn_indexes_files_and_relearns_only_changed_ones(make_session, server, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(
        "# Setup\nInstall with pip.\n\n# Deploy\nRun the deploy script with --region osaka.\n"
    )
    (docs / "tool.py").write_text(
        "def haversine(a, b):\n    return 0.0\n\n\nclass Cache:\n    pass\n"
    )
    (docs / "notes.txt").write_text("Quarterly revenue grew.\n\nChurn fell in March.\n")
    (docs / "nb.ipynb").write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "markdown", "source": "## Train the churn model"},
                    {
                        "cell_type": "code",
                        "source": ["clf = RandomForestClassifier()\n", "clf.fit(X, y)"],
                    },
                ],
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    (docs / ".hidden").mkdir()
    (docs / ".hidden" / "skip.md").write_text("# nothing to see")
    session = make_session()
    seen: list[tuple[int, int]] = []
    report = session.memory.learn("docs", lambda done, total: seen.append((done, total)))
    assert (report.files, report.changed, report.unchanged) == (4, 4, 0)
    assert seen[-1] == (4, 4)
    hit = session.memory.search("deploy region osaka", 1)[0]
    assert hit.label == "docs/guide.md:1" and hit.kind == "file"
    assert session.memory.search("train the churn model", 1)[0].label == "docs/nb.ipynb [cell 2]"
    before = embedded(server)

    assert session.memory.learn(str(docs / "*.*"), lambda *a: None).unchanged == 4
    assert embedded(server) == before
    (docs / "notes.txt").write_text("Quarterly revenue grew.\n\nChurn rose in April.\n")
    again = session.memory.learn("docs/**/*.txt", lambda *a: None)
    assert (again.changed, again.unchanged) == (1, 0)
    assert embedded(server) == before + 1  # only the changed file, and only once
    assert "rose in April" in session.memory.search("churn april", 1)[0].body
    assert all("fell in March" not in h.body for h in session.memory.search("churn march", 9))


def test_learn_skips_malformed_notebooks_and_learns_the_rest(make_session, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.ipynb").write_text("[]")
    (docs / "odd.ipynb").write_text(json.dumps({"cells": [1, "two"]}))
    (docs / "deploy.md").write_text("# Deploy\nRun the deploy script with --region osaka.\n")
    session = make_session(remote=False)
    report = session.memory.learn("docs", lambda done, total: None)
    assert (report.files, report.changed, report.failed) == (3, 1, 2)
    summary = report.summary()
    assert "skipped docs/empty.ipynb (not a Jupyter notebook" in summary
    assert "docs/odd.ipynb" in summary
    assert session.memory.search("deploy region osaka", 1)[0].label == "docs/deploy.md:1"
