"""The Prometheus alert rules: `promtool check rules` and the `promtool test rules` unit tests.

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

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "configs" / "alerts.yml"
RULE_TESTS = REPO / "tests" / "alerts_test.yml"
ALERTS = {
    "MiraiErrorRateHigh": ("critical", "5m"),
    "MiraiLatencyP95High": ("warning", "5m"),
    "MiraiRetryRateHigh": ("warning", "10m"),
    "MiraiCircuitBreakerOpen": ("warning", "1m"),
}


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


def test_rules_declare_each_alert_with_severity_and_duration():
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    found = {r["alert"]: (r["labels"]["severity"], r["for"]) for r in rules}
    assert found == ALERTS


def test_promtool_check_rules(promtool):
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout + done.stderr


def test_promtool_unit_tests_fire_and_stay_quiet(promtool):
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    alerts = {a["alertname"] for t in tested for a in t["alert_rule_test"]}
    assert alerts == set(ALERTS)  # every alert has a test
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
