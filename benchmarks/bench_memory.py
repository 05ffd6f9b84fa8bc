"""Notebook memory benchmarks, each against a baseline measured in the same run.

(a) post_run_cell hook p50 vs an empty post_run_cell hook (target < 1 ms)
(b) local embed + index throughput through the real indexer (SQLite, index) vs the local
    embedder alone (target ≥ 2,000 cells/s)
(c) search p50 at 10k / 50k / 200k entries vs a numpy brute-force dot product; end-to-end
    `memory.search` (query embedding + index + SQLite rows) at 50k; HNSW (usearch) at 50k
    with its build rate (target ≤ 2 ms at 50k)
(d) embedding requests when re-running an unchanged 200-cell notebook in a new session,
    counted at the offline server, vs the first run (target 0)
(e) resident memory at 100k entries, exact and in the default config (HNSW past 50k), steady
    and peak (ru_maxrss), vs the process before opening it

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from mirai_magics.config import parse_config
from mirai_magics.memory.documents import Doc
from mirai_magics.memory.embedders import LocalEmbedder
from mirai_magics.memory.index import FlatIndex, HnswIndex
from mirai_magics.memory.store import Store
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session

KEY = "sk-test-bench-memory-000000000000"
VOCABULARY = (
    "load sales csv rows region month amount total plot hist scatter model fit predict "
    "train test split score churn customer order revenue clean filter group merge join "
    "date parse json yaml config database query inventory weather api request cache"
)
WORDS = VOCABULARY.split()


def cell_text(i: int, rng: np.random.Generator) -> str:
    words = rng.choice(WORDS, 6)
    return f"{words[0]}_{i} = {words[1]}_{words[2]}(data, '{words[3]}')\n# {' '.join(words[3:])}"


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def session_for(home: Path, yaml: str = "context: {rag: {embedder: local}}") -> Session:
    os.environ["MIRAI_HOME"] = str(home)
    return Session(parse_config(yaml, "bench"))


# --- (a) the hook ---------------------------------------------------------------------------


def hook_cost(calls: int) -> None:
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell

    from mirai_magics.ui.magics import MiraiMagics

    shell = InteractiveShell.instance()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIRAI_HOME"] = tmp
        magics = MiraiMagics(shell)
        magics._session = Session(parse_config("context: {rag: {embedder: local}}", "bench"))

        def result_for(i: int) -> ExecutionResult:
            info = ExecutionInfo(f"x_{i} = compute({i})", True, False, True, f"c{i}")
            result = ExecutionResult(info)
            result.execution_count, result.result = i, i
            return result

        results = [result_for(i) for i in range(2 * calls)]
        empty = lambda result: None  # noqa: E731 - the baseline: an empty hook
        for r in results[:200]:  # warm: engine thread, imports, the store
            magics.post_run_cell(r)
        magics._session.memory.flush(60)
        base, hook = [], []
        for r in results[200 : 200 + calls]:
            base += timed(lambda r=r: empty(r), 1)
            hook += timed(lambda r=r: magics.post_run_cell(r), 1)
        magics._session.memory.flush(60)
        magics.close()
    print(f"hook_calls={calls}")
    print(f"empty_hook_us_p50={p50_ms(base) * 1000:.2f}")
    print(f"post_run_cell_us_p50={p50_ms(hook) * 1000:.2f}")
    print(f"post_run_cell_us_p99={np.percentile(hook, 99) * 1e6:.2f}")
    ratio = p50_ms(hook) / p50_ms(base)
    print(f"hook_ms_p50={p50_ms(hook):.4f} target_ms=1 ratio_vs_empty={ratio:.0f}")


# --- (b) throughput ---------------------------------------------------------------------------


def throughput(cells: int) -> None:
    rng = np.random.default_rng(1)
    texts = [cell_text(i, rng) for i in range(cells)]
    embedder = LocalEmbedder(256)
    start = time.perf_counter()
    for i in range(0, cells, 256):
        embedder.embed(texts[i : i + 256])
    alone = cells / (time.perf_counter() - start)
    texts = [t + "\n" for t in texts]  # new texts: nothing cached from the baseline run
    with tempfile.TemporaryDirectory() as tmp, session_for(Path(tmp)) as session:
        memory = session.memory
        memory.state()
        start = time.perf_counter()
        for i, text in enumerate(texts):
            memory.add_cell(text, count=i)
        assert memory.flush(300)
        rate = cells / (time.perf_counter() - start)
        indexed = len(memory.state().index)
    print(f"throughput_cells={cells} indexed={indexed}")
    print(f"local_embedder_alone_cells_per_s={alone:,.0f}")
    print(f"embed_index_cells_per_s={rate:,.0f} target=2000 ratio_vs_embedder={rate / alone:.2f}")


# --- (c) search -------------------------------------------------------------------------------


def unit_rows(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.standard_normal((n, dims)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def search_cost(sizes: list[int], queries: int, hnsw_sizes: list[int]) -> None:
    rng = np.random.default_rng(2)
    embedder = LocalEmbedder(256)
    real = embedder.embed([cell_text(i, rng) for i in range(min(50_000, max(sizes)))])
    pool = np.vstack([real, unit_rows(max(sizes) - len(real), 256, rng)])
    qs = embedder.embed([" ".join(rng.choice(WORDS, 4)) for _ in range(queries)])
    for n in sizes:
        flat = FlatIndex(256)
        flat.upsert(np.arange(n, dtype=np.int64), pool[:n])
        matrix = pool[:n].copy()

        def brute(q: np.ndarray, m: np.ndarray = matrix) -> None:
            s = m @ q
            np.argpartition(-s, 8)[:8]

        base = [timed(lambda q=q: brute(q), 1)[0] for q in qs]
        ours = [timed(lambda q=q, f=flat: f.search(q, 8), 1)[0] for q in qs]
        print(
            f"search_exact_{n // 1000}k_ms_p50={p50_ms(ours):.3f} "
            f"numpy_bruteforce_ms_p50={p50_ms(base):.3f} ratio={p50_ms(ours) / p50_ms(base):.2f}"
        )
    for size in hnsw_sizes:
        hnsw_search(pool[:size], qs)


def hnsw_search(vectors: np.ndarray, qs: np.ndarray) -> None:
    n = len(vectors)
    start = time.perf_counter()
    hnsw = HnswIndex(256)
    hnsw.upsert(np.arange(n, dtype=np.int64), vectors)
    build = time.perf_counter() - start
    ours = [timed(lambda q=q: hnsw.search(q, 8), 1)[0] for q in qs]
    flat = FlatIndex(256)
    flat.upsert(np.arange(n, dtype=np.int64), vectors)
    exact = [flat.search(q, 4)[0] for q in qs]
    recall = np.mean(
        [len(set(e) & set(hnsw.search(q, 4)[0])) / 4 for e, q in zip(exact, qs, strict=True)]
    )
    print(
        f"search_hnsw_{n // 1000}k_ms_p50={p50_ms(ours):.3f} "
        f"hnsw_build_vectors_per_s={n / build:,.0f} hnsw_recall_at_4_vs_exact={recall:.2f}"
    )


def end_to_end_search(n: int, queries: int) -> None:
    """`memory.search` (query embedding, index, SQLite rows) on a store of ``n`` cells."""
    rng = np.random.default_rng(3)
    configs = [
        "context: {rag: {embedder: local, exact_search_below: 1000000000}}",  # exact
        "context: {rag: {embedder: local}}",  # the default: ≥ 50k is HNSW, built in the background
    ]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        texts = [cell_text(i, rng) for i in range(n)]
        fill_store(home, texts, LocalEmbedder(256).embed(texts), "local-hash-v2/256")
        for yaml in configs:
            with session_for(home, yaml) as session:
                memory = session.memory
                memory.state()
                assert memory.flush(600) and memory.graph.wait(1800)  # graph built before timing
                kind = memory.state().index.backend.kind
                words = [" ".join(rng.choice(WORDS, 4)) for _ in range(queries)]
                ours = [timed(lambda w=w, m=memory: m.search(w + " fresh", 4), 1)[0] for w in words]
            print(
                f"memory_search_end_to_end_{n // 1000}k_{kind}_ms_p50={p50_ms(ours):.3f} "
                "target_ms=2"
            )


def fill_store(home: Path, texts: list[str], vectors: np.ndarray, embedder: str) -> None:
    store = Store(home / "memory.sqlite")
    for i in range(0, len(texts), 5000):
        docs = [
            Doc(source_id=f"src:{j}", kind="cell", label=f"In[{j}]", body=texts[j], count=j)
            for j in range(i, min(i + 5000, len(texts)))
        ]
        store.upsert(docs, "bench")
        store.vectors.put(
            [d.sha for d in docs], [vectors[d.count].tobytes() for d in docs], embedder
        )
    store.close()


# --- (d) re-running an unchanged notebook --------------------------------------------------------


def rerun_requests(cells: int) -> None:
    rng = np.random.default_rng(4)
    texts = [cell_text(i, rng) for i in range(cells)]
    os.environ["OPENAI_API_KEY"] = KEY
    yaml = "endpoint: {{base_url: '{}'}}\ncontext: {{rag: {{embedder: openai}}}}"
    with OfflineServer().start() as server, tempfile.TemporaryDirectory() as tmp:
        runs = []
        for _ in range(2):
            server.reset_stats()
            with session_for(Path(tmp), yaml.format(server.url)) as session:
                for i, text in enumerate(texts):
                    session.memory.add_cell(text, count=i + 1)
                assert session.memory.flush(120)
            snap = server.stats_snapshot()
            runs.append((snap["by_path"].get("/v1/embeddings", 0), snap["embedding_inputs"]))
    os.environ.pop("OPENAI_API_KEY")
    print(f"first_run_embedding_requests={runs[0][0]} inputs={runs[0][1]}")
    rerun = f"rerun_unchanged_{cells}_cells_embedding_requests"
    print(f"{rerun}={runs[1][0]} inputs={runs[1][1]} target=0")


# --- (e) resident memory ---------------------------------------------------------------------


RESIDENT_CONFIGS = {
    "exact": "context: {rag: {embedder: local, exact_search_below: 1000000000}}",
    "default": "context: {rag: {embedder: local}}",  # past 50k: HNSW, graph built in background
}


def resident(n: int) -> None:
    """Measured in a fresh process per config (this one's heap holds the benchmark's arrays):
    steady RSS once the memory is open (and, by default, the HNSW graph built) and the peak
    on the way (VmHWM, else ru_maxrss), both relative to the process before opening it."""
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [cell_text(i, rng) for i in range(n)]
        fill_store(Path(tmp), texts, unit_rows(n, 256, rng), "local-hash-v2/256")
        for name, yaml in RESIDENT_CONFIGS.items():
            child = subprocess.run(
                [sys.executable, __file__, "--resident-child", tmp, yaml],
                capture_output=True,
                text=True,
                check=True,
            )
            kind, *numbers = child.stdout.split()
            before, after, peak, index_bytes = (float(x) / 2**20 for x in numbers)
            print(
                f"resident_{n // 1000}k_entries_{name}_{kind}_mb={after - before:.1f} "
                f"peak_mb={peak - before:.1f} process_before_mb={before:.1f} "
                f"index_arrays_mb={index_bytes:.1f}"
            )


def resident_child(home: str, yaml: str) -> None:
    process = psutil.Process()
    with session_for(Path(home), yaml) as session:
        session.memory._queries.clear()
        before = process.memory_info().rss
        session.memory.search("warm up", 1)
        assert session.memory.flush(600) and session.memory.graph.wait(1800)
        state = session.memory.state()
        after = process.memory_info().rss
        print(state.index.backend.kind, before, after, peak_rss(), state.index.nbytes)


def peak_rss() -> int:
    """This process's peak RSS in bytes. Linux: VmHWM, because ru_maxrss keeps the parent's
    peak across fork + exec (a child of a 300 MB parent reports at least ~300 MB)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--resident-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resident_child:
        return resident_child(*args.resident_child)
    started = time.perf_counter()
    quick = args.quick
    hook_cost(500 if quick else 2000)
    throughput(2000 if quick else 10_000)
    sizes = [10_000, 50_000] if quick else [10_000, 50_000, 200_000]
    search_cost(sizes, 50 if quick else 200, [10_000] if quick else [50_000, 200_000])
    end_to_end_search(10_000 if quick else 50_000, 50 if quick else 200)
    rerun_requests(200)
    resident(20_000 if quick else 100_000)
    print(f"bench_seconds={time.perf_counter() - started:.0f}")


if __name__ == "__main__":
    main()
