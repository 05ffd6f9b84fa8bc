"""Notebook memory belongs to the notebook: entries scoped by the notebook's identity, the
embedding cache (cells and queries) shared, batches sized to the token budgets, a migrated
old store, and `.mirai/.gitignore`.

The real-kernel test runs two notebooks (``JPY_SESSION_NAME``, as JupyterLab sets it) on one
MIRAI_HOME and counts what the offline server saw.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from kernelutil import Kernel, kernel_env

from mirai_magics.memory.context import HEADER_SHARED
from mirai_magics.memory.documents import embed_text, key_for, sha256
from mirai_magics.memory.embedders import hash_embed
from mirai_magics.memory.home import make_home
from mirai_magics.memory.identity import notebook_identity, shown_name
from mirai_magics.memory.indexer import Budget, token_batches
from mirai_magics.memory.stats import scope_text
from mirai_magics.server import OfflineServer
from mirai_magics.tokens import count_text

KEY = "sk-test-memscope-0123456789abcdef"
MEMORY = "get_ipython().magics_manager.registry['MiraiMagics'].session.memory"
TOUR = [
    "tour_stops = ['kyoto', 'nara', 'osaka']\nlen(tour_stops)",
    "def tour_route_planner(stops):\n    return ' -> '.join(sorted(stops))\n"
    "tour_route_planner(tour_stops)",
    "tour_budget_yen = 120000 * 1.1\ntour_budget_yen",
]
SLOW = (
    "import time\nslow_started = time.perf_counter()\n"
    "slow_total = sum(i * i for i in range(10_000))"
)
PROMPT = "%%mirai --no-history\nHow does tour_route_planner order the stops?"
SEARCH = '%mirai memory search "tour route planner stops" -k 4'


# --- identity, labels, batches (pure) ----------------------------------------------------------


def test_notebook_identity_order_and_names(tmp_path):
    vscode = {"__vsc_ipynb_file__": "/work/vs/code.ipynb"}
    jupyter = {"JPY_SESSION_NAME": "/work/lab/tour.ipynb", "MIRAI_NOTEBOOK": "x.ipynb"}
    assert notebook_identity(jupyter, vscode) == "/work/lab/tour.ipynb"
    assert notebook_identity({"MIRAI_NOTEBOOK": "x.ipynb"}, vscode) == "/work/vs/code.ipynb"
    assert notebook_identity({"MIRAI_NOTEBOOK": " runs/x.ipynb "}, {}) == "runs/x.ipynb"
    folder = notebook_identity({}, {}, cwd=str(tmp_path / "work"))
    assert folder == f"dir:{tmp_path / 'work'}"
    assert shown_name("/work/lab/tour.ipynb") == "tour.ipynb"
    assert shown_name(folder) == "kernel in work/" and shown_name("") == "earlier session"
    cells = {"/a/tour.ipynb": 3, "/a/slow.ipynb": 1, "": 2}
    assert scope_text(("/a/slow.ipynb",), "/a/slow.ipynb", cells) == (
        "notebook slow.ipynb: 1 of 6 cells; `search --all` also searches 2 other notebooks"
    )
    assert scope_text(None, "/a/slow.ipynb", cells) == "folder: 6 cells of 3 notebooks"


def test_batches_fit_the_budget_and_a_text_over_the_whole_budget_is_set_aside():
    items = [(f"s{i}", f"chunk {i} " + "word " * 240) for i in range(20)]  # ~380 tokens each
    batches, oversized = token_batches(items, Budget(request=1000, whole=1200, setting="x.y"))
    assert [sha for part in batches for sha, _ in part] == [sha for sha, _ in items]
    assert all(sum(count_text(t)[0] for _, t in part) <= 1000 for part in batches)
    assert len(batches) == 10 and not oversized
    huge = [("big", "word " * 2000), ("small", "x = 1")]
    batches, oversized = token_batches(huge, Budget(request=1000, whole=1200, setting="x.y"))
    assert batches == [[("small", "x = 1")]]
    assert oversized["big"].endswith(
        "more than the whole budget of 1,200 tokens/min (x.y); not embedded"
    )


@pytest.mark.parametrize("kind", ["exact", "hnsw", "hnsw-widening"])
def test_a_search_among_allowed_keys_ranks_like_brute_force(kind, monkeypatch):
    from mirai_magics.memory import index as index_module

    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(600, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = np.arange(1000, 1600, dtype=np.int64)
    backend = index_module.FlatIndex(32) if kind == "exact" else index_module.HnswIndex(32)
    backend.upsert(keys, vectors)
    if kind == "hnsw-widening":  # more allowed keys than are ranked exactly: widen the search
        monkeypatch.setattr(index_module, "AMONG_EXACT_MAX", 0)
    allowed = np.sort(keys[::7])
    query = vectors[300]
    found, scores = backend.search(query, 5, allowed)
    scored = sorted(((float(vectors[k - 1000] @ query), int(k)) for k in allowed), reverse=True)
    assert set(found) <= set(allowed.tolist()) and len(found) == 5
    assert found[0] == scored[0][1] and scores == sorted(scores, reverse=True)
    if kind != "hnsw-widening":  # exact rankings (HNSW's approximate one may differ at the tail)
        assert found == [k for _, k in scored[:5]]


# --- real kernels: two notebooks on one MIRAI_HOME ----------------------------------------------


@pytest.fixture(scope="module")
def server():
    with OfflineServer().start() as srv:
        yield srv


def notebook_env(server, tmp_path: Path, notebook: str, scope: str = "notebook") -> dict:
    """A kernel of ``notebook`` embedding through ``server``; every kernel shares one home."""
    config = tmp_path / f"{scope}.yaml"
    config.write_text(f"context: {{rag: {{min_score: 0.1, scope: {scope}}}}}\n")
    return kernel_env(
        MIRAI_BASE_URL=server.url,
        OPENAI_API_KEY=KEY,
        MIRAI_HOME=str(tmp_path / ".mirai"),
        MIRAI_CONFIG=str(config),
        JPY_SESSION_NAME=str(tmp_path / notebook),
    )


def run_tour(k: Kernel) -> tuple[str, str]:
    """The tour notebook: its cells, a prompt and a search; (search text, stats text)."""
    k.run("%load_ext mirai_magics")
    for cell in TOUR:
        k.run(cell)
    k.run(PROMPT)
    return k.run(SEARCH).text, k.run("%mirai memory stats").text


def system_text(server) -> str:
    sent = server.stats_snapshot()["recent"][-1]["body"]["messages"]
    return "\n".join(m["content"] for m in sent if m["role"] == "system")


def embedding_requests(server) -> int:
    return server.stats_snapshot()["by_path"].get("/v1/embeddings", 0)


@pytest.mark.kernel
def test_two_notebooks_keep_their_cells_and_share_the_cache(server, tmp_path):
    server.reset()
    with Kernel(tmp_path, notebook_env(server, tmp_path, "tour.ipynb")) as a:
        found, _ = run_tour(a)
    assert "In[3]" in found and "tour_route_planner" in found  # the def cell, its own
    assert (tmp_path / ".mirai" / ".gitignore").read_text().splitlines()[-1] == "*"

    with Kernel(tmp_path, notebook_env(server, tmp_path, "slow.ipynb")) as b:
        b.run("%load_ext mirai_magics")
        b.run(SLOW)
        found = b.run(SEARCH).text
        assert "tour_" not in found  # the tour's cells do not come back here…
        assert (
            'memory search "tour route planner stops": 0 hits (1 more below min_score 0.10)'
            in found
        )
        b.run(PROMPT)
        assert "def tour_route_planner" not in system_text(server)  # …nor into its prompts
        scope = next(ln for ln in b.run("%mirai memory stats").text.splitlines() if "scope" in ln)
        assert "notebook slow.ipynb: 1 of 4 cells; `search --all` also searches 1 other" in scope
        everywhere = b.run('%mirai memory search --all -k 4 "tour route planner stops"').text
        assert "(all notebooks): 2 hits" in everywhere and "tour.ipynb In[3]" in everywhere

    with Kernel(tmp_path, notebook_env(server, tmp_path, "slow.ipynb", "folder")) as c:
        c.run("%load_ext mirai_magics")
        found = c.run(SEARCH).text
        rows = [ln for ln in found.splitlines() if "tour_route_planner" in ln]
        assert rows and rows[0].split()[1:3] == ["tour.ipynb", "In[3]"]  # named, not "In[3]"
        c.run(PROMPT)
        sent = system_text(server)
        assert HEADER_SHARED in sent and "tour.ipynb In[3] — similarity" in sent

    server.reset_stats()
    with Kernel(tmp_path, notebook_env(server, tmp_path, "tour.ipynb")) as again:
        found, stats = run_tour(again)  # the same notebook re-run in a new kernel
    assert embedding_requests(server) == 0  # cells, prompt and search query: all cached
    assert server.stats_snapshot()["by_path"]["/v1/chat/completions"] == 1
    assert "In[3]" in found and "tour.ipynb In[3]" not in found
    assert "notebook tour.ipynb: 3 of 4 cells" in stats


# --- in one process ------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [50_000, 0])  # exact search, HNSW
def test_cells_of_another_notebook_are_forgotten_only_there(make_session, monkeypatch, threshold):
    config = f"context: {{rag: {{embedder: local, exact_search_below: {threshold}}}}}"
    monkeypatch.setenv("JPY_SESSION_NAME", "/nb/tour.ipynb")
    tour = make_session(config)
    tour.memory.add_cell("shared_loader = load_rows('sales.csv')", count=2)
    tour.memory.add_cell("tour_only = 1", count=3)
    assert tour.memory.flush(30)
    tour.close()
    monkeypatch.setenv("JPY_SESSION_NAME", "/nb/slow.ipynb")
    slow = make_session(config)
    slow.memory.add_cell("shared_loader = load_rows('sales.csv')", count=7)  # same text
    assert slow.memory.flush(30)
    assert [h.label for h in slow.memory.search("tour only", 4)] == ["In[7]"]
    labels = [h.label for h in slow.memory.search("shared loader sales rows", 4, everywhere=True)]
    assert labels[0] == "In[7]" and "tour.ipynb In[2]" not in labels  # one hit per text
    assert "tour.ipynb In[3]" in labels
    assert slow.memory.forget("3") == "forgot 0 entries"  # the tour's In[3] is not ours
    assert slow.memory.forget("7") == "forgot 1 entry"
    again = [h.label for h in slow.memory.search("shared loader sales rows", 4, everywhere=True)]
    assert again[0] == "tour.ipynb In[2]"


def test_a_kernel_with_another_embedder_leaves_other_notebooks_cells_alone(
    make_session, offline_server, monkeypatch
):
    monkeypatch.setenv("JPY_SESSION_NAME", "/nb/tour.ipynb")
    tour = make_session("context: {rag: {embedder: local}}")
    for n in range(1, 6):
        tour.memory.add_cell(f"tour_value_{n} = compute_{n}(rows)", count=n)
    assert tour.memory.flush(30)
    tour.close()
    monkeypatch.setenv("JPY_SESSION_NAME", "/nb/slow.ipynb")
    slow = make_session("context: {rag: {embedder: openai}}")
    assert dict(slow.memory.stats())["pending"].startswith("0 ")  # the tour's are not ours
    assert offline_server.stats_snapshot()["embedding_inputs"] == 0  # nothing re-embedded
    slow.close()
    folder = make_session("context: {rag: {embedder: openai, scope: folder}}")
    assert dict(folder.memory.stats())["pending"].startswith("0 ")  # folder scope: all found…
    assert offline_server.stats_snapshot()["embedding_inputs"] == 5  # …so embedded for it


def old_store(path: Path, body: str) -> int:
    """A memory.sqlite as written before notebook scopes (one cell with its local vector)."""
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('generation', 1), ('epoch', 0);
        CREATE TABLE entries(
          key INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
          label TEXT NOT NULL, count INTEGER, run TEXT NOT NULL, body TEXT NOT NULL,
          output TEXT NOT NULL, error INTEGER NOT NULL, sha TEXT NOT NULL, file TEXT,
          version INTEGER NOT NULL, updated REAL NOT NULL);
        CREATE INDEX entries_version ON entries(version);
        CREATE INDEX entries_sha ON entries(sha);
        CREATE INDEX entries_file ON entries(file);
        CREATE TABLE vectors(sha TEXT NOT NULL, embedder TEXT NOT NULL, vector BLOB NOT NULL,
          PRIMARY KEY (sha, embedder)) WITHOUT ROWID;
        CREATE TABLE failed(sha TEXT NOT NULL, embedder TEXT NOT NULL, reason TEXT NOT NULL,
          at REAL NOT NULL, PRIMARY KEY (sha, embedder)) WITHOUT ROWID;
        CREATE TABLE tombstones(key INTEGER NOT NULL, version INTEGER NOT NULL);
        CREATE TABLE files(path TEXT PRIMARY KEY, sha TEXT NOT NULL, chunks INTEGER NOT NULL,
          learned REAL NOT NULL);
        """
    )
    source, sha = f"src:{sha256(body)[:24]}", sha256(embed_text(body, ""))
    key = key_for(source)
    row = (key, source, "cell", "In[3]", 3, "oldrun", body, "", 0, sha, None, 1, time.time())
    db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    vector = hash_embed(embed_text(body, ""), 256).tobytes()
    db.execute("INSERT INTO vectors VALUES (?, 'local-hash-v2/256', ?)", (sha, vector))
    db.commit()
    db.close()
    return key


