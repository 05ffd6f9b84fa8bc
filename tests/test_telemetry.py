"""Metrics scraped over HTTP, the endpoint on first use, JSON call logs (file and logger), spans."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request

import pytest
import yaml
from kernelutil import Kernel, server_kernel_env
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from mirai_magics.client.records import CallRecord
from mirai_magics.config import Logging, parse_config
from mirai_magics.errors import ClientRequestError, ConfigError, MiraiError, QuotaExceededError
from mirai_magics.schema import LOG_FIELDS
from mirai_magics.telemetry import Telemetry
from mirai_magics.telemetry.alerts import SERIES, render
from mirai_magics.telemetry.logs import CallLogger, record_fields
from mirai_magics.telemetry.metrics import ENV_PORT, STATUSES
from mirai_magics.telemetry.tracing import span
from mirai_magics.ui.cell import CellRequest, run_cell
from mirai_magics.ui.metrics_cmd import metrics_command

KEY = "sk-test-telemetry-0123456789abcdef"
SECRET = "hunter2-telemetry-secret"
HELLO = [{"role": "user", "content": "hello"}]
LABELS = {"model", "status", "direction", "reason", "rule", "kind", "le"}
SEED_FIELDS = [
    "model", "tokens_in", "tokens_out", "latency_ms", "attempt_number", "error_code", "user_id"
]  # fmt: skip


@pytest.fixture(autouse=True)
def secret_in_env(monkeypatch):
    monkeypatch.setenv("MIRAI_TEST_SECRET_TOKEN", SECRET)
    monkeypatch.setenv(ENV_PORT, "0")  # each session's endpoint on a free port of its own


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics over HTTP → {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families(port)
        for s in family.samples
    }


def families(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_after_a_scripted_sequence(make_session, offline_server, clock):
    session = make_session(
        "circuit_breaker: {failure_threshold: 2}\ndefaults: {max_retries: 2}\n"
        "limits: {tokens: {per_user_minute: 3000}}"
    )
    offline_server.script(["429", "ok"])
    ok = session.chat(HELLO).record
    offline_server.script(["400"])
    with pytest.raises(ClientRequestError):
        session.chat([{"role": "user", "content": f"my secret is {SECRET}"}])
    with pytest.raises(QuotaExceededError):
        session.chat(HELLO, max_tokens=4000)  # over the user's 3000 tokens a minute
    offline_server.script(["500", "500"])
    with pytest.raises(MiraiError):
        session.chat(HELLO, "fast")
    session.embed(["alpha", "beta"])

    port = session.telemetry.metrics.port  # served since the session was made
    m = scrape(port)
    mini, fast, emb = "gpt-4o-mini", "gpt-3.5-turbo", "text-embedding-3-large"
    requests = "mirai_openai_requests_total"
    assert value(m, requests, model=mini, status="success") == 1
    assert value(m, requests, model=mini, status="client_error") == 1
    assert value(m, requests, model=mini, status="quota_exceeded") == 1
    assert value(m, requests, model=fast, status="failed") == 1
    assert value(m, requests, model=emb, status="success") == 1
    assert {dict(k)["status"] for n, k in m if n == requests} <= set(STATUSES)
    assert value(m, "mirai_openai_retries_total", model=mini, reason="429") == 1
    assert value(m, "mirai_openai_retries_total", model=fast, reason="500") == 2
    assert value(m, "mirai_openai_tokens_total", model=mini, direction="in") == ok.tokens_in
    assert value(m, "mirai_openai_tokens_total", model=mini, direction="out") == ok.tokens_out
    assert value(m, "mirai_openai_tokens_total", model=emb, direction="in") > 0
    # one observation per HTTP attempt: 429 + ok, then 400; the quota refusal sent nothing
    assert value(m, "mirai_openai_latency_seconds_count", model=mini) == 3
    assert value(m, "mirai_openai_latency_seconds_count", model=fast) == 2
    assert value(m, "mirai_openai_latency_seconds_bucket", model=mini, le="60.0") == 3
    assert value(m, "mirai_openai_quota_rejections_total", kind="tokens_user") == 1
    assert value(m, "mirai_openai_circuit_breaker_open", model=fast) == 1
    assert value(m, "mirai_openai_circuit_breaker_open", model=mini) == 0
    assert ("mirai_memory_indexed_total", ()) in m  # memory counters are registered
    labels = {k for name, pairs in m for k, _ in pairs}
    assert labels <= LABELS  # no label carries a prompt, a key or free text
    assert not any(SECRET in v or "sk-" in v for _, pairs in m for _, v in pairs)
    clock.now += 60  # half-open: still not closed, still 1 (so "open for 1m" can fire)
    assert session.breaker_states()[fast] == "half-open"
    assert value(scrape(port), "mirai_openai_circuit_breaker_open", model=fast) == 1


def test_attempt_latency_is_measured_around_each_request(make_session, offline_server):
    session = make_session(fake_time=False)
    offline_server.script(["503", "ok"])
    session.chat(HELLO)
    m = scrape(session.telemetry.metrics.port)
    total = value(m, "mirai_openai_latency_seconds_sum", model="gpt-4o-mini")
    assert value(m, "mirai_openai_latency_seconds_count", model="gpt-4o-mini") == 2
    assert 0 < total < session.records[-1].latency_ms / 1000  # the backoff wait is not in it


def test_every_listed_metric_is_served_or_recorded(make_session):
    session = make_session()
    session.chat(HELLO)
    served = {f.name for f in families(session.telemetry.metrics.port)}
    served |= {f"{name}_total" for name in served}  # the parser drops counters' suffix
    rules = yaml.safe_load(render(session.config.observability))["groups"][0]["rules"]
    records = {r["record"] for r in rules if "record" in r}
    listed = session.config.observability.metrics.metrics
    assert len(listed) == 6
    for entry in listed:
        assert SERIES[entry] and all(n in served | records for n in SERIES[entry]), entry
    assert {
        "mirai_openai:requests_errors:rate5m",
        "mirai_openai:latency_seconds:p50",
        "mirai_openai:latency_seconds:p95",
        "mirai_openai:latency_seconds:p99",
        "mirai_openai:tokens_per_minute",
        "mirai_openai:retry_rate:rate10m",
    } <= records
    assert {"mirai_openai_requests_total", "mirai_openai_circuit_breaker_open"} <= served


def test_each_session_has_its_own_registry():
    config = parse_config("", "test.yaml")
    first, second = Telemetry(config), Telemetry(config)  # as after %reload_ext: no clash
    try:
        first.counter("mirai_memory_indexed_total").inc(2)
        assert first.counter("mirai_memory_indexed") is first.counter("mirai_memory_indexed_total")
        assert "mirai_memory_indexed_total 2.0" in first.metrics.text()
        assert "mirai_memory_indexed_total 0.0" in second.metrics.text()
        assert "mirai_openai_requests_total" not in REGISTRY._names_to_collectors
    finally:
        first.close()
        second.close()


# --- the endpoint ------------------------------------------------------------------------------


def test_endpoint_starts_with_the_session_on_the_configured_port(make_session, monkeypatch):
    monkeypatch.delenv(ENV_PORT)
    port = free_port()
    session = make_session(f"observability: {{metrics: {{port: {port}}}}}")
    assert ("metrics", f"http://127.0.0.1:{port}/metrics") in session.extra_status()
    session.chat(HELLO)  # no %mirai metrics: the endpoint is already up
    m = scrape(port)
    assert value(m, "mirai_openai_requests_total", model="gpt-4o-mini", status="success") == 1
    session.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_busy_port_is_one_notice_and_never_an_error(make_session, monkeypatch):
    monkeypatch.delenv(ENV_PORT)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        session = make_session(f"observability: {{metrics: {{port: {port}}}}}")
        for _ in range(3):
            session.chat(HELLO)
        rows = [v for k, v in session.extra_status() if k == "metrics"]
        assert rows == [
            f"port {port} is busy (Address already in use): set observability.metrics.port "
            "or run %mirai metrics --port 0"
        ]
        with pytest.raises(MiraiError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            metrics_command(session)  # asked for explicitly: then it is an error
        note = metrics_command(session, port=0)
    bound = session.telemetry.metrics.port
    assert bound != port and f"http://127.0.0.1:{bound}/metrics" in note
    assert (
        value(scrape(bound), "mirai_openai_requests_total", model="gpt-4o-mini", status="success")
        == 3
    )
    assert [v for k, v in session.extra_status() if k == "metrics"] == [
        f"http://127.0.0.1:{bound}/metrics"
    ]


def test_metrics_disabled_starts_nothing(make_session, monkeypatch):
    monkeypatch.delenv(ENV_PORT)
    port = free_port()
    session = make_session(f"observability: {{metrics: {{enabled: false, port: {port}}}}}")
    session.chat(HELLO)
    assert session.telemetry.metrics.port is None
    assert not [k for k, _ in session.extra_status() if k == "metrics"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nobody listens there


def test_env_port_overrides_the_config(make_session, monkeypatch):
    port = free_port()
    monkeypatch.setenv(ENV_PORT, str(port))
    session = make_session("observability: {metrics: {port: 1}}")
    assert session.telemetry.metrics.port == port
    monkeypatch.setenv(ENV_PORT, "ninety")
    with pytest.raises(ConfigError, match="MIRAI_METRICS_PORT='ninety' is not a port"):
        make_session()


def test_metrics_command_is_idempotent_and_stops(make_session):
    session = make_session()
    first = metrics_command(session, port=0)
    port = session.telemetry.metrics.port
    assert f"http://127.0.0.1:{port}/metrics" in first
    assert metrics_command(session, port=port) == first  # same port: no error
    assert "mirai_openai_requests_total" in {f.name + "_total" for f in families(port)}
    assert metrics_command(session, stop=True) == "metrics endpoint stopped"
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    assert metrics_command(session, stop=True) == "metrics endpoint was not running"
    moved = metrics_command(session, port=0)  # stopped: 0 picks a free port and says which
    assert f"http://127.0.0.1:{session.telemetry.metrics.port}/metrics" in moved


@pytest.mark.kernel
def test_metrics_endpoint_in_a_kernel_survives_reload_ext(offline_server, tmp_path):
    port = free_port()
    config = "context: {rag: {enabled: false}}\n"
    env = server_kernel_env(offline_server.url, tmp_path, config, KEY)
    with Kernel(tmp_path, env) as kernel:
        kernel.run("%load_ext mirai_magics")
        answer = kernel.run("%%mirai\nHello metrics").text
        assert "mirai.call" not in answer  # the JSON log line is not printed into the cell
        status = kernel.run("%mirai status").text
        for row in ("tokens this minute (global)", "degradations active", "quota rejections"):
            assert row in status
        note = kernel.run(f"%mirai metrics --port {port}").text
        assert f"http://127.0.0.1:{port}/metrics" in note
        samples = scrape(port)
        success = {"model": "gpt-4o-mini", "status": "success"}
        assert value(samples, "mirai_openai_requests_total", **success) == 1
        again = kernel.run(f"%mirai metrics --port {port}").text
        assert "cannot serve" not in again and str(port) in again
        kernel.run("%reload_ext mirai_magics")  # closes the session and its endpoint
        kernel.run(f"%mirai metrics --port {port}")
        assert value(scrape(port), "mirai_openai_requests_total", **success) == 0
        kernel.run("%mirai metrics --stop")
        with pytest.raises(urllib.error.URLError):
            scrape(port)


# --- logs --------------------------------------------------------------------------------------


def log_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "mirai_magics"]


def file_lines(session) -> list[dict]:
    session.flush_logs()  # the file is written in the background
    path = session.telemetry.logs.path
    assert path == session.telemetry.logs.path.parent / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_json_line_per_call_in_the_file_with_exactly_the_fields(
    make_session, offline_server, isolated_home, caplog
):
    session = make_session()
    offline_server.script(["500", "ok"])
    session.chat([{"role": "user", "content": f"use {KEY} and {SECRET}"}], "heavy")
    offline_server.script(["400"])
    with pytest.raises(ClientRequestError):
        session.chat(HELLO)
    assert session.telemetry.logs.path == isolated_home / "calls.jsonl"
    ok, failed = file_lines(session)
    assert list(ok) == ["time", "event", *SEED_FIELDS]  # exactly the listed ones, in order
    assert list(failed) == list(ok) and ok["event"] == "mirai.call"
    assert (ok["model"], ok["attempt_number"], ok["error_code"]) == ("gpt-4o", 2, None)
    assert ok["tokens_in"] > 0 and ok["tokens_out"] > 0 and ok["user_id"] == session.user
    assert failed["error_code"] == "client_error" and failed["tokens_in"] is None
    assert ok["time"].endswith("+00:00")
    text = (isolated_home / "calls.jsonl").read_text()
    assert KEY not in text and SECRET not in text and "sk-test" not in text
    assert len(log_lines(caplog)) == 2  # once each: the file's own logger does not propagate
    assert not logging.getLogger("mirai_magics").handlers  # the package adds none


def test_prompts_go_to_the_file_only_when_enabled_and_redacted(make_session, isolated_home):
    session = make_session("observability: {logging: {include_prompts: true}}")
    session.chat([{"role": "user", "content": f"use {KEY} and {SECRET} please"}])
    (line,) = file_lines(session)
    prompt = line["prompt"][0]["content"]
    assert prompt == "use [REDACTED] and [REDACTED] please" and line["response"]
    text = (isolated_home / "calls.jsonl").read_text()
    assert KEY not in text and SECRET not in text and "sk-test" not in text


def test_the_mirai_magics_logger_gets_the_same_lines(make_session, offline_server, caplog):
    caplog.set_level(logging.INFO, logger="mirai_magics")
    session = make_session("observability: {logging: {fields: [model, profile, error]}}")
    offline_server.script(["400"])
    with pytest.raises(ClientRequestError):
        session.chat([{"role": "user", "content": f"use {KEY}"}])
    session.chat(HELLO, "fast")
    failed, ok = log_lines(caplog)
    assert list(failed) == ["time", "event", "model", "profile", "error"]
    assert (ok["model"], ok["profile"], ok["error"]) == ("gpt-3.5-turbo", "fast", None)
    assert [r.levelname for r in caplog.records if r.name == "mirai_magics"] == [
        "WARNING", "INFO"
    ]  # fmt: skip
    assert file_lines(session) == [failed, ok] and KEY not in caplog.text


def test_logging_disabled_writes_nothing(make_session, isolated_home, caplog):
    caplog.set_level(logging.INFO, logger="mirai_magics")
    session = make_session("observability: {logging: {enabled: false}}")
    session.chat(HELLO)
    assert session.telemetry.logs.path is None and not log_lines(caplog)
    assert not (isolated_home / "calls.jsonl").exists()


def test_the_file_rotates_and_keeps_the_backups(tmp_path):
    logger = CallLogger()
    settings = Logging(file_max_bytes=10_000, file_backups=1)
    logger.configure(settings, tmp_path / "calls.jsonl", ())
    record = CallRecord(profile="main", model="gpt-4o-mini", tokens_in=10, tokens_out=5)
    for _ in range(200):  # ~170 bytes a line
        assert logger.log_call(record)
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.jsonl", "calls.jsonl.1"]
    assert all(p.stat().st_size <= 10_000 for p in tmp_path.iterdir())


def test_every_schema_field_can_be_logged():
    assert set(record_fields(CallRecord(profile="main", model="m"))) == set(LOG_FIELDS)


# --- tracing -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def by_name(exporter) -> dict:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_cell_spans_nest_across_the_engine_thread(spans, make_session, offline_server):
    session = make_session("context: {rag: {embedder: local}}")
    offline_server.script(["503", "ok"])
    request = CellRequest(text="hello", profile="main", fmt="markdown", overrides={})
    request.stream = False
    spans.clear()
    assert run_cell(request, session, None, {}) is not None
    found = by_name(spans)
    cell, memory = found["mirai.cell"], found["mirai.memory.search"]
    call, validate = found["mirai.llm.call"], found["mirai.validate"]
    for child in (memory, call, validate):  # the call span is made on the engine thread
        assert child.parent.span_id == cell.context.span_id
        assert child.context.trace_id == cell.context.trace_id
    assert cell.start_time <= memory.start_time
    assert memory.end_time <= call.start_time < call.end_time <= validate.start_time
    assert validate.end_time <= cell.end_time
    attempts = [e for e in call.events if e.name == "attempt"]
    assert [(e.attributes["n"], e.attributes["reason"]) for e in attempts] == [
        (1, "503"), (2, "ok")
    ]  # fmt: skip
    assert call.attributes["mirai.model"] == "gpt-4o-mini"
    assert call.attributes["mirai.attempts"] == 2


def test_streamed_call_span_nests_under_the_caller(spans, make_session):
    session = make_session()
    spans.clear()
    with span("mirai.cell"):
        items = list(session.stream_chat(HELLO))
    assert items[-1].record.streamed
    found = by_name(spans)
    assert found["mirai.llm.call"].parent.span_id == found["mirai.cell"].context.span_id


def test_otlp_export_off_exports_nothing():
    from mirai_magics.config import Tracing
    from mirai_magics.telemetry.tracing import configure

    assert configure(Tracing(enabled=False)) is False
