"""Magic costs against baselines measured in the same run.

(a) `%load_ext mirai_magics` in a fresh shell vs creating that shell (fresh subprocesses);
    target: ≤ 20 ms added (Jupyter AI's magics take ~690 ms).
(b) median time of a `%%mirai` cell vs the raw SDK call (same messages, same local server),
    interleaved, in an in-process IPython shell; target: ≤ 1 ms added at the median.
(c) the same in a real Jupyter kernel (its own threads: iopub, heartbeat, control, history…),
    paired interleaved rounds inside one bounded cell, p50 of the per-round differences
    against raw `AsyncOpenAI` (awaited on the kernel's loop, top-level await), the sync
    `OpenAI` client and, when importable in the kernel, `langchain_openai.ChatOpenAI.invoke`;
    `quiet` and `busy` (a thread started in the kernel spinning on Python work, stopped at the
    end of the cell); target: ≤ 0.4 ms added over raw AsyncOpenAI with the busy thread.
(d) first call: fresh kernels, `%load_ext mirai_magics`, then ten `%%mirai` cells; the time
    from cell start (kernel-side `execute_input`) to the answer (kernel-side `display_data`
    with the answer) of call 1 and call 10; target: first within 150 ms of a warm call.

    python benchmarks/bench_magics.py [--runs 15] [--calls 300] [--kernel-rounds 300]
        [--first-kernels 3] [--first-gap-s 0,1] [--sections load,cell,kernel,first]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH_CONFIG, BUSY_SOURCE, KEY, PARAMS, p50, paired_p50, timed_ms

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Summarise the benchmark in one line."
CELL_TARGET_MS = 0.4
FIRST_TARGET_MS = 150

LOAD_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t1 = time.perf_counter()
if sys.argv[1] == "load":
    ip.run_line_magic("load_ext", "mirai_magics")
t2 = time.perf_counter()
heavy = sorted({"openai", "usearch", "ipywidgets", "prometheus_client", "numpy"} & set(sys.modules))
print(json.dumps({"shell_ms": (t1 - t0) * 1000, "load_ms": (t2 - t1) * 1000, "heavy": heavy}))
"""


def load_time(runs: int) -> None:
    with_ext, without, shells, heavy = [], [], [], set()
    for _ in range(runs):
        for mode, sink in (("load", with_ext), ("none", without)):
            out = subprocess.run(
                [sys.executable, "-c", LOAD_PROBE, mode],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            data = json.loads(out.stdout.strip().splitlines()[-1])
            sink.append(data["load_ms"])
            shells.append(data["shell_ms"])
            heavy.update(data["heavy"])
    added = statistics.median(with_ext) - statistics.median(without)
    print(f"load_ext_runs={runs}")
    print(f"shell_start_ms_p50={statistics.median(shells):.1f}")
    ratio = added / statistics.median(shells)
    print(f"load_ext_added_ms_p50={added:.2f} ratio_to_shell_start={ratio:.3f}")
    print(f"load_ext_heavy_imports={','.join(sorted(heavy)) or 'none'}")
    print(f"target_load_ext_le_20ms={'met' if added <= 20 else 'MISSED'}")


def cell_time(calls: int, memory: bool) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from openai import OpenAI

    from mirai_magics.server import OfflineServer

    with OfflineServer().start() as server, tempfile.TemporaryDirectory() as home:
        config_path = os.path.join(home, "bench.yaml")
        with open(config_path, "w") as f:
            f.write(BENCH_CONFIG)
        os.environ.update(
            MIRAI_BASE_URL=server.url,
            OPENAI_API_KEY=KEY,
            MIRAI_CONFIG=config_path,
            MIRAI_HOME=home,
            MIRAI_STREAM="0",
        )
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "mirai_magics")
        args = "--no-history" + ("" if memory else " --no-memory")
        run = lambda: ip.run_cell_magic("mirai", args, PROMPT)  # noqa: E731
        with contextlib.redirect_stdout(io.StringIO()):
            run()
        messages = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        raw = OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        raw_call = lambda: raw.chat.completions.create(messages=messages, **PARAMS)  # noqa: E731
        raw_ms, cell_ms = [], []
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(20):
                raw_call()
                run()
            deadline = time.monotonic() + 120
            for _ in range(calls):
                raw_ms.append(timed_ms(raw_call))
                cell_ms.append(timed_ms(run))
                if time.monotonic() > deadline:
                    break
        ip.run_line_magic("unload_ext", "mirai_magics")
        raw.close()
    raw_p50, cell_p50 = statistics.median(raw_ms), statistics.median(cell_ms)
    label = "memory_on" if memory else "memory_off"
    print(f"cell_calls_each={len(raw_ms)} {label}")
    print(f"raw_sdk_ms_p50={raw_p50:.3f}")
    print(f"mirai_cell_ms_p50={cell_p50:.3f}")
    print(f"cell_added_ms_p50={cell_p50 - raw_p50:.3f} ratio={cell_p50 / raw_p50:.2f} ({label})")
    print(f"target_cell_le_1ms_{label}={'met' if cell_p50 - raw_p50 <= 1 else 'MISSED'}")


