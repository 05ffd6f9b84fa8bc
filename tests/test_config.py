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
    d = c.defaults
    assert (d.timeout_s, d.max_retries) == (90, 4)
    assert (d.backoff.base_ms, d.backoff.max_ms, d.backoff.jitter) == (200, 8000, True)
    assert set(c.models) == {"main", "heavy", "fast", "creative", "embed", "reasoning"}
    sampling = ("name", "temperature", "top_p", "frequency_penalty", "presence_penalty")
    table = {
        n: tuple(getattr(p, k) for k in (*sampling, "max_tokens")) for n, p in c.models.items()
    }
    assert table["main"] == ("gpt-4o-mini", 0.25, 0.9, 0.1, 0.0, 2000)
    assert table["heavy"] == ("gpt-4o", 0.25, 0.9, 0.1, 0.0, 2500)
    assert table["fast"] == ("gpt-3.5-turbo", 0.2, 0.9, None, None, 1200)
    assert table["creative"] == ("gpt-4o", 0.4, 0.9, 0.3, 0.2, 2000)
    assert c.models["creative"].max_temperature == 0.4  # the seed's "0.4 max", enforced
    embed = c.models["embed"]
    assert (embed.name, embed.dimensions, embed.kind) == (
        "text-embedding-3-large",
        3072,
        "embedding",
    )
    assert (c.timeout_for(embed), c.attempts_for(embed)) == (30, 5)
    reasoning = c.models["reasoning"]
    assert (reasoning.name, reasoning.kind, reasoning.max_tokens) == (
        "o1-preview",
        "reasoning",
        4096,
    )
    assert (reasoning.temperature, reasoning.top_p) == (1.0, 1.0)  # written, never sent
    assert (c.timeout_for(reasoning), c.attempts_for(reasoning)) == (120, 4)
    assert (c.timeout_for(c.models["main"]), c.attempts_for(c.models["main"])) == (90, 4)
    b = c.circuit_breaker
    assert (b.failure_threshold, b.timeout_s, b.half_open_interval_s, b.success_threshold) == (
        5,
        60,
        30,
        2,
    )
    assert c.limits.concurrency.model_dump() == {"chat": 16, "embeddings": 64, "background": 4}
    assert c.limits.rps.model_dump() == {"chat": 10, "embeddings": 50}
    t = c.limits.tokens
    assert (t.per_minute, t.per_user_minute, t.per_request_max) == (150000, 10000, 4096)
    assert c.context.max_history_messages == 12 and c.context.system_prompt_max_tokens == 1500
    rag = c.context.rag
    assert (rag.enabled, rag.cache_embeddings, rag.update_strategy) == (True, True, "diff")
    assert rag.vector_store == "chroma" and c.memory is rag
    assert c.security.api_key_env_var == "OPENAI_API_KEY" and c.security.api_key_source == "env"
    assert c.degradation.enabled is True
    assert [(r.trigger, r.action) for r in c.degradation.rules] == [
        ("rate_limit_429", "switch_to_fast"),
        ("latency_high", "reduce_max_tokens"),
        ("error_rate_5percent", "trim_context"),
    ]
    assert c.degradation.fallback_chain == ["heavy", "main", "fast"]
    assert c.fallback_for("heavy") == "main" and c.fallback_for("fast") is None
    lt, chaos = c.testing.load_tests, c.testing.chaos
    assert (lt.parallel_dialogs, lt.duration_minutes, lt.target_p95_latency_s) == (50, 10, 15)
    assert lt.target_error_rate == 0.03
    assert (chaos.enabled, chaos.inject_429_rate, chaos.inject_5xx_rate) == (False, 0.1, 0.1)


def test_the_seed_values_that_are_read_differently_are_announced():
    notices = load_config(REPO / "configs" / "openai_config.yaml").notices()
    assert "models.reasoning: max_tokens is sent as max_completion_tokens (o1-preview)" in notices
    assert "models.reasoning: temperature/top_p not sent: o1-class models reject them" in notices
    assert any(n.startswith("context.rag.vector_store: 'chroma'") for n in notices)


