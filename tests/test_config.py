"""Config loading: layers, env overrides, and one clear line for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mirai_magics.config import load_config, parse_config
from mirai_magics.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_production_config_has_the_seed_values():
    c = load_config(REPO / "configs" / "openai_config.yaml")
    assert c.defaults.timeout_s == 90 and c.defaults.embeddings_timeout_s == 30
    assert c.defaults.max_attempts == 4
    assert (c.defaults.backoff.initial_ms, c.defaults.backoff.max_ms) == (200, 8000)
    assert c.defaults.backoff.jitter == "full"
    assert set(c.profiles) == {"main", "heavy", "fast", "creative", "embed", "reasoning"}
    assert (c.profiles["main"].model, c.profiles["main"].temperature) == ("gpt-4o-mini", 0.25)
    assert (c.profiles["heavy"].model, c.profiles["heavy"].temperature) == ("gpt-4o", 0.25)
    assert (c.profiles["fast"].model, c.profiles["fast"].temperature) == ("gpt-3.5-turbo", 0.2)
    assert c.profiles["creative"].max_temperature == 0.4
    embed = c.profiles["embed"]
    assert (embed.model, embed.dimensions, embed.kind) == (
        "text-embedding-3-large",
        3072,
        "embedding",
    )
    reasoning = c.profiles["reasoning"]
    assert reasoning.max_completion_tokens and reasoning.temperature is None
    assert reasoning.top_p is None and reasoning.max_tokens is None
    b = c.circuit_breaker
    assert (b.failure_threshold, b.open_s, b.probe_interval_s, b.success_threshold) == (
        5,
        60,
        30,
        2,
    )
    assert c.limits.concurrency.model_dump() == {"chat": 16, "embeddings": 64, "background": 4}
    assert c.limits.requests_per_second.model_dump() == {"chat": 10, "embeddings": 50}
    t = c.limits.tokens
    assert (t.global_per_minute, t.per_user_per_minute, t.per_request_max) == (150000, 10000, 4096)
    assert c.context.max_history_messages == 12 and c.context.system_prompt_max_tokens == 1500
    assert c.security.api_key_env_var == "OPENAI_API_KEY"
    assert c.degradation.fallback_chain == ["heavy", "main", "fast"]
    assert c.fallback_for("heavy") == "main" and c.fallback_for("fast") is None


def test_layers_default_then_env_file_then_explicit(tmp_path, monkeypatch):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("profiles: {main: {model: from-env, temperature: 0.5}}\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("profiles: {main: {model: from-explicit}}\n")
    monkeypatch.setenv("MIRAI_CONFIG", str(env_file))
    assert load_config().profiles["main"].model == "from-env"
    c = load_config(explicit)
    assert c.profiles["main"].model == "from-explicit"
    assert c.profiles["main"].temperature == 0.5  # deep merge keeps the env layer's value
    assert c.source == str(explicit)


def test_base_url_env_overrides(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert load_config().endpoint.base_url == "http://127.0.0.1:1/v1"
    monkeypatch.setenv("MIRAI_BASE_URL", "http://127.0.0.1:2/v1")
    assert load_config().endpoint.base_url == "http://127.0.0.1:2/v1"


BAD = [
    (
        "profiles: {main: {temperature: 3.5}}",
        "profiles.main.temperature",
        "less than or equal to 2",
    ),
    ("profiles: {main: {temperature: -0.1}}", "profiles.main.temperature", "greater than"),
    ("defaults: {timeout_s: -5}", "defaults.timeout_s", "greater than 0"),
    ("defaults: {max_attempts: 0}", "defaults.max_attempts", "greater than or equal to 1"),
    (
        "profiles: {main: {tempreature: 0.3}}",
        "profiles.main.tempreature",
        "unknown key (valid: model",
    ),
    ("bogus: 1", "bogus", "unknown key"),
    ("limits: {concurrency: {chat: many}}", "limits.concurrency.chat", "valid integer"),
    (
        "degradation: {fallback_chain: [heavy, mian]}",
        "degradation.fallback_chain[1]",
        "unknown profile 'mian'",
    ),
    ("profiles: {reasoning: {temperature: 0.5}}", "profiles.reasoning", "no temperature/top_p"),
    (
        "profiles: {main: {api_key: abc}}",
        "profiles.main.api_key",
        "API keys must not be in the config",
    ),
    (
        "endpoint: {organization: sk-test-abcdefghijklmnop}",
        "endpoint.organization",
        "looks like an API key",
    ),
    (
        "security: {redact_env_names: [KEY, 'sk-test-0123456789ab']}",
        "security.redact_env_names[1]",
        "looks like an API key",
    ),
]


@pytest.mark.parametrize(("text", "where", "problem"), BAD)
def test_bad_input_gives_one_line_naming_file_key_and_problem(text, where, problem):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"my.yaml: {where}: ")
    assert problem in line
    assert "sk-test-" not in line


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("defaults:\n  timeout_s: 90\n  backoff: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def _check_config(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "check-config", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_check_config_cli_redacts_and_fails_with_one_line(tmp_path, monkeypatch):
    import os

    env = dict(os.environ, OPENAI_API_KEY="sk-test-cli-secret-0123456789")
    ok = _check_config(env=env)
    assert ok.returncode == 0, ok.stderr
    assert "gpt-4o-mini" in ok.stdout and "[REDACTED]" in ok.stdout
    assert "sk-test-cli-secret" not in ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: {main: {temperature: 9}}\n")
    result = _check_config(str(bad), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "profiles.main.temperature" in lines[0]
