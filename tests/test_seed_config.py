"""The seed's `openai_config.yaml`, verbatim, drives what the server receives (issue 11).

The seed file and a variant with every value changed are each loaded as they are, a Session
talks to the offline server, and the tests assert on what the server received (parameters,
attempts, messages) or refused to receive (quotas, open breaker), on the fake clock. That
each value reached the wire is shown by the variant: a test that passes for both files
cannot be reading a constant.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from serverproc import requests_reach

from mirai_magics import cli
from mirai_magics.config import Config, load_config
from mirai_magics.errors import (
    CircuitOpenError,
    ClientRequestError,
    ContextTooLongError,
    QuotaExceededError,
    RetriesExhaustedError,
)
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session
from mirai_magics.ui.cell import CellRequest

SEED = Path(__file__).resolve().parents[2] / "shared/seed/openai_config.yaml"
PRODUCTION = Path(__file__).resolve().parents[1] / "configs/openai_config.yaml"
HELLO = [{"role": "user", "content": "hello"}]
SAMPLING = ("model", "temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens")
UNCHANGEABLE = {("security", "api_key_source")}  # "env" is the only value the schema allows

VARIANT = """\
# The seed's layout with every value changed.
defaults:
  timeout_s: 0.5
  max_retries: 2
  backoff:
    base_ms: 50
    max_ms: 80
    jitter: false

models:
  main:
    name: gpt-4.1-mini
    temperature: 0.5
    top_p: 0.8
    frequency_penalty: 0.2
    presence_penalty: 0.1
    max_tokens: 900
    use_cases: ["short answers", "summaries", "lookups", "chat"]
  heavy:
    name: gpt-4.1
    temperature: 0.3
    top_p: 0.7
    frequency_penalty: 0.05
    presence_penalty: 0.4
    max_tokens: 3500          # over per_request_max: 3000 is sent
    use_cases: ["refactoring", "analysis", "planning", "review"]
  fast:
    name: gpt-4o-mini-2024-07-18
    temperature: 0.1
    top_p: 0.6
    max_tokens: 600
    use_cases: ["routing", "tagging", "yes/no"]
  creative:
    name: gpt-4.1-nano
    temperature: 0.35
    top_p: 0.95
    frequency_penalty: 0.5
    presence_penalty: 0.6
    max_tokens: 1500
    use_cases: ["blog posts", "release notes", "names"]
  embed:
    name: text-embedding-3-small
    timeout_s: 0.2
    max_retries: 3
    dimensions: 1536
    use_cases: ["search", "dedup", "clustering"]
  reasoning:
    name: o3-mini
    temperature: 0.7
    top_p: 0.5
    max_tokens: 2048
    timeout_s: 1.0
    use_cases: ["proofs", "puzzles", "audits"]

limits:
  concurrency:
    chat: 8
    embeddings: 32
    background: 2
  tokens:
    per_minute: 300000
    per_user_minute: 20000
    per_request_max: 3000
  rps:
    chat: 4
    embeddings: 20

circuit_breaker:
  failure_threshold: 3
  timeout_s: 20
  half_open_interval_s: 10
  success_threshold: 3

degradation:
  enabled: false
  rules:
    - trigger: "error_rate_5percent"
      action: "reduce_max_tokens"
    - trigger: "rate_limit_429"
      action: "trim_context"
    - trigger: "latency_high"
      action: "switch_to_fast"

context:
  max_history_messages: 8
  system_prompt_max_tokens: 600
  rag:
    enabled: false
    cache_embeddings: false
    update_strategy: "full"
    vector_store: "usearch"

observability:
  logging:
    enabled: false
    level: "DEBUG"
    fields: [profile, requested_profile, call_id, kind, retry_reasons, degraded, offline]
  metrics:
    enabled: false
    provider: "victoriametrics"
    port: 9464
    metrics:
      - "circuit_breaker_open"
      - "retry_rate"
      - "tokens_per_minute"
      - "latency_p50_p95_p99"
      - "requests_errors"
      - "requests_total"
  tracing:
    enabled: false
    provider: "zipkin"
    endpoint: "http://127.0.0.1:9411"
  alerts:
    - condition: "error_rate > 10% for 10m"
      severity: "warning"
    - condition: "latency_p95 > 20s for 5m"
      severity: "critical"
    - condition: "retry_rate > 30% for 15m"
      severity: "info"

