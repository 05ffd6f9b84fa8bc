"""The Prometheus rule file derived from `observability`: recording rules, then alerts.

``observability.metrics.metrics`` names what must exist: a served metric or a recording
rule over one (SERIES). Each ``observability.alerts[i].condition`` such as
``"error_rate > 5% for 5m"`` is parsed by the pure `parse_condition` (a metric of
QUANTITIES, a comparison, a threshold in that metric's unit, a ``for`` duration) into an
alerting rule. ``mirai alerts`` writes `render(...)`; ``configs/alerts.yml`` is its output
for the packaged config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError
from .metrics import ERROR_STATUSES

if TYPE_CHECKING:
    from ..config import Observability

GROUP = "mirai_openai"
_CALLS = 'mirai_openai_requests_total{status!="replayed"}'
_ERRORS = f'mirai_openai_requests_total{{status=~"{"|".join(ERROR_STATUSES)}"}}'


def _quantile(q: float) -> str:
    buckets = "rate(mirai_openai_latency_seconds_bucket[5m])"
    return f"histogram_quantile({q}, sum by (model, le) ({buckets}))"


# record → PromQL, in evaluation order: a rule may read the ones above it. The windows are
# fixed (5m; 10m for retries): a condition's `for` is how long the value must hold.
RECORDS = {
    "mirai_openai:requests:rate5m": f"sum by (model) (rate({_CALLS}[5m]))",
    "mirai_openai:requests_errors:rate5m": f"sum by (model) (rate({_ERRORS}[5m]))",
    "mirai_openai:error_rate:ratio_rate5m": (
        "mirai_openai:requests_errors:rate5m / mirai_openai:requests:rate5m"
    ),
    "mirai_openai:latency_seconds:p50": _quantile(0.5),
    "mirai_openai:latency_seconds:p95": _quantile(0.95),
    "mirai_openai:latency_seconds:p99": _quantile(0.99),
    "mirai_openai:tokens_per_minute": (
        "sum by (model, direction) (rate(mirai_openai_tokens_total[5m])) * 60"
    ),
    # retryable failures per HTTP attempt (the latency histogram counts every attempt)
    "mirai_openai:retry_rate:rate10m": (
        "sum by (model) (rate(mirai_openai_retries_total[10m]))"
        " / sum by (model) (rate(mirai_openai_latency_seconds_count[10m]))"
    ),
}
_ERROR_RATE = (
    "mirai_openai:requests:rate5m",
    "mirai_openai:requests_errors:rate5m",
    "mirai_openai:error_rate:ratio_rate5m",
)
# an entry of observability.metrics.metrics → the served metrics or records providing it
SERIES: dict[str, tuple[str, ...]] = {
    "requests_total": ("mirai_openai_requests_total",),
    "requests_errors": ("mirai_openai:requests_errors:rate5m",),
    "latency_p50_p95_p99": tuple(f"mirai_openai:latency_seconds:p{q}" for q in (50, 95, 99)),
    "tokens_per_minute": ("mirai_openai:tokens_per_minute",),
    "retry_rate": ("mirai_openai:retry_rate:rate10m",),
    "circuit_breaker_open": ("mirai_openai_circuit_breaker_open",),
}


@dataclass(frozen=True)
class Quantity:
    """What a condition may compare: its PromQL, unit and the alert's name and description."""

    expr: str
    unit: str  # "%" (a ratio), "s" (seconds; ms accepted) or "" (a plain number)
    alert: str  # the alert's name is this + High/Low (a 0/1 flag: this alone)
    description: str
    needs: tuple[str, ...] = ()  # the records expr reads
    flag: bool = False


def _latency(q: int) -> Quantity:
    return Quantity(
        f"mirai_openai:latency_seconds:p{q}",
        "s",
        f"MiraiLatencyP{q}",
        f"The {q}th percentile of one HTTP attempt's latency over 5m (each retry is its own "
        "attempt). The latency_high degradation rule cuts max_tokens meanwhile.",
        (f"mirai_openai:latency_seconds:p{q}",),
    )