def test_an_old_store_migrates_and_its_cells_stay_findable(
    make_session, isolated_home, monkeypatch
):
    body = "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b"
    key = old_store(isolated_home / "memory.sqlite", body)
    monkeypatch.setenv("JPY_SESSION_NAME", "/nb/tour.ipynb")
    local = "context: {rag: {embedder: local}}"
    tour = make_session(local)
    assert tour.memory.search("fibonacci function", 3) == []  # not this notebook's cell
    (hit,) = tour.memory.search("fibonacci function", 3, everywhere=True)
    assert (hit.label, hit.key, hit.body) == ("earlier session In[3]", key, body)
    assert dict(tour.memory.stats())["pending"].startswith("0 ")
    tour.close()
    folder = make_session("context: {rag: {embedder: local, scope: folder}}")
    assert [h.label for h in folder.memory.search("fibonacci function", 3)] == [
        "earlier session In[3]"
    ]
    folder.close()
    monkeypatch.delenv("JPY_SESSION_NAME")
    plain = make_session(local)  # no notebook known: the folder's kernel, as before scopes
    assert [h.label for h in plain.memory.search("fibonacci function", 3)] == ["In[3]"]
    plain.close()
    db = sqlite3.connect(isolated_home / "memory.sqlite")
    assert db.execute("SELECT key, notebook, label FROM entries").fetchall() == [(key, "", "In[3]")]
    assert db.execute("SELECT COUNT(*) FROM vectors").fetchone() == (1,)


