"""Notebook memory in real Jupyter kernels: the post_run_cell hook, restarts, two kernels in
one directory, SIGKILL mid-indexing, secrets, and `%%mirai` retrieving earlier cells."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kernelutil import Kernel, kernel_env

from mirai_magics.server import OfflineServer

pytestmark = pytest.mark.kernel
KEY = "sk-test-memkernel-0123456789abcdef"
MEMORY = "get_ipython().magics_manager.registry['MiraiMagics'].session.memory"
SAVE = f"{MEMORY}.save()  # mirai: no-index"
CELLS = [
    "import csv\nrows = [{'amount': '3'}, {'amount': '5'}]\nlen(rows)",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\nfibonacci(10)",
    "settings = {'database': {'host': 'db.internal'}}\nsettings['database']['host']",
]


@pytest.fixture(scope="module")
def server():
    with OfflineServer().start() as srv:
        yield srv


def online_env(server, home: Path, **extra: str) -> dict[str, str]:
    """A kernel that embeds through `server` (auto → OpenAI embedder: the server counts).

    The offline server's bag-of-words vectors score related texts lower than real
    embeddings do, hence the lower similarity threshold.
    """
    (home / "mirai.yaml").write_text("context: {rag: {min_score: 0.1}}\n")
    return kernel_env(
        MIRAI_BASE_URL=server.url,
        OPENAI_API_KEY=KEY,
        MIRAI_HOME=str(home / ".mirai"),
        MIRAI_CONFIG=str(home / "mirai.yaml"),
        **extra,
    )


def offline_env(home: Path, config: str = "", **extra: str) -> dict[str, str]:
    """A kernel with no key: in-process offline server, local embedder."""
    env = kernel_env(MIRAI_HOME=str(home / ".mirai"), **extra)
    if config:
        (home / "mirai.yaml").write_text(config)
        env["MIRAI_CONFIG"] = str(home / "mirai.yaml")
    return env


def stats(kernel: Kernel) -> dict[str, str]:
    text = kernel.run("%mirai memory stats").text
    return {line[:22].strip(): line[22:].strip() for line in text.splitlines()[1:]}


def entries_in(home: Path) -> int:
    db = sqlite3.connect(home / ".mirai" / "memory.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        db.close()


def test_restart_keeps_memory_and_reembeds_nothing(server, tmp_path):
    server.reset()
    # warm-up off: the session (and openai) start with the first %mirai, as before it
    with Kernel(tmp_path, online_env(server, tmp_path, MIRAI_WARM="0")) as k:
        k.run("%load_ext mirai_magics")
        for cell in CELLS:  # before any %mirai: they wait in the backlog
            k.run(cell)
        lazy = (
            "import sys  # mirai: no-index\nprint('numpy' in sys.modules, 'openai' in sys.modules)"
        )
        assert k.run(lazy).text.strip() == "False False"
        assert stats(k)["entries"].startswith("3 ")  # the session starts; backlog indexed
        assert server.stats_snapshot()["embedding_inputs"] == 3
        found = k.run('%mirai memory search "fibonacci function" -k 2').text
        assert found.splitlines()[2].split()[1] == "In[3]"

        k.restart()
        server.reset_stats()
        k.run("%load_ext mirai_magics\n%mirai memory stats")
        for cell in CELLS:
            k.run(cell)
        after = stats(k)
        assert after["cache (this session)"] == "3 hits · 0 misses"
        assert server.stats_snapshot()["embedding_inputs"] == 0  # nothing re-embedded

        r = k.run("%%mirai\nHow does the fibonacci function work?")
        badge = [t for t in r.data("text/plain") if t.startswith("[mirai] ")][-1]
        assert "memory: " in badge
        sent = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        assert any("def fibonacci" in m["content"] for m in sent if m["role"] == "system")


def test_current_cell_is_never_its_own_context(server, tmp_path):
    server.reset()
    cell = (
        "marker = 'zebra_quartz_marker'\n"
        "get_ipython().run_cell_magic('mirai', '--no-history', 'what is zebra_quartz_marker?')"
    )
    with Kernel(tmp_path, online_env(server, tmp_path)) as k:
        k.run("%load_ext mirai_magics\n%mirai memory stats")
        k.run(cell)
        k.run(cell)  # now indexed from its first run, and still not its own context
        sent = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        assert sent[-1]["content"] == "what is zebra_quartz_marker?"
        assert all("marker = " not in m["content"] for m in sent[:-1])
        k.run("other = 'zebra_quartz_marker again'")
        k.run(cell)  # from another cell, the first one is fair game
        sent = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        assert any("zebra_quartz_marker again" in m["content"] for m in sent[:-1])
        assert all("marker = " not in m["content"] for m in sent[:-1])

        bad = k.run("%mirai memory frobnicate").text
        assert "unknown memory command 'frobnicate'" in bad and "usage: %mirai memory" in bad
        assert "search needs a query" in k.run("%mirai memory search -k 2").text
        status = k.run("%mirai status").text.splitlines()
        assert any(ln.startswith("memory ") and "vectors · openai/" in ln for ln in status)


def test_secret_from_the_kernel_env_never_leaves_it(server, tmp_path):
    server.reset()
    token = "tok-51de7c0ffee5eed5a1t"
    env = online_env(server, tmp_path, ACME_API_TOKEN=token, MIRAI_STREAM="1")
    docs = tmp_path / "notes.md"
    docs.write_text(f"# Setup\nexport ACME_API_TOKEN={token}\n\n# Usage\nCall acme.run().\n")
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics\n%mirai memory stats")
        k.run("import os\nprint(os.environ['ACME_API_TOKEN'])\nos.environ['ACME_API_TOKEN']")
        k.run("key = 'sk-live-0123456789abcdefABCDEF'\nkey")
        learned = k.run("%mirai memory learn notes.md")
        bars = [m["content"]["data"]["text/plain"] for m in learned.of_type("update_display_data")]
        assert bars and bars[-1] == "learn [████████████████████████] 1/1 files"
        assert "learned 1 file (1 chunk), 0 unchanged" in learned.text
        k.run("%%mirai\nWhich environment variable does acme need?")
        assert "[REDACTED]" in k.run('%mirai memory search "ACME_API_TOKEN"').text
    bodies = json.dumps([r["body"] for r in server.stats_snapshot()["recent"]])
    assert "ACME_API_TOKEN" in bodies and "[REDACTED]" in bodies
    assert token not in bodies and "sk-live-0123456789" not in bodies and KEY not in bodies
    for path in (tmp_path / ".mirai").glob("memory.*"):
        data = path.read_bytes()
        assert token.encode() not in data and b"sk-live-0123456789" not in data, path.name


def test_two_kernels_index_one_directory_at_once(tmp_path):
    env = offline_env(tmp_path, "context: {rag: {exact_search_below: 0}}\n")  # HNSW + usearch file

    def burst(tag: str) -> str:
        return (
            "ip = get_ipython()\n"
            "for i in range(60):\n"
            f"    ip.run_cell(f'kernel_{tag}_value_{{i}} = {{i}} * 3', store_history=True)\n"
        )

    with Kernel(tmp_path, env) as a, Kernel(tmp_path, env) as b:
        for k in (a, b):
            k.run("%load_ext mirai_magics\n%mirai memory stats")
        ids = {a: a.kc.execute(burst("alpha")), b: b.kc.execute(burst("beta"))}
        done = [threading.Thread(target=k.collect, args=(ids[k],)) for k in (a, b)]
        for t in done:
            t.start()
        for t in done:
            t.join(60)
        for k in (a, b):  # both queues drained first: the store is shared
            k.run(f"{MEMORY}.flush(30)  # mirai: no-index")
        for k in (a, b):
            assert stats(k)["pending"].startswith("0 ")
            k.run(SAVE)
        assert entries_in(tmp_path) == 122  # 2 × 60 cells + the two burst cells
        assert (
            "kernel_beta_value_17" in a.run('%mirai memory search "kernel_beta_value_17" -k 1').text
        )
        assert (
            "kernel_alpha_value_42"
            in b.run('%mirai memory search "kernel_alpha_value_42" -k 1').text
        )
    with Kernel(tmp_path, env) as c:
        c.run("%load_ext mirai_magics")
        index = stats(c)["index"]
        assert index.startswith("HNSW (usearch), 122 vectors"), index


def test_sigkill_mid_indexing_leaves_a_memory_that_loads(tmp_path):
    env = offline_env(tmp_path, "context: {rag: {exact_search_below: 0}}\n")
    flood = (
        "import time\n"
        f"memory = {MEMORY}\n"
        "for i in range(20000):\n"
        "    memory.add_cell(f'bulk_value_{i} = compute({i})', count=100 + i)\n"
        "store = memory.state().store\n"
        "deadline = time.time() + 30\n"
        "while store.counts('x')['entries'] < 3000 and time.time() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('indexing')\n"
    )
    k = Kernel(tmp_path, env)
    try:
        k.run("%load_ext mirai_magics\n%mirai memory stats")
        for cell in CELLS:
            k.run(cell)
        k.run(f"%mirai memory stats\n{SAVE}")  # a usearch cache exists, soon stale
        assert "indexing" in k.run(flood).text
        k.km.signal_kernel(signal.SIGKILL)  # while the worker is writing
        deadline = time.monotonic() + 10
        while k.km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not k.km.is_alive()
    finally:
        k.shutdown()
    before = entries_in(tmp_path)
    assert 3000 <= before < 20000 + 6
    with Kernel(tmp_path, env) as again:
        again.run("%load_ext mirai_magics")
        after = stats(again)
        assert after["pending"].startswith("0 ")
        assert int(after["entries"].split()[0].replace(",", "")) == before
        assert after["index"].startswith(f"HNSW (usearch), {before:,} vectors"), after["index"]
        found = again.run('%mirai memory search "bulk_value_1042 = compute(1042)" -k 1').text
        assert "bulk_value_1042 = compute(1042)" in found  # HNSW, cache loaded + caught up


def test_corrupt_database_is_one_line_and_forget_all_starts_over(tmp_path):
    home = tmp_path / ".mirai"
    home.mkdir()
    junk = b"not a database, just bytes " * 300
    (home / "memory.sqlite").write_bytes(junk)
    (tmp_path / "notes.md").write_text("# Notes\nDeploy with make deploy.\n")
    with Kernel(tmp_path, offline_env(tmp_path)) as k:
        k.run("%load_ext mirai_magics")
        for command in ("stats", 'search "deploy"', "learn notes.md", "rebuild"):
            out = k.run(f"%mirai memory {command}")
            assert not out.of_type("error") and "Traceback" not in out.text, command
            line = out.text.strip()
            assert line.count("\n") == 0 and "memory.sqlite is unreadable" in line, command
            assert "run `%mirai memory forget all`" in line, command
        reply = k.run("%%mirai --no-history\nHow do we deploy?")
        badge = [t for t in reply.data("text/plain") if t.startswith("[mirai] ")][-1]
        assert "memory unavailable: .mirai/memory.sqlite is unreadable" in badge
        assert "Offline answer" in reply.text
        note = k.run("%mirai memory forget all").text
        assert "memory.sqlite was unreadable: moved to memory.sqlite.corrupt-" in note
        assert "last error" not in stats(k)
        k.run("deploy_target = 'osaka'")
        assert "deploy_target" in k.run('%mirai memory search "deploy target" -k 1').text
    (moved,) = home.glob("memory.sqlite.corrupt-*")
    assert moved.read_bytes() == junk  # the user's file is kept, never deleted
