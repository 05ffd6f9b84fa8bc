"""The Prometheus rule file: generated from the config, `promtool check rules` and unit tests.

Skipped when promtool is missing, unless MIRAI_REQUIRE_PROMTOOL=1 (set by CI, which installs
Debian's `prometheus` package): then a missing promtool fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mirai_magics.cli import main
from mirai_magics.config import load_config
from mirai_magics.errors import ConfigError
from mirai_magics.telemetry.alerts import Condition, parse_condition, render

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "configs" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "alerts_test.yml"
ALERTS = {  # the seed's observability.alerts
    "MiraiErrorRateHigh": ("critical", "5m", "mirai_openai:error_rate:ratio_rate5m > 0.05"),
    "MiraiLatencyP95High": ("warning", "5m", "mirai_openai:latency_seconds:p95 > 30"),
    "MiraiRetryRateHigh": ("warning", "10m", "mirai_openai:retry_rate:rate10m > 0.2"),
}


def shipped_rules() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"][0]["rules"]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("MIRAI_REQUIRE_PROMTOOL") == "1":
            pytest.fail(
                "promtool is required (MIRAI_REQUIRE_PROMTOOL=1): apt-get install prometheus"
            )
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


# --- the parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("error_rate > 5% for 5m", ("error_rate", ">", 0.05, "5m")),
        ("latency_p95 > 30s for 5m", ("latency_p95", ">", 30.0, "5m")),
        ("retry_rate>20%for 10m", ("retry_rate", ">", 0.2, "10m")),
        ("  retry_rate >= 12.5%  for  10m ", ("retry_rate", ">=", 0.125, "10m")),
        ("latency_p99 < 800ms for 1h", ("latency_p99", "<", 0.8, "1h")),
        ("tokens_per_minute > 120000 for 15m", ("tokens_per_minute", ">", 120000.0, "15m")),
        ("circuit_breaker_open > 0 for 1m", ("circuit_breaker_open", ">", 0.0, "1m")),
    ],
)
def test_conditions_parse(text, parsed):
    condition = parse_condition(text)
    assert isinstance(condition, Condition)
    assert (condition.metric, condition.op, condition.duration) == (parsed[0], parsed[1], parsed[3])
    assert condition.threshold == pytest.approx(parsed[2])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("error_rate is high", "cannot parse 'error_rate is high'"),
        ("error_rate > 5% during 5m", "cannot parse"),
        ("errors > 5% for 5m", "unknown metric 'errors'"),
        ("error_rate > 0.05 for 5m", "error_rate takes a percentage like 5%"),
        ("latency_p95 > 30% for 5m", "latency_p95 takes seconds like 30s or 500ms"),
        ("tokens_per_minute > 5s for 5m", "tokens_per_minute takes a number"),
    ],
)
def test_a_bad_condition_is_one_line_naming_where_and_what_is_accepted(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_condition(text, "observability.alerts[2].condition")
    message = str(caught.value)
    assert message.startswith(f"observability.alerts[2].condition: {problem}")
    assert "'<metric> <op> <threshold> for <duration>'" in message and "\n" not in message


def test_mirai_alerts_refuses_a_bad_condition_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "observability:\n  alerts:\n    - {condition: 'error_rate > 5% for 5m'}\n"
        "    - {condition: 'p95 > 30s for 5m'}\n"
    )
    out = tmp_path / "rules.yml"
    assert main(["alerts", "--config", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mirai: {bad}: observability.alerts[1].condition: unknown metric 'p95'")
    assert err.count("\n") == 1 and not out.exists()


# --- the generated file -----------------------------------------------------------------------


def test_the_shipped_file_is_what_mirai_alerts_writes(tmp_path, capsys):
    out = tmp_path / "alerts.yml"
    assert main(["alerts", "-o", str(out)]) == 0
    assert out.read_text() == RULES.read_text() == render(load_config().observability)
    assert main(["alerts"]) == 0
    assert capsys.readouterr().out == RULES.read_text()


def test_each_configured_alert_has_its_severity_duration_and_expression():
    found = {
        r["alert"]: (r["labels"]["severity"], r["for"], r["expr"])
        for r in shipped_rules()
        if "alert" in r
    }
    assert found == ALERTS


def test_an_alert_reads_only_records_defined_above_it():
    records: set[str] = set()
    for rule in shipped_rules():
        names = {w for w in rule["expr"].replace("(", " ").split() if w.startswith("mirai_openai:")}
        assert names <= records, rule
        if "record" in rule:
            records.add(rule["record"])


def test_promtool_check_rules(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(shipped_rules())} rules found" in done.stdout + done.stderr


def test_promtool_unit_tests_fire_and_stay_quiet(promtool):
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    alerts = {a["alertname"] for t in tested for a in t.get("alert_rule_test", [])}
    assert alerts == set(ALERTS)  # every alert has a test
    exprs = {e["expr"] for t in tested for e in t.get("promql_expr_test", [])}
    records = {r["record"] for r in shipped_rules() if "record" in r}
    assert records - exprs <= {
        "mirai_openai:error_rate:ratio_rate5m",  # tested through MiraiErrorRateHigh
        "mirai_openai:latency_seconds:p95",  # through MiraiLatencyP95High
        "mirai_openai:latency_seconds:p99",  # the same rule as p50 and p95
    }
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
