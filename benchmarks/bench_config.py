"""How long a config file of a hostile size or shape takes to get its verdict.

Each shape is written to a file and loaded as ``MIRAI_CONFIG`` with ``load_config()`` (as
the first `%%mirai` and `mirai check-config` do), timed next to the packaged config alone
(the baseline, measured in the same run), and printed with its ratio and its verdict. The
shapes sit at and just past the bounds of ``mirai_magics.config_yaml``: an alias bomb, a
file of 500,000 values, a 1 MB string, ~10,000 values added by aliases, 20,000 values,
depth 32. Target: every verdict under 1 s.

    python benchmarks/bench_config.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mirai_magics import config as config_module
from mirai_magics.config import load_config
from mirai_magics.config_yaml import MAX_ALIAS_VALUES, MAX_DEPTH, MAX_VALUES
from mirai_magics.errors import ConfigError


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    rows = ['l0: &l0 ["lol"]']
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(rows) + "\n"


def shapes() -> dict[str, str]:
    rows = MAX_ALIAS_VALUES // 101 - 1  # each alias adds a list of 100 values and itself
    under = MAX_VALUES - 20
    return {
        "alias bomb (9 × 9)": alias_bomb(),
        f"aliases adding ~{rows * 101:,} values": "a: &a [" + "x, " * 99 + "x]\n"
        "models:\n  main:\n    name: gpt-4o-mini\n    use_cases: ["
        + ", ".join(["*a"] * rows)
        + "]\n",
        f"{under:,} values (valid list)": "models:\n  main:\n    name: gpt-4o-mini\n"
        "    use_cases: [" + "ab, " * under + "ab]\n",
        f"{under // 2:,} unknown keys": "".join(f"k{i}: 1\n" for i in range(under // 2)),
        "1 MB of values (500,000)": "xs: [" + "1," * 499_990 + "1]\n",
        "one 999 KB string": "ui: {default_format: '" + "x" * 999_000 + "'}\n",
        f"nested {MAX_DEPTH - 1} deep": "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH - 1))
        + "  " * (MAX_DEPTH - 1)
        + "v\n",
        "1.1 MB of comments": "# padding\n" * 110_000,
    }


def verdict_s(path: Path, repeat: int) -> tuple[float, str]:
    """Median seconds for ``load_config()`` with MIRAI_CONFIG=path, and what it said."""
    runs, said = [], ""
    for _ in range(repeat):
        config_module._REFUSED.clear()  # time the parse, not the remembered verdict
        started = time.perf_counter()
        try:
            load_config()
            said = "valid"
        except ConfigError as exc:
            said = exc.message
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.pop("MIRAI_CONFIG", None)
    base = statistics.median(_timed(load_config) for _ in range(args.repeat))
    print(f"baseline: packaged config alone {base * 1000:.1f} ms")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in shapes().items():
            path = Path(tmp) / "shape.yaml"
            path.write_text(text, encoding="utf-8")
            os.environ["MIRAI_CONFIG"] = str(path)
            seconds, said = verdict_s(path, args.repeat)
            worst = max(worst, seconds)
            shown = said.replace(str(path), "shape.yaml")[:90]
            print(
                f"{name:<32} {len(text) / 1000:>7.1f} KB  {seconds * 1000:>7.1f} ms  "
                f"×{seconds / base:>5.1f}  {shown}"
            )
    os.environ.pop("MIRAI_CONFIG", None)
    print(f"worst verdict: {worst * 1000:.0f} ms (target < 1000 ms)")
    return 0 if worst < 1.0 else 1


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