# --- real kernels ----------------------------------------------------------------------------


def _kernel_env(**extra: str) -> dict[str, str]:
    """tests/kernelutil's environment, but a PYTHONPATH given to us stays in front."""
    sys.path.insert(0, str(REPO / "tests"))
    from kernelutil import kernel_env

    env = kernel_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(REPO)]))
    return env


@contextlib.contextmanager
def _kernel(env: dict[str, str]) -> Any:
    from kernelutil import Kernel

    with tempfile.TemporaryDirectory() as cwd, Kernel(cwd, env) as kernel:
        yield kernel


# One bounded cell: paired rounds of every client in a shuffled order, the busy threads (if
# any) started at its top and stopped in its finally. Top-level await: raw AsyncOpenAI runs
# on the kernel's own loop, directly, as an async notebook user would call it.
KERNEL_ROUNDS_CELL = """
import json as _json, random as _random, time as _time
from openai import AsyncOpenAI as _AsyncOpenAI, OpenAI as _OpenAI
_ip = get_ipython()
_messages = {messages!r}
_params = {params!r}
_araw = _AsyncOpenAI(base_url={url!r}, api_key={key!r}, max_retries=0)
_sraw = _OpenAI(base_url={url!r}, api_key={key!r}, max_retries=0)
_calls = {{
    "raw_async": None,  # awaited below
    "raw_sync": lambda: _sraw.chat.completions.create(messages=_messages, **_params),
    "mirai_cell": lambda: _ip.run_cell_magic("mirai", {args!r}, {prompt!r}),
}}
try:
    from langchain_openai import ChatOpenAI as _ChatOpenAI
    _llm = _ChatOpenAI(model=_params["model"], temperature=_params["temperature"],
                       top_p=_params["top_p"], max_tokens=_params["max_tokens"],
                       base_url={url!r}, api_key={key!r}, max_retries=0)
    _calls["langchain"] = lambda: _llm.invoke(_messages)
except ImportError:
    pass
_busy = None
if {busy_threads}:
    _busy = _Busy({busy_threads}, {max_s} + 30, {spin_ms}, {sleep_ms}).start()
_samples = {{name: [] for name in _calls}}
try:
    _names = list(_calls)
    _rng = _random.Random({seed})
    _deadline = _time.monotonic() + {max_s}
    for _round in range(20 + {rounds}):
        if _time.monotonic() > _deadline:
            break
        _rng.shuffle(_names)
        for _name in _names:
            _t0 = _time.perf_counter()
            if _name == "raw_async":
                await _araw.chat.completions.create(messages=_messages, **_params)
            else:
                _calls[_name]()
            if _round >= 20:  # the first 20 rounds warm every path
                _samples[_name].append((_time.perf_counter() - _t0) * 1000)
finally:
    _rate = _busy.stop() if _busy is not None else 0.0
    await _araw.close()
    _sraw.close()
print("BENCH" + _json.dumps({{"samples": _samples, "busy_rate": _rate}}))
"""


