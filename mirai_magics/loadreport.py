"""Load-test results: latency percentiles, error and retry rates, the verdict, the report (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .client.records import CallRecord
from .quantiles import percentile as nearest_rank


@dataclass
class Summary:
    """What a load run measured (pure data; `format_report` prints it)."""

    calls: int
    failed: int
    cut_off: int
    elapsed_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    retried_calls: int
    extra_attempts: int
    degradations: dict[str, int] = field(default_factory=dict)
    quota_rejections: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.failed / self.calls if self.calls else 0.0

    @property
    def retry_rate(self) -> float:
        return self.retried_calls / self.calls if self.calls else 0.0

    @property
    def throughput(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    return nearest_rank(values, q) or 0.0


def summarize(records: list[Any], elapsed_s: float) -> Summary:
    """Latency percentiles, error and retry rates, degradations of finished calls (pure)."""
    cut = [r for r in records if r.error_code == "cancelled"]
    done = [r for r in records if r.error_code != "cancelled"]
    latencies = [r.latency_ms / 1000 for r in done]
    degradations = Counter(label for r in done for label in dict.fromkeys(_labels(r)))
    return Summary(
        calls=len(done),
        failed=sum(1 for r in done if not r.ok),
        cut_off=len(cut),
        elapsed_s=elapsed_s,
        p50_s=percentile(latencies, 50),
        p95_s=percentile(latencies, 95),
        p99_s=percentile(latencies, 99),
        retried_calls=sum(1 for r in done if r.attempts > 1),
        extra_attempts=sum(max(0, r.attempts - 1) for r in done),
        degradations=dict(degradations),
        quota_rejections=dict(Counter(r.quota for r in done if r.quota)),
        errors=dict(Counter(r.error_code for r in done if not r.ok)),
    )


def verdict(summary: Summary, targets: Any) -> tuple[bool, str]:
    """(passed, one line) against `testing.load_tests`: p95 latency and error rate."""
    p95_ok = summary.p95_s <= targets.target_p95_latency_s
    errors_ok = summary.error_rate < targets.target_error_rate and summary.calls > 0
    line = (
        f"p95 ≤ {targets.target_p95_latency_s:g} s: {'PASS' if p95_ok else 'FAIL'} · "
        f"errors < {targets.target_error_rate:.0%}: {'PASS' if errors_ok else 'FAIL'}"
    )
    return p95_ok and errors_ok, line


def format_report(s: Summary, setup: str, server: str, rate: float, targets_line: str) -> str:
    """The printed report: one `label  value` line per measure."""
    counts = lambda d: " · ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "none"  # noqa: E731
    rows = [
        ("setup", setup),
        ("calls", f"{s.calls:,} ({s.calls - s.failed:,} ok, {s.failed:,} failed, "
         f"{s.cut_off} cut off at the stop)"),
        ("elapsed", f"{s.elapsed_s:.1f} s"),
        ("throughput", f"{s.throughput:.2f} calls/s (chat rate limit {rate:g} req/s)"),
        ("latency p50", f"{s.p50_s:.2f} s"),
        ("latency p95", f"{s.p95_s:.2f} s"),
        ("latency p99", f"{s.p99_s:.2f} s"),
        ("error rate", f"{s.error_rate:.2%} ({counts(s.errors)})"),
        ("retry rate", f"{s.retry_rate:.2%} of calls retried, "
         f"{s.extra_attempts / max(s.calls, 1):.2f} extra attempts per call"),
        ("degradations", counts(s.degradations)),
        ("quota rejections", counts(s.quota_rejections)),
        ("server", server),
        ("targets", targets_line),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


# --- running ----------------------------------------------------------------------------


def _labels(record: CallRecord) -> list[str]:
    """How a call was degraded, for the report: rules, and ``fallback:<reason>`` hops."""
    return [d.label for d in record.degradations]
