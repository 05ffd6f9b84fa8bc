"""Tracing: OTLP/HTTP export of GenAI-convention spans to a collector the test runs, and the
quiet paths (no SDK, no collector) that end up as one `%mirai status` row, never a log line.

The OpenTelemetry tracer provider is global and set once per process: `configure()` reuses
whichever SDK provider another test (or the first Session) installed and adds one exporter
per collector URL, so these tests pass in any order.
"""

from __future__ import annotations

import http.server
import logging
import socket
import sys
import threading

import pytest

from mirai_magics.client.records import CallRecord
from mirai_magics.config import Tracing
from mirai_magics.errors import ClientRequestError
from mirai_magics.telemetry.tracing import (
    INSTALL_HINT,
    configure,
    genai_attributes,
    otlp_traces_url,
    span,
    status_rows,
)

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KEY = "sk-test-tracing-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver on 127.0.0.1: POST /v1/traces → decoded spans; else 404."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list = []
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str) -> list:
        return [s for s in self.spans if s.name == name]


class _Receive(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest.FromString(body)
        self.server.bodies.append(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.extend(scope.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def flush() -> None:
    assert trace.get_tracer_provider().force_flush(10_000)


def attributes(proto_span) -> dict:
    """OTLP KeyValue list → plain dict (arrays become tuples)."""

    def plain(value):
        kind = value.WhichOneof("value")
        if kind == "array_value":
            return tuple(plain(v) for v in value.array_value.values)
        return getattr(value, kind)

    return {kv.key: plain(kv.value) for kv in proto_span.attributes}


def traced_session(make_session, collector):
    return make_session(
        f"observability: {{tracing: {{enabled: true, endpoint: '{collector.url}'}}}}"
    )


# --- export to a collector --------------------------------------------------------------------


def test_a_chat_call_reaches_the_collector_with_genai_attributes(
    make_session, collector, offline_server
):
    session = traced_session(make_session, collector)
    offline_server.script(["503", "ok"])
    record = session.chat(HELLO).record
    flush()

    (call,) = [s for s in collector.named("mirai.llm.call") if attributes(s)["mirai.attempts"] == 2]
    got = attributes(call)
    assert got["gen_ai.operation.name"] == "chat"
    assert got["gen_ai.provider.name"] == got["gen_ai.system"] == "openai"
    assert got["gen_ai.request.model"] == got["gen_ai.response.model"] == "gpt-4o-mini"
    assert got["gen_ai.request.temperature"] == record.params["temperature"]
    assert got["gen_ai.request.top_p"] == record.params["top_p"]
    assert got["gen_ai.request.max_tokens"] == record.params["max_tokens"]
    assert got["gen_ai.usage.input_tokens"] == record.tokens_in > 0
    assert got["gen_ai.usage.output_tokens"] == record.tokens_out > 0
    assert got["gen_ai.response.finish_reasons"] == ("stop",)
    assert "error.type" not in got
    assert got["mirai.profile"] == "main" and got["mirai.offline"] is True
    events = [(attributes(e)["n"], attributes(e)["reason"]) for e in call.events]
    assert events == [(1, "503"), (2, "ok")]
    assert all(KEY.encode() not in body for body in collector.bodies)
    row = dict(session.extra_status())["tracing"]  # what `%mirai status` shows
    assert row.startswith(f"OTLP → {collector.url}/v1/traces · exporting")


def test_a_failed_call_and_an_embedding_span(make_session, collector, offline_server):
    session = traced_session(make_session, collector)
    offline_server.script(["400"])
    with pytest.raises(ClientRequestError):
        session.chat([{"role": "user", "content": "refused"}], "fast")
    session.embed(["alpha", "beta"])
    flush()

    calls = [attributes(s) | {"status": s.status.code} for s in collector.named("mirai.llm.call")]
    (failed,) = [a for a in calls if a.get("gen_ai.request.model") == "gpt-3.5-turbo"]
    assert failed["error.type"] == "client_error" and "gen_ai.response.model" not in failed
    assert failed["status"] == 2  # STATUS_CODE_ERROR
    (embedded,) = [a for a in calls if a["gen_ai.operation.name"] == "embeddings"]
    assert embedded["gen_ai.request.model"] == "text-embedding-3-large"
    assert embedded["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.usage.output_tokens" not in embedded


# --- the quiet paths ----------------------------------------------------------------------------


def test_without_the_exporter_one_status_notice_and_no_log(
    make_session, monkeypatch, caplog, capfd
):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    endpoint = "http://127.0.0.1:9/not-installed"
    with caplog.at_level(logging.DEBUG, logger="mirai_magics"):
        session = make_session(
            f"observability: {{tracing: {{enabled: true, endpoint: '{endpoint}'}}}}"
        )
        session.chat(HELLO)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capfd.readouterr().err == ""
    notices = [v for label, v in session.extra_status() if INSTALL_HINT in v]
    assert notices == [
        "observability.tracing is enabled but the OpenTelemetry SDK/OTLP exporter is not "
        f"installed: {INSTALL_HINT}"
    ]
    settings = Tracing(enabled=True, endpoint=endpoint)
    assert configure(settings) is False  # asked again (a reload): still quiet, same one row
    assert status_rows(settings) == [("notice", notices[0])]
    assert status_rows(Tracing(enabled=False)) == [
        ("tracing", "off (observability.tracing.enabled)")
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_collector_or_a_wrong_path_is_a_status_row_not_stderr(collector, caplog, capfd):
    down = Tracing(enabled=True, endpoint=f"http://127.0.0.1:{free_port()}")  # nobody listens
    wrong = Tracing(enabled=True, endpoint=f"{collector.url}/elsewhere")  # the collector: 404
    with caplog.at_level(logging.DEBUG):
        assert configure(down) and configure(wrong)
        with span("mirai.test.quiet"):
            pass
        flush()
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []
    assert capfd.readouterr().err == ""
    assert "last export failed: collector not reachable" in status_rows(down)[0][1]
    assert "last export failed: Failed to export spans batch code: 404" in status_rows(wrong)[0][1]


# --- pure pieces ----------------------------------------------------------------------------------


def test_the_traces_url_is_the_collector_base_plus_v1_traces():
    assert otlp_traces_url("http://localhost:4318") == "http://localhost:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_genai_attributes_of_a_reasoning_call_and_of_a_refusal():
    record = CallRecord(profile="reasoning", model="o1-preview", requested_profile="reasoning")
    record.params = {"model": "o1-preview", "max_completion_tokens": 4096}
    record.tokens_in, record.tokens_out, record.finish_reason = 10, 20, "length"
    got = genai_attributes(record)
    assert got["gen_ai.request.max_tokens"] == 4096
    assert "gen_ai.request.temperature" not in got and "gen_ai.request.top_p" not in got
    assert got["gen_ai.response.finish_reasons"] == ["length"]
    record.error, record.error_code = "refused", "quota_exceeded"
    refused = genai_attributes(record)
    assert refused["error.type"] == "quota_exceeded" and "gen_ai.response.model" not in refused