def kernel_cell_time(rounds: int, conditions: list[str], max_s: float) -> None:
    from mirai_magics.server import OfflineServer

    modes = {"quiet": (0, 1.0, 0.0), "busy": (1, 1.0, 0.0), "intermittent": (1, 1.0, 1.0)}
    with OfflineServer().start() as server, tempfile.TemporaryDirectory() as home:
        (Path(home) / "bench.yaml").write_text(BENCH_CONFIG)
        env = _kernel_env(
            MIRAI_BASE_URL=server.url,
            OPENAI_API_KEY=KEY,
            MIRAI_CONFIG=str(Path(home) / "bench.yaml"),
            MIRAI_HOME=str(Path(home) / ".mirai"),
            MIRAI_STREAM="0",
        )
        args = "--no-history --no-memory"
        with _kernel(env) as kernel:
            kernel.run("%load_ext mirai_magics")
            kernel.run(BUSY_SOURCE)
            server.reset_stats()
            shown = kernel.run(f"%%mirai {args}\n{PROMPT}").text
            recent = server.stats_snapshot()["recent"]
            recent = [r for r in recent if "messages" in r.get("body", {})]  # not embeddings
            if not recent:
                raise RuntimeError(f"the warm-up cell sent no chat request: {shown!r}")
            messages = recent[-1]["body"]["messages"]
            threads_line = kernel.run(
                "import threading; print(','.join(t.name for t in threading.enumerate()))"
            ).text.strip()
            print(f"kernel_threads={threads_line}")
            for index, name in enumerate(conditions):
                threads, spin_ms, sleep_ms = modes[name]
                code = KERNEL_ROUNDS_CELL.format(
                    messages=messages, params=PARAMS, url=server.url, key=KEY, args=args,
                    prompt=PROMPT, busy_threads=threads, max_s=max_s, spin_ms=spin_ms,
                    sleep_ms=sleep_ms, seed=index + 1, rounds=rounds,
                )  # fmt: skip
                result = kernel.run(code, timeout=max_s + 120)
                line = [t for t in result.text.splitlines() if t.startswith("BENCH")][-1]
                data = json.loads(line[len("BENCH") :])
                _kernel_report(name, data["samples"], threads, data["busy_rate"])


def _kernel_report(condition: str, samples: dict[str, list[float]], threads: int, rate: float):
    label = f"kernel_{condition}"
    n = len(samples["raw_async"])
    busy = f" busy_loops_per_s={rate:.0f}" if threads else ""
    print(f"condition={label} rounds={n} busy_threads={threads}{busy}")
    print(" ".join(f"{name}_ms_p50={p50(v):.3f}" for name, v in samples.items()))
    added = paired_p50(samples, "mirai_cell", "raw_async")
    ratio = p50(samples["mirai_cell"]) / p50(samples["raw_async"])
    print(f"cell_added_ms_p50={added:.3f} ratio={ratio:.2f} (vs raw AsyncOpenAI, {label})")
    sync_added = paired_p50(samples, "mirai_cell", "raw_sync")
    sync_ratio = p50(samples["mirai_cell"]) / p50(samples["raw_sync"])
    print(f"cell_added_vs_sync_openai_ms_p50={sync_added:.3f} ratio={sync_ratio:.2f} ({label})")
    if "langchain" in samples:
        peer = paired_p50(samples, "langchain", "raw_async")
        vs = p50(samples["mirai_cell"]) / p50(samples["langchain"])
        print(
            f"peer_langchain_overhead_ms_p50={peer:.3f} "
            f"ratio={p50(samples['langchain']) / p50(samples['raw_async']):.2f} "
            f"cell_vs_langchain_ratio={vs:.2f} ({label})"
        )
    else:
        print(f"peer_langchain=skipped (langchain_openai not importable in the kernel) ({label})")
    verdict = "met" if added <= CELL_TARGET_MS else "missed"
    print(f"target_cell_le_{CELL_TARGET_MS}ms_{condition}={verdict}")