# --- embedding batches and the token budgets ------------------------------------------------------


def markdown_files(folder: Path, files: int = 20, sections: int = 6) -> None:
    """Ordinary Markdown: headed sections of ~1,100 characters (one chunk each)."""
    folder.mkdir()
    for f in range(files):
        parts = []
        for s in range(sections):
            words = " ".join(f"topic{f}x{s} detail{(f * 7 + s * 3 + i) % 97}" for i in range(60))
            parts.append(f"## Section {s} of guide {f}\n\n{words}.\n")
        (folder / f"guide_{f:02d}.md").write_text("\n".join(parts))


def embedding_bodies(server) -> list[list[str]]:
    recent = server.stats_snapshot()["recent"]
    return [r["body"]["input"] for r in recent if r["path"] == "/v1/embeddings"]


def test_learning_twenty_files_waits_for_budget_and_embeds_every_chunk(
    make_session, offline_server, tmp_path, clock
):
    markdown_files(tmp_path / "docs")
    session = make_session("context: {rag: {embedder: openai}}")  # default budgets, fake time
    started = clock.now
    report = session.memory.learn(str(tmp_path / "docs"), lambda done, total: None)
    assert report.summary() == "learned 20 files (120 chunks), 0 unchanged"
    stats = dict(session.memory.stats())
    assert (
        stats["pending"].startswith("0 ") and "refused" not in stats and "last error" not in stats
    )
    sent = embedding_bodies(offline_server)
    assert sum(len(inputs) for inputs in sent) == 120  # every chunk once
    assert sum(count_text(t)[0] for inputs in sent for t in inputs) > 2 * 10_000
    assert all(sum(count_text(t)[0] for t in inputs) <= 4096 for inputs in sent)
    assert clock.now - started >= 60  # it waited for the per-user budget to free
    assert session.memory.search("topic13x4 detail", 1)[0].file.endswith("guide_13.md")


