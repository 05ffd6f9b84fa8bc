"""Magic costs against baselines measured in the same run.

(a) `%load_ext mirai_magics` in a fresh shell vs creating that shell (fresh subprocesses);
    target: ≤ 20 ms added (Jupyter AI's magics take ~690 ms).
(b) median time of a `%%mirai` cell vs the raw SDK call (same messages, same local server),
    interleaved; target: ≤ 1 ms added at the median.

    python benchmarks/bench_magics.py [--runs 15] [--calls 300]
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

from common import BENCH_CONFIG, KEY, timed_ms

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
                [sys.executable, "-c", LOAD_PROBE, mode], capture_output=True, text=True, check=True
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
        prompt = "Summarise the benchmark in one line."
        run = lambda: ip.run_cell_magic("mirai", args, prompt)  # noqa: E731
        with contextlib.redirect_stdout(io.StringIO()):
            run()
        messages = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        raw = OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        params = {"model": "gpt-4o-mini", "temperature": 0.25, "top_p": 1.0, "max_tokens": 1024}
        raw_call = lambda: raw.chat.completions.create(messages=messages, **params)  # noqa: E731
        raw_ms, cell_ms = [], []
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(20):
                raw_call()
                run()
            for _ in range(calls):
                raw_ms.append(timed_ms(raw_call))
                cell_ms.append(timed_ms(run))
        ip.run_line_magic("unload_ext", "mirai_magics")
        raw.close()
    raw_p50, cell_p50 = statistics.median(raw_ms), statistics.median(cell_ms)
    label = "memory_on" if memory else "memory_off"
    print(f"cell_calls_each={calls} {label}")
    print(f"raw_sdk_ms_p50={raw_p50:.3f}")
    print(f"mirai_cell_ms_p50={cell_p50:.3f}")
    print(f"cell_added_ms_p50={cell_p50 - raw_p50:.3f} ratio={cell_p50 / raw_p50:.2f} ({label})")
    print(f"target_cell_le_1ms_{label}={'met' if cell_p50 - raw_p50 <= 1 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    load_time(args.runs)
    cell_time(args.calls, memory=False)
    cell_time(args.calls, memory=True)


if __name__ == "__main__":
    main()