QUANTITIES = {
    "error_rate": Quantity(
        "mirai_openai:error_rate:ratio_rate5m",
        "%",
        "MiraiErrorRate",
        f"Share of calls over 5m that ended as {', '.join(ERROR_STATUSES)} "
        "(mirai_openai_requests_total by status). Check `%mirai status`, the breaker states "
        "and the provider's status page.",
        _ERROR_RATE,
    ),
    "retry_rate": Quantity(
        "mirai_openai:retry_rate:rate10m",
        "%",
        "MiraiRetryRate",
        "Share of HTTP attempts over 10m that failed and were retryable (429, 5xx, timeouts, "
        "connection errors): the provider is rate limiting or failing. See "
        "mirai_openai_retries_total by reason.",
        ("mirai_openai:retry_rate:rate10m",),
    ),
    **{f"latency_p{q}": _latency(q) for q in (50, 95, 99)},
    "tokens_per_minute": Quantity(
        "mirai_openai:tokens_per_minute",
        "",
        "MiraiTokensPerMinute",
        "Tokens the API reported per minute over 5m (in and out apart); compare "
        "limits.tokens.per_minute.",
        ("mirai_openai:tokens_per_minute",),
    ),
    "circuit_breaker_open": Quantity(
        "max by (model) (mirai_openai_circuit_breaker_open)",
        "",
        "MiraiCircuitBreakerOpen",
        "The breaker is open or half-open: calls are refused without touching the network "
        "and fall back along degradation.fallback_chain.",
        flag=True,
    ),
}
_UNITS = {"%": ("%", 0.01), "s": ("s", 1.0), "ms": ("s", 0.001), "": ("", 1.0)}
_UNIT_WORDS = {"%": "a percentage like 5%", "s": "seconds like 30s or 500ms", "": "a number"}
_PATTERN = re.compile(
    r"\s*(?P<metric>\w+)\s*(?P<op>[<>]=?)\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>%|ms|s)?"
    r"\s*for\s+(?P<duration>\d+[smhdwy])\s*"
)
ACCEPTED = (
    "write '<metric> <op> <threshold> for <duration>', e.g. 'error_rate > 5% for 5m': "
    "metric error_rate or retry_rate (in %), latency_p50, latency_p95 or latency_p99 "
    "(in s or ms), tokens_per_minute or circuit_breaker_open (a number); op >, >=, < or <=; "
    "duration like 30s, 5m or 1h"
)


@dataclass(frozen=True)
class Condition:
    """A parsed alert condition; ``threshold`` is in the quantity's unit (ratio, seconds)."""

    metric: str
    op: str
    threshold: float
    duration: str
    text: str


def parse_condition(text: str, where: str = "condition") -> Condition:
    """``"latency_p95 > 30s for 5m"`` → Condition; a one-line ConfigError naming ``where``."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ConfigError(f"{where}: cannot parse {text!r}", hint=ACCEPTED)
    metric, unit = match["metric"], match["unit"] or ""
    quantity = QUANTITIES.get(metric)
    if quantity is None:
        raise ConfigError(f"{where}: unknown metric {metric!r} in {text!r}", hint=ACCEPTED)
    kind, scale = _UNITS[unit]
    if kind != quantity.unit:
        problem = f"{metric} takes {_UNIT_WORDS[quantity.unit]}, got {text!r}"
        raise ConfigError(f"{where}: {problem}", hint=ACCEPTED)
    threshold = float(match["number"]) * scale
    return Condition(metric, match["op"], threshold, match["duration"], " ".join(text.split()))


def alert_rule(condition: Condition, severity: str) -> dict[str, Any]:
    """The alerting rule of one condition (pure)."""
    q = QUANTITIES[condition.metric]
    name = q.alert if q.flag else q.alert + ("High" if condition.op[0] == ">" else "Low")
    return {
        "alert": name,
        "expr": f"{q.expr} {condition.op} {condition.threshold:.12g}",
        "for": condition.duration,
        "labels": {"severity": severity},
        "annotations": {
            "summary": "{{ $labels.model }}: " + condition.text,
            "description": q.description,
        },
    }


def rule_file(observability: Observability, source: str = "") -> dict[str, Any]:
    """The rule file as data: the records the metrics and alerts need, then the alerts."""
    alerts, prefix = observability.alerts, f"{source}: " if source else ""
    conditions = [
        parse_condition(a.condition, f"{prefix}observability.alerts[{i}].condition")
        for i, a in enumerate(alerts)
    ]
    wanted = {name for m in observability.metrics.metrics for name in SERIES[m]}
    wanted |= {name for c in conditions for name in QUANTITIES[c.metric].needs}
    records = [{"record": name, "expr": expr} for name, expr in RECORDS.items() if name in wanted]
    rules = records + [alert_rule(c, a.severity) for c, a in zip(conditions, alerts, strict=True)]
    return {"groups": [{"name": GROUP, "rules": rules}]}


HEADER = """\
# Prometheus rules for mirai_magics, generated by `mirai alerts` from the config's
# observability section: metrics.metrics → recording rules, alerts → alerting rules.
# Do not edit: change the config and run `mirai alerts -o configs/alerts.yml`.
# Checked in CI: promtool check rules configs/alerts.yml; promtool test rules tests/alerts_test.yml
"""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)  # indent lists under their key


def render(observability: Observability, source: str = "") -> str:
    """The rule file's text, as `mirai alerts` writes it (``source`` names the config in errors)."""
    body = yaml.dump(
        rule_file(observability, source),
        Dumper=_Dumper,
        sort_keys=False,
        width=1000,
        allow_unicode=True,
    )
    return HEADER + body