def test_a_text_larger_than_the_whole_budget_is_skipped_with_the_reason(
    make_session, offline_server
):
    session = make_session(
        "context: {rag: {embedder: openai}}\nlimits: {tokens: {per_user_minute: 300}}"
    )
    session.memory.add_cell("notes = '''" + "a long line of notes " * 100 + "'''", count=1)
    session.memory.add_cell("rows = load_rows()", count=2)
    assert session.memory.flush(30)
    stats = dict(session.memory.stats())
    assert stats["pending"].startswith("0 ")
    assert stats["refused"].startswith("1 not embeddable")
    assert (
        "more than the whole budget of 300 tokens/min (limits.tokens.per_user_minute)"
        in (stats["refused"])
    )
    assert [h.label for h in session.memory.search("rows load", 1)] == ["In[2]"]
    assert not [t for b in embedding_bodies(offline_server) for t in b if "long line" in t]


# --- .mirai/.gitignore --------------------------------------------------------------------------


def test_the_memory_dir_is_made_with_a_gitignore(make_session, tmp_path, monkeypatch):
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MIRAI_HOME")  # the default: .mirai under the working directory
    session = make_session("context: {rag: {embedder: local}}")
    session.memory.add_cell("secret_prompt_source = 1", count=1)
    assert session.memory.flush(30)
    assert (repo / ".mirai" / "memory.sqlite").exists()
    assert (repo / ".mirai" / ".gitignore").read_text().splitlines()[-1] == "*"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""  # nothing under .mirai/ shows up for a commit
    mine = make_home(tmp_path / "existing")  # a directory made by make_home…
    assert (mine / ".gitignore").exists()
    (tmp_path / "user-dir").mkdir()
    assert not (make_home(tmp_path / "user-dir") / ".gitignore").exists()  # …not one that was there
