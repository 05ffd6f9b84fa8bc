"""`mirai loadtest`: a short run through the real CLI, its report and its exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mirai_magics.client.records import CallRecord, Degradation
from mirai_magics.loadreport import summarize, verdict

REPO = Path(__file__).resolve().parent.parent
FIELDS = (
    "calls",
    "throughput",
    "latency p50",
    "latency p95",
    "latency p99",
    "error rate",
    "retry rate",
    "degradations",
    "quota rejections",
    "server",
    "targets",
)


def loadtest(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MIRAI_BASE_URL")}
    env.update(PYTHONPATH=str(REPO), MIRAI_HOME=str(tmp_path / ".mirai"))
    env.pop("MIRAI_CONFIG", None)
    command = [sys.executable, "-m", "mirai_magics.cli", "loadtest", *args]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def report(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        label, _, value = line.partition("  ")
        if label in FIELDS:
            rows[label] = value.strip()
    return rows


def number(text: str) -> float:
    return float(re.match(r"[\d,.]+", text).group().replace(",", ""))


@pytest.mark.slow
def test_30_second_chaos_run_meets_the_targets(tmp_path):
    done = loadtest(
        tmp_path,
        *("--dialogs", "50", "--duration", "30", "--fail-429", "0.1", "--fail-5xx", "0.1"),
        *("--progress", "5"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = report(done.stdout)
    assert set(rows) == set(FIELDS), done.stdout
    calls = number(rows["calls"])
    assert calls >= 50 and "ok" in rows["calls"]
    for field in ("latency p50", "latency p95", "latency p99"):
        assert rows[field].endswith(" s")
    assert number(rows["latency p50"]) <= number(rows["latency p95"]) <= number(rows["latency p99"])
    assert rows["error rate"].endswith(")") and number(rows["error rate"]) < 3
    assert "calls/s (chat rate limit 10 req/s)" in rows["throughput"]
    elapsed = number(re.search(r"elapsed\s+([\d.]+)", done.stdout).group(1))
    assert calls <= 10 * elapsed + 10  # the bucket shapes throughput: burst + 10/s at most
    assert "retried" in rows["retry rate"] and number(rows["retry rate"]) > 0  # faults hit
    assert "429 ×" in rows["server"] and "500 ×" in rows["server"]
    assert rows["targets"] == "p95 ≤ 15 s: PASS · errors < 3%: PASS"
    assert "[    5 s]" in done.stdout  # progress lines


@pytest.mark.slow
def test_missed_targets_exit_non_zero(tmp_path):
    config = tmp_path / "strict.yaml"
    config.write_text("testing: {load_tests: {target_p95_latency_s: 0.000001}}\n")
    done = loadtest(
        tmp_path,
        *("--dialogs", "3", "--duration", "1", "--fail-429", "0", "--fail-5xx", "0"),
        *("--config", str(config), "--latency-ms", "5"),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "p95 ≤ 1e-06 s: FAIL · errors < 3%: PASS" in done.stdout


def setup_line(stdout: str) -> str:
    return stdout.splitlines()[0]


@pytest.mark.slow
def test_defaults_come_from_the_config_and_inject_no_faults(tmp_path):
    config = tmp_path / "short.yaml"
    config.write_text("testing: {load_tests: {duration_minutes: 0.02}}\n")  # 1.2 s
    done = loadtest(tmp_path, "--config", str(config), "--progress", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert setup_line(done.stdout).startswith(
        "50 dialogs × 6 turns, 1.2 s, profile main, faults 429 0% · 5xx 0%, http://127.0.0.1:"
    )
    rows = report(done.stdout)
    assert "200 ×" in rows["server"] and "429 ×" not in rows["server"]
    assert "500 ×" not in rows["server"] and number(rows["retry rate"]) == 0
    assert rows["targets"] == "p95 ≤ 15 s: PASS · errors < 3%: PASS"


def test_chaos_enabled_injects_its_rates_and_a_flag_overrides_one(tmp_path):
    config = tmp_path / "chaos.yaml"
    config.write_text(
        "testing:\n  load_tests: {parallel_dialogs: 4, duration_minutes: 0.02}\n"
        "  chaos: {enabled: true, inject_429_rate: 0.3, inject_5xx_rate: 0.2}\n"
    )
    done = loadtest(tmp_path, "--config", str(config), "--progress", "0", "--retry-after", "0")
    assert "4 dialogs × 6 turns, 1.2 s, profile main, faults 429 30% · 5xx 20%, " in done.stdout
    server = report(done.stdout)["server"]
    assert "429 ×" in server and "500 ×" in server, done.stdout
    flagged = loadtest(tmp_path, "--config", str(config), "--progress", "0", "--fail-5xx", "0")
    assert "faults 429 30% · 5xx 0%, " in setup_line(flagged.stdout)
    server = report(flagged.stdout)["server"]
    assert "429 ×" in server and "500 ×" not in server, flagged.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dialogs", "0"), "--dialogs must be at least 1, got 0"),
        (("--duration", "-5"), "--duration must be positive"),
        (("--fail-429", "1.5"), "--fail-429 is a probability in 0..1, got 1.5"),
        (("--profile", "embed"), "--profile 'embed' is not a chat profile"),
    ],
)
def test_bad_options_get_one_line_and_exit_1(tmp_path, args, message):
    done = loadtest(tmp_path, *args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def record(latency_s: float, error: str | None = None, attempts: int = 1) -> CallRecord:
    r = CallRecord(profile="main", model="gpt-4o-mini", latency_ms=latency_s * 1000)
    r.attempts = attempts
    if error:
        r.error, r.error_code = "failed", error
    return r


def test_summary_counts_errors_retries_and_cut_off_calls():
    records = [record(1.0) for _ in range(96)]
    records += [record(9.0, "retries_exhausted", 4), record(2.0, attempts=3)]
    records += [record(0.5, "cancelled"), record(0.5, "quota_exceeded")]
    records[-1].quota = "rate"
    records[0].degradations.append(Degradation("latency_high", "max_tokens 100→70"))
    s = summarize(records, elapsed_s=10)
    assert (s.calls, s.failed, s.cut_off) == (99, 2, 1)
    assert s.errors == {"retries_exhausted": 1, "quota_exceeded": 1}
    assert (s.retried_calls, s.extra_attempts) == (2, 5)
    assert s.quota_rejections == {"rate": 1} and s.degradations == {"latency_high": 1}
    assert (s.p50_s, s.p95_s, s.p99_s, s.throughput) == (1.0, 1.0, 9.0, 9.9)
    targets = SimpleNamespace(target_p95_latency_s=15, target_error_rate=0.03)
    assert verdict(s, targets)[0] is True
    assert verdict(summarize(records[:10] + records[96:97], 1), targets)[0] is False