security:
  api_key_source: "env"
  api_key_env_var: "MIRAI_VARIANT_KEY"
  rotate_keys: false
  rotation_interval_days: 30
  sandbox:
    enabled: false
    executor: "bwrap"

testing:
  golden_prompts:
    enabled: false
    path: "tests/other_golden_prompts.yaml"
  load_tests:
    enabled: false
    parallel_dialogs: 20
    duration_minutes: 3
    target_p95_latency_s: 8
    target_error_rate: 0.01
  chaos:
    enabled: true
    inject_429_rate: 0.25
    inject_5xx_rate: 0.05
"""


@dataclass(frozen=True)
class Expected:
    """What the server must receive with a file, written out (never read back from it)."""

    sent: dict[str, tuple[Any, ...]]  # profile → SAMPLING values
    reasoning: tuple[str, int]  # model, max_completion_tokens
    embed: tuple[str, int]  # model, dimensions
    attempts: int
    embed_attempts: int
    embed_backoff: list[float]  # ceilings with jitter, exact waits without
    jitter: bool
    history: int
    system_max: int
    breaker: tuple[int, float, float, int]  # failures, open, probe interval, successes
    rps: tuple[float, float]  # chat, embeddings
    tokens: tuple[int, int]  # per minute, per user and minute
    diverts: bool  # degradation on: sustained 429s move heavy to main


EXPECTED = {
    "seed": Expected(
        sent={
            "main": ("gpt-4o-mini", 0.25, 0.9, 0.1, 0.0, 2000),
            "heavy": ("gpt-4o", 0.25, 0.9, 0.1, 0.0, 2500),
            "fast": ("gpt-3.5-turbo", 0.2, 0.9, None, None, 1200),
            "creative": ("gpt-4o", 0.4, 0.9, 0.3, 0.2, 2000),
        },
        reasoning=("o1-preview", 4096),
        embed=("text-embedding-3-large", 3072),
        attempts=4,
        embed_attempts=5,
        embed_backoff=[0.2, 0.4, 0.8, 1.6],
        jitter=True,
        history=12,
        system_max=1500,
        breaker=(5, 60, 30, 2),
        rps=(10, 50),
        tokens=(150_000, 10_000),
        diverts=True,
    ),
    "variant": Expected(
        sent={
            "main": ("gpt-4.1-mini", 0.5, 0.8, 0.2, 0.1, 900),
            "heavy": ("gpt-4.1", 0.3, 0.7, 0.05, 0.4, 3000),
            "fast": ("gpt-4o-mini-2024-07-18", 0.1, 0.6, None, None, 600),
            "creative": ("gpt-4.1-nano", 0.35, 0.95, 0.5, 0.6, 1500),
        },
        reasoning=("o3-mini", 2048),
        embed=("text-embedding-3-small", 1536),
        attempts=2,
        embed_attempts=3,
        embed_backoff=[0.05, 0.08],
        jitter=False,
        history=8,
        system_max=600,
        breaker=(3, 20, 10, 3),
        rps=(4, 20),
        tokens=(300_000, 20_000),
        diverts=False,
    ),
}


def seed_path() -> Path:
    if not SEED.is_file():
        pytest.skip(f"the seed config {SEED} is absent (it lives next to the repo, in shared/)")
    return SEED


@pytest.fixture
def variant_path(tmp_path) -> Path:
    path = tmp_path / "variant.yaml"
    path.write_text(VARIANT, encoding="utf-8")
    return path


def leaves(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of a YAML tree by its key path (list items by index)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in leaves(value, (*path, key)).items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in leaves(value, (*path, i)).items()}
    return {path: node}


def at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


# --- the file itself ----------------------------------------------------------------------------


def test_the_seed_alone_is_a_complete_valid_config():
    raw = yaml.safe_load(seed_path().read_text(encoding="utf-8"))
    config = Config.model_validate(raw)  # no packaged layer underneath
    assert config.models["main"].name == "gpt-4o-mini"


@pytest.mark.parametrize("name", ["seed", "variant"])
def test_every_value_lands_in_the_config_under_its_own_key(name, variant_path):
    path = seed_path() if name == "seed" else variant_path
    written = leaves(yaml.safe_load(path.read_text(encoding="utf-8")))
    effective = load_config(path).model_dump(mode="json")
    assert {p: at(effective, p) for p in written} == written


def test_the_production_config_is_the_seed_plus_optional_keys():
    seed = leaves(yaml.safe_load(seed_path().read_text(encoding="utf-8")))
    production = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))
    assert {p: at(production, p) for p in seed} == seed


def test_the_variant_changes_every_value_and_keeps_the_layout():
    seed = leaves(yaml.safe_load(seed_path().read_text(encoding="utf-8")))
    variant = leaves(yaml.safe_load(VARIANT))
    assert set(variant) == set(seed)
    same = {p for p in seed if seed[p] == variant[p]}
    assert same == UNCHANGEABLE


@pytest.mark.parametrize("name", ["seed", "variant"])
def test_check_config_accepts_the_file(name, variant_path):
    path = seed_path() if name == "seed" else variant_path
    result = subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"# valid: {path}" in result.stderr
    assert EXPECTED[name].sent["main"][0] in result.stdout


BROKEN = [  # (line of the seed that starts with, replaced by, key path, problem)
    ("temperature: 0.25", "temprature: 0.25", "models.main.temprature", "unknown key (valid:"),
    ("max_retries: 4", "max_retries: four", "defaults.max_retries", "valid integer"),
    ("jitter: true", "jitter: full", "defaults.backoff.jitter", "valid boolean"),
    ("chat: 10", "chat: ten", "limits.rps.chat", "valid number"),
    (
        "half_open_interval_s:",
        "half_open_interval: 30",
        "circuit_breaker.half_open_interval",
        "unknown key",
    ),
    (
        '- trigger: "latency_high"',
        "- trigger: latency_spike",
        "degradation.rules[1]",
        "does not match",
    ),
    (
        "parallel_dialogs:",
        "parallel_dialogs: many",
        "testing.load_tests.parallel_dialogs",
        "integer",
    ),
    ("vector_store:", "vector_store: [chroma]", "context.rag.vector_store", "valid string"),
    (
        "api_key_env_var:",
        "api_key_env_var: sk-proj-abcdefgh01234567",
        "security.api_key_env_var",
        "looks like an API key",
    ),
    ("rotate_keys:", 'api_key: "abc123"', "security.api_key", "API keys must not be in the config"),
]


@pytest.mark.parametrize(("starts", "new", "where", "problem"), BROKEN)
def test_a_broken_seed_is_refused_in_one_line_with_file_line_and_key(
    tmp_path, capsys, starts, new, where, problem
):
    lines = seed_path().read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(starts))
    lines[index] = lines[index][: len(lines[index]) - len(lines[index].lstrip())] + new
    path = tmp_path / "openai_config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"mirai: {path}: line {index + 1}: {where}: ") and problem in err
    assert "sk-proj-" not in err and "abc123" not in err


# --- a Session on each file, against the offline server -----------------------------------------


@dataclass
class Case:
    name: str
    expect: Expected
    path: Path
    server: OfflineServer
    key_var: str
    sessions: list[Session]
    timing: dict[str, Any]

    def session(self) -> Session:
        session = Session(load_config(self.path), **self.timing)
        self.sessions.append(session)
        return session

    def bodies(self, last: int | None = None) -> list[dict]:
        recent = self.server.stats_snapshot()["recent"]
        return [r["body"] for r in recent[-last if last else 0 :]]

    def requests(self) -> int:
        return self.server.stats_snapshot()["requests"]


@pytest.fixture(params=["seed", "variant"])
def case(request, variant_path, monkeypatch, clock, sleeps):
    """A Session factory on ``request.param``'s file; the server accepts only the key from
    the variable that file names (``security.api_key_env_var``)."""
    name = request.param
    path = seed_path() if name == "seed" else variant_path
    key_var = "OPENAI_API_KEY" if name == "seed" else "MIRAI_VARIANT_KEY"
    key = f"sk-test-{name}-key-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-this-one-0000000000")
    monkeypatch.setenv(key_var, key)
    server = OfflineServer(expected_key=key).start()
    monkeypatch.setenv("MIRAI_BASE_URL", server.url)
    timing = {"clock": clock, "sleep": sleeps}
    built = Case(name, EXPECTED[name], path, server, key_var, [], timing)
    try:
        yield built
    finally:
        for session in built.sessions:
            session.close()
        server.stop()


def test_each_chat_profile_sends_the_files_values(case):
    session = case.session()
    for profile, expected in case.expect.sent.items():
        session.chat(HELLO, profile)
        body = case.bodies(1)[0]
        assert tuple(body.get(k) for k in SAMPLING) == expected, profile


def test_reasoning_sends_max_completion_tokens_and_no_sampling(case):
    case.session().chat(HELLO, "reasoning")
    body = case.bodies(1)[0]
    assert (body["model"], body["max_completion_tokens"]) == case.expect.reasoning
    assert set(body) == {"model", "messages", "max_completion_tokens"}  # no sampling, no max_tokens


def test_embed_sends_its_model_and_dimensions(case):
    vectors = case.session().embed(["alpha beta"])
    body = case.bodies(1)[0]
    assert (body["model"], body["dimensions"]) == case.expect.embed
    assert len(vectors[0]) == case.expect.embed[1]


def test_a_429_storm_takes_max_retries_attempts_per_profile(case):
    session = case.session()
    case.server.set_faults(fail_429=1.0, retry_after=0)
    with pytest.raises(RetriesExhaustedError, match=f"after {case.expect.attempts} attempt"):
        session.chat(HELLO, "fast")  # the end of the chain: no fallback
    assert case.requests() == case.expect.attempts
    with pytest.raises(RetriesExhaustedError, match=f"after {case.expect.embed_attempts} att"):
        session.embed(["alpha"])
    assert case.requests() == case.expect.attempts + case.expect.embed_attempts


def test_backoff_between_attempts(case, sleeps):
    session = case.session()
    case.server.set_faults(fail_5xx=1.0)
    with pytest.raises(RetriesExhaustedError):
        session.embed(["alpha"])
    ceilings = case.expect.embed_backoff
    assert len(sleeps.calls) == len(ceilings)
    if case.expect.jitter:
        assert all(0 <= s <= c for s, c in zip(sleeps.calls, ceilings, strict=True))
        assert sleeps.calls != ceilings
    else:
        assert sleeps.calls == pytest.approx(ceilings)  # base_ms doubling, capped at max_ms


def test_history_sent_is_trimmed_to_max_history_messages(case):
    session = case.session()
    for i in range(10):
        session.history.append_turn(f"question {i}", f"answer {i}")
    request = CellRequest("next", "main", "markdown", {}, memory=False)
    prepared = session.prepare("next", request)
    session.chat(prepared.messages, "main", **prepared.send_kwargs())
    messages = case.bodies(1)[0]["messages"]
    assert [m["role"] for m in messages[:1] + messages[-1:]] == ["system", "user"]
    history = messages[1:-1]
    assert len(history) == case.expect.history
    assert history[-1]["content"] == "answer 9" and history[0]["role"] == "user"


def test_system_prompt_budget(case):
    session = case.session()
    extra = "alpha beta gamma delta " * 180  # 600–1500 tokens, counted or estimated
    request = CellRequest("hi", "main", "markdown", {}, system=extra, memory=False)
    if case.expect.system_max == 1500:
        prepared = session.prepare("hi", request)
        session.chat(prepared.messages, "main", **prepared.send_kwargs())
        assert extra.strip() in case.bodies(1)[0]["messages"][0]["content"]
    else:
        with pytest.raises(ContextTooLongError, match=f"over the {case.expect.system_max}-token"):
            session.prepare("hi", request)
        assert case.requests() == 0


def test_breaker_opens_waits_probes_and_closes_as_configured(case, clock):
    failures, open_s, probe_s, successes = case.expect.breaker
    session = case.session()
    model = case.expect.sent["fast"][0]
    case.server.set_faults(fail_5xx=1.0)
    while True:  # calls fail until the breaker refuses one
        try:
            session.chat(HELLO, "fast")
        except RetriesExhaustedError:
            continue
        except CircuitOpenError:
            break
    assert case.requests() == failures  # consecutive failed attempts that opened it
    assert session.breaker_states()[model] == "open"
    clock.now += open_s - 1
    with pytest.raises(CircuitOpenError) as info:
        session.chat(HELLO, "fast")
    assert info.value.remaining_s == pytest.approx(1, abs=0.5)
    assert case.requests() == failures  # refused without a request
    clock.now += 1  # half-open: the probe fails and re-opens it for the probe interval
    with pytest.raises(CircuitOpenError) as info:
        session.chat(HELLO, "fast")
    assert case.requests() == failures + 1
    assert info.value.remaining_s == pytest.approx(probe_s, abs=0.5)
    clock.now += probe_s - 1
    with pytest.raises(CircuitOpenError):
        session.chat(HELLO, "fast")
    clock.now += 1
    case.server.set_faults(fail_5xx=0.0)
    for _ in range(successes - 1):
        session.chat(HELLO, "fast")
        assert session.breaker_states()[model] == "half-open"
    session.chat(HELLO, "fast")
    assert session.breaker_states()[model] == "closed"
    assert case.requests() == failures + 1 + successes


def test_requests_per_second(case, sleeps):
    chat_rps, embed_rps = case.expect.rps
    session = case.session()
    for _ in range(int(chat_rps)):  # a burst of one second goes out at once
        session.chat(HELLO, "fast")
    assert sleeps.calls == []
    session.chat(HELLO, "fast")
    assert sleeps.calls == [pytest.approx(1 / chat_rps)]
    for _ in range(int(embed_rps)):
        session.embed(["alpha"])
    assert sleeps.calls == [pytest.approx(1 / chat_rps)]
    session.embed(["alpha"])
    assert sleeps.calls[1:] == [pytest.approx(1 / embed_rps)]
    assert case.requests() == chat_rps + embed_rps + 2


def test_token_budgets(case):
    per_minute, per_user = case.expect.tokens
    session = case.session()
    session.chat(HELLO)
    rows = dict(session.policy.status_rows())
    assert rows["tokens this minute (global)"].endswith(f" / {per_minute:,}")
    assert rows[f"tokens this minute ({session.user})"].endswith(f" / {per_user:,}")
    long = [{"role": "user", "content": "word " * 11_000}]  # 11k–17k tokens + the output cap
    if per_user == 10_000:
        with pytest.raises(QuotaExceededError, match="per-user"):
            session.chat(long)
        assert case.requests() == 1
    else:
        session.chat(long)
        assert case.requests() == 2


def test_the_key_comes_from_the_variable_the_file_names(case, monkeypatch):
    session = case.session()
    assert session.chat(HELLO).text  # the server accepts only that variable's key
    monkeypatch.delenv(case.key_var)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-this-one-0000000000")
    session.reload(str(case.path))
    with pytest.raises(ClientRequestError, match="HTTP 401"):
        session.chat(HELLO)


def test_degradation_as_configured(case):
    session = case.session()
    case.server.set_faults(retry_after=0)
    heavy, main = case.expect.sent["heavy"][0], case.expect.sent["main"][0]
    for _ in range(5):  # heavy answers only 429; main answers
        case.server.script(["429"] * case.expect.attempts + ["ok"])
        session.chat(HELLO, "heavy")
    case.server.script(["ok"])
    record = session.chat(HELLO, "heavy").record
    first = case.bodies(1)[0]["model"]
    if case.expect.diverts:  # rate_limit_429 → switch_to_fast: one step, heavy → main
        assert (first, record.profile) == (main, "main")
    else:  # degradation.enabled: false
        assert (first, record.profile) == (heavy, "heavy") and session.policy.rules == []


def test_the_variants_per_profile_timeouts(variant_path, monkeypatch, clock, sleeps):
    """Hangs on the variant's small timeouts: main 0.5 s (defaults), embed 0.2 s, reasoning
    1.0 s; each profile's attempts take its own timeout (the seed's 90/30/120 s are pinned in
    test_config: a hang would wait that long)."""
    monkeypatch.setenv("MIRAI_VARIANT_KEY", "sk-test-variant-key-0123456789abcdef")
    with OfflineServer().start() as server:
        monkeypatch.setenv("MIRAI_BASE_URL", server.url)
        with Session(load_config(variant_path), clock=clock, sleep=sleeps) as session:
            calls = (
                (lambda: session.chat(HELLO), 2, 1.0, 1.5),
                (lambda: session.embed(["alpha"]), 3, 0.6, 1.3),
                (lambda: session.chat(HELLO, "reasoning"), 2, 2.0, 3.0),
            )
            for call, *_ in calls:  # clients and imports are made here, not in the timing
                call()
            server.set_faults(hang=True)
            server.reset_stats()
            for call, attempts, low, high in calls:
                started = time.monotonic()
                with pytest.raises(
                    RetriesExhaustedError, match=f"within .* after {attempts} attempt"
                ):
                    call()
                elapsed = time.monotonic() - started
                # +3 s for a loaded machine; the seed's 90/30/120 s would take far longer
                assert low * 0.95 <= elapsed < high + 3, (attempts, elapsed)
        assert requests_reach(server, 2 + 3 + 2) == 2 + 3 + 2