def test_layers_default_then_env_file_then_explicit(tmp_path, monkeypatch):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("models: {main: {name: from-env, temperature: 0.5}}\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("models: {main: {name: from-explicit}}\n")
    monkeypatch.setenv("MIRAI_CONFIG", str(env_file))
    assert load_config().models["main"].name == "from-env"
    c = load_config(explicit)
    assert c.models["main"].name == "from-explicit"
    assert c.models["main"].temperature == 0.5  # deep merge keeps the env layer's value
    assert c.models["main"].top_p == 0.9  # and the packaged default's
    assert c.source == str(explicit)


def test_a_rule_list_in_a_layer_replaces_the_default_list():
    c = parse_config("degradation: {rules: [{trigger: latency_high}]}")
    assert [(r.trigger, r.action) for r in c.degradation.rules] == [
        ("latency_high", "reduce_max_tokens")  # the trigger's default action
    ]


def test_base_url_env_overrides(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    assert load_config().endpoint.base_url == "http://127.0.0.1:1/v1"
    monkeypatch.setenv("MIRAI_BASE_URL", "http://127.0.0.1:2/v1")
    assert load_config().endpoint.base_url == "http://127.0.0.1:2/v1"


BAD = [
    ("models: {main: {temperature: 3.5}}", "models.main.temperature", "less than or equal to 2"),
    ("models: {main: {temperature: -0.1}}", "models.main.temperature", "greater than"),
    ("models: {main: {top_p: 1.5}}", "models.main.top_p", "less than or equal to 1"),
    ("models: {main: {max_tokens: 0}}", "models.main.max_tokens", "greater than or equal to 1"),
    ("models: {x: {temperature: 0.5}}", "models.x.name", "required key is missing"),
    ("models: {creative: {temperature: 0.5}}", "models.creative", "above max_temperature 0.4"),
    ("defaults: {timeout_s: -5}", "defaults.timeout_s", "greater than 0"),
    ("defaults: {max_retries: 0}", "defaults.max_retries", "greater than or equal to 1"),
    ("defaults: {backoff: {jitter: full}}", "defaults.backoff.jitter", "valid boolean"),
    ("defaults: {backoff: {base_ms: 900, max_ms: 800}}", "defaults.backoff", "max_ms must be"),
    (
        "models: {main: {tempreature: 0.3}}",
        "models.main.tempreature",
        "unknown key (valid: name, kind, temperature",
    ),
    ("bogus: 1", "bogus", "unknown key"),
    ("profiles: {main: {model: x}}", "profiles", "unknown key (valid: defaults, models"),
    ("memory: {enabled: false}", "memory", "unknown key"),  # moved to context.rag
    ("context: {rag: {top_kk: 3}}", "context.rag.top_kk", "unknown key (valid: enabled"),
    ("circuit_breaker: {open_s: 60}", "circuit_breaker.open_s", "unknown key"),
    ("limits: {requests_per_second: {chat: 1}}", "limits.requests_per_second", "unknown key"),
    ("limits: {concurrency: {chat: many}}", "limits.concurrency.chat", "valid integer"),
    ("limits: {rps: {chat: many}}", "limits.rps.chat", "valid number"),
    ("limits: {tokens: {per_request_max: 0}}", "limits.tokens.per_request_max", "greater than"),
    (
        "testing: {load_tests: {target_error_rate: 3}}",
        "testing.load_tests.target_error_rate",
        "less than or equal to 1",
    ),
    (
        "degradation: {fallback_chain: [heavy, mian]}",
        "degradation.fallback_chain[1]",
        "unknown profile 'mian'",
    ),
    (
        "degradation: {rules: [{trigger: rate_limit_429, foo: 1}]}",
        "degradation.rules[0].foo",  # no pydantic union tag in the path
        "unknown key (valid: action, enabled",
    ),
    (
        "degradation: {rules: [{trigger: latency_spike}]}",
        "degradation.rules[0]",
        "does not match any of the expected tags: 'rate_limit_429'",
    ),
    (
        "degradation: {rules: [{trigger: rate_limit_429, action: go_faster}]}",
        "degradation.rules[0].action",
        "'switch_to_fast', 'reduce_max_tokens' or 'trim_context'",
    ),
    (
        "degradation: {rules: [{trigger: latency_high, window_calls: -1}]}",
        "degradation.rules[0].window_calls",
        "greater than or equal to 1",
    ),
    (
        "models: {main: {api_key: abc}}",
        "models.main.api_key",
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
def test_bad_input_gives_one_line_naming_file_line_key_and_problem(text, where, problem):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml")
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"my.yaml: line 1: {where}: ")
    assert problem in line
    assert "sk-test-" not in line


BLOCK = """\
defaults:
  timeout_s: 90
  max_retries: 4
models:
  main:
    name: gpt-4o-mini
    temperature: 0.25
degradation:
  rules:
    - trigger: rate_limit_429
      action: switch_to_fast
    - trigger: latency_high
      action: reduce_max_tokens
  fallback_chain:
    - heavy
    - main
"""


@pytest.mark.parametrize(
    ("old", "new", "where", "line"),
    [
        ("  max_retries: 4", "  max_retries: four", "defaults.max_retries", 3),
        ("    temperature: 0.25", "    temprature: 0.25", "models.main.temprature", 7),
        ("    name: gpt-4o-mini", "    name: sk-proj-abcdefghijklmnop", "models.main.name", 6),
        ("    name: gpt-4o-mini", "    token: abc", "models.main.token", 6),
        (
            "      action: reduce_max_tokens",
            "      action: halve",
            "degradation.rules[1].action",
            13,
        ),
        ("    - trigger: latency_high", "    - trigger: slow", "degradation.rules[1]", 12),
        ("    - main", "    - mian", "degradation.fallback_chain[1]", 16),
    ],
)
def test_the_line_is_the_one_that_sets_the_key(tmp_path, old, new, where, line):
    path = tmp_path / "block.yaml"
    path.write_text(BLOCK.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line {line}: {where}: ")


def test_an_error_names_the_layer_that_wrote_the_value(tmp_path, monkeypatch):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("context:\n  max_history_messages: -1\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("context:\n  system_prompt_max_tokens: 900\n")
    monkeypatch.setenv("MIRAI_CONFIG", str(env_file))
    with pytest.raises(ConfigError) as info:
        load_config(explicit)
    assert str(info.value).startswith(f"{env_file}: line 2: context.max_history_messages: ")


REPLACED = """\
models: !replace
  main: {name: llama3.2}
  heavy: {name: llama3.1:70b}
  fast:
    temperature: 0.2
degradation: {fallback_chain: [heavy, main, fast]}
"""


@pytest.mark.parametrize(
    ("text", "where", "line"),
    [
        (REPLACED, "models.fast.name: required key is missing", 4),  # the packaged one wrote it
        (REPLACED.replace("0.2", "3\n    name: q"), "models.fast.temperature: must be", 5),
        ("observability:\n  alerts:\n    - {severity: critical}\n", "observability.alerts[0]", 3),
        ("degradation:\n  rules:\n    - {action: trim_context}\n", "degradation.rules[0]", 3),
    ],
)
def test_an_error_under_a_replaced_section_names_the_users_line(tmp_path, text, where, line):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line {line}: {where}")


def test_a_replace_in_the_middle_layer_wins_over_the_packaged_line(tmp_path, monkeypatch):
    team = tmp_path / "team.yaml"
    team.write_text("models: {fast: {name: team-fast}}\n")  # merged, then thrown away below
    mine = tmp_path / "mine.yaml"
    mine.write_text(REPLACED)
    monkeypatch.setenv("MIRAI_CONFIG", str(team))
    with pytest.raises(ConfigError) as info:
        load_config(mine)
    assert str(info.value).startswith(f"{mine}: line 4: models.fast.name: required key")
    monkeypatch.setenv("MIRAI_CONFIG", str(mine))  # the replacing file below an explicit one
    other = tmp_path / "other.yaml"
    other.write_text("context: {max_history_messages: 6}\n")
    with pytest.raises(ConfigError) as info:
        load_config(other)
    assert str(info.value).startswith(f"{mine}: line 4: models.fast.name: required key")


def test_check_config_names_the_users_line_under_replace(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(REPLACED)
    result = _check_config(str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and f"{path}: line 4: models.fast.name: " in lines[0]
    assert "openai_config.yaml" not in lines[0] and "default_config.yaml" not in lines[0]


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
    bad.write_text("models:\n  main: {temperature: 9}\n")
    result = _check_config(str(bad), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}: line 2: models.main.temperature" in lines[0]