def _answer_ms(execution: Any) -> tuple[float, float]:
    """Kernel-side ms from execute_input to the answer's display, and to the last output."""
    start = next(m for m in execution.messages if m["msg_type"] == "execute_input")
    shown = [
        m
        for m in execution.messages
        if m["msg_type"] in ("display_data", "update_display_data", "stream", "execute_result")
    ]
    answers = [
        m for m in shown if "text/markdown" in m["content"].get("data", {})
    ] or shown  # the markdown answer; any output when the format differs
    t0 = start["header"]["date"]
    first = (answers[0]["header"]["date"] - t0).total_seconds() * 1000
    last = (shown[-1]["header"]["date"] - t0).total_seconds() * 1000
    return first, last


def first_call(kernels: int, gaps: list[float], calls: int, bundled: bool) -> None:
    """Fresh kernels: %load_ext, ``gap`` seconds, then ``calls`` %%mirai cells, each timed."""
    from mirai_magics.server import OfflineServer

    mode = "bundled_server" if bundled else "external_server"
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (home / "bench.yaml").write_text(BENCH_CONFIG)
        extra = {"MIRAI_CONFIG": str(home / "bench.yaml"), "MIRAI_STREAM": "0"}
        if not bundled:
            server = stack.enter_context(OfflineServer().start())
            extra.update(MIRAI_BASE_URL=server.url, OPENAI_API_KEY=KEY)
        for gap in gaps:
            firsts, tenths, lasts, loads, others = [], [], [], [], []
            for run in range(kernels):
                env = _kernel_env(**extra, MIRAI_HOME=str(home / f"h-{gap}-{run}"))
                with _kernel(env) as kernel:
                    t0 = time.perf_counter()
                    kernel.run("%load_ext mirai_magics")
                    loads.append((time.perf_counter() - t0) * 1000)
                    time.sleep(gap)
                    answers = []
                    for _ in range(calls):
                        answer, last = _answer_ms(kernel.run(f"%%mirai\n{PROMPT}"))
                        answers.append(answer)
                        if len(answers) == 1:
                            lasts.append(last)
                    firsts.append(answers[0])
                    tenths.append(answers[-1])
                    others.extend(answers[1:])
            first, tenth = statistics.median(firsts), statistics.median(tenths)
            verdict = "met" if first - tenth <= FIRST_TARGET_MS else "missed"
            label = f"({mode}, gap_after_load_ext_s={gap:g}, kernels={kernels})"
            print(
                f"first_call_ms={first:.1f} tenth_call_ms={tenth:.1f} "
                f"first_minus_warm_ms={first - tenth:.1f} "
                f"target_le_{FIRST_TARGET_MS}ms={verdict} {label}"
            )
            print(
                f"first_call_detail first_runs_ms={','.join(f'{x:.0f}' for x in firsts)} "
                f"first_cell_last_output_ms_p50={statistics.median(lasts):.1f} "
                f"calls_2_to_{calls}_ms_p50={statistics.median(others):.1f} "
                f"load_ext_cell_roundtrip_ms_p50={statistics.median(loads):.1f} {label}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--kernel-rounds", type=int, default=300)
    parser.add_argument("--kernel-conditions", default="quiet,busy")
    parser.add_argument("--kernel-max-s", type=float, default=60, help="bound of each rounds cell")
    parser.add_argument("--first-kernels", type=int, default=3)
    parser.add_argument("--first-calls", type=int, default=10)
    parser.add_argument(
        "--first-gap-s", default="0,1", help="pauses between %%load_ext and the first call"
    )
    parser.add_argument(
        "--first-modes", default="external", help="external (bench's server), bundled, or both"
    )
    parser.add_argument("--sections", default="load,cell,kernel,first")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if "load" in sections:
        load_time(args.runs)
    if "cell" in sections:
        cell_time(args.calls, memory=False)
        cell_time(args.calls, memory=True)
    if "kernel" in sections:
        kernel_cell_time(args.kernel_rounds, args.kernel_conditions.split(","), args.kernel_max_s)
    if "first" in sections:
        gaps = [float(g) for g in args.first_gap_s.split(",") if g]
        modes = ["external", "bundled"] if args.first_modes == "both" else [args.first_modes]
        for mode in modes:
            first_call(args.first_kernels, gaps, args.first_calls, bundled=mode == "bundled")


if __name__ == "__main__":
    main()
