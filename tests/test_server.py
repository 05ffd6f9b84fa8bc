"""Tests of the offline OpenAI-compatible server, through the real openai SDK over loopback."""

from __future__ import annotations

import ast
import asyncio
import base64
import http.client
import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from mirai_magics.server import Faults, OfflineServer, add_arguments, answers, server_from_args
from mirai_magics.server.embeddings import embed

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-server"
USER = [{"role": "user", "content": "Hello offline world"}]


def make_client(srv: OfflineServer, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=srv.url, api_key=KEY, **kw)


def chat(client: openai.OpenAI, **kw):
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("messages", USER)
    return client.chat.completions.create(**kw)


def admin(srv: OfflineServer, name: str, payload: dict | None = None, method: str | None = None):
    data = None if payload is None else json.dumps(payload).encode()
    method = method or ("GET" if payload is None else "POST")
    req = urllib.request.Request(
        f"{srv.base_url}/_mirai/{name}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def raw(srv: OfflineServer, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def auth_json() -> dict:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture
def srv():
    server = OfflineServer().start()
    yield server
    server.stop()


@pytest.fixture
def client(srv):
    with make_client(srv) as c:
        yield c


# -- chat completions -------------------------------------------------------------------------


def test_chat_answer_says_offline_and_has_usage(srv, client):
    raw_resp = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    assert raw_resp.headers["x-mirai-offline"] == "1"
    assert raw_resp.headers["x-request-id"]
    resp = raw_resp.parse()
    text = resp.choices[0].message.content
    assert "offline server" in text
    assert "You said: Hello offline world" in text
    assert resp.model == "gpt-4o"
    assert resp.id.startswith("chatcmpl-offline-")
    assert resp.system_fingerprint == "mirai-offline"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == math.ceil(len("Hello offline world") / 4) + 4 + 3
    assert resp.usage.completion_tokens == math.ceil(len(text) / 4)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_content_parts_and_multiline_input(client):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "line one\nline   two"}]},
    ]
    text = chat(client, messages=messages).choices[0].message.content
    assert text.endswith("You said: line one line two")
    assert "2 messages in context" in text


def test_stream_matches_non_stream_and_reports_usage(client):
    full = chat(client).choices[0].message.content
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3
    assert "".join(pieces) == full
    assert all(c.system_fingerprint == "mirai-offline" for c in chunks)
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == math.ceil(len(full) / 4)


def test_stream_without_usage_and_with_delay(srv, client):
    srv.set_faults(stream_delay_ms=2)
    chunks = list(chat(client, stream=True))
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == chat(client).choices[0].message.content


def test_json_mode_returns_parseable_json(client):
    resp = chat(client, response_format={"type": "json_object"})
    data = json.loads(resp.choices[0].message.content)
    assert data == {
        "offline": True,
        "model": "gpt-4o",
        "echo": "Hello offline world",
        "messages": 1,
    }
    messages = [{"role": "system", "content": "Reply in JSON."}, *USER]
    data = json.loads(chat(client, messages=messages).choices[0].message.content)
    assert data["messages"] == 2


def test_code_mode_returns_fenced_python(client):
    messages = [
        {"role": "system", "content": "Answer with a fenced code block."},
        {"role": "user", "content": 'Write a "parser" for C:\\paths\nplease'},
    ]
    text = chat(client, messages=messages).choices[0].message.content
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, text
    tree = ast.parse(match.group(1))
    assert [n.name for n in tree.body] == ["offline_answer"]


def test_reasoning_model_parameters(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model="o1", max_tokens=50)
    assert "max_completion_tokens" in info.value.message
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        chat(client, model="o3-mini", temperature=0.2)
    resp = chat(client, model="o1", max_completion_tokens=500, temperature=1)
    assert "offline server" in resp.choices[0].message.content


def test_max_tokens_truncates_with_length_finish(client):
    resp = chat(client, max_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert len(resp.choices[0].message.content) == 20
    assert resp.usage.completion_tokens <= 5
    chunks = list(chat(client, max_completion_tokens=5, stream=True))
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"


def test_chat_validation_errors(srv, client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages=[])
    assert info.value.code == "empty_array"
    status, _, body = raw(srv, "POST", "/v1/chat/completions", b"{not json", auth_json())
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw(srv, "POST", "/v1/chat/completions", b'{"model": "gpt-4o"}', auth_json())
    assert (status, json.loads(body)["error"]["param"]) == (400, "messages")
    payload = json.dumps({"messages": USER}).encode()
    assert raw(srv, "POST", "/v1/chat/completions", payload, auth_json())[0] == 400


def test_authorization(srv):
    payload = json.dumps({"model": "gpt-4o", "messages": USER}).encode()
    status, _headers, body = raw(srv, "POST", "/v1/chat/completions", payload)
    assert status == 401
    assert json.loads(body)["error"]["message"].startswith("You didn't provide an API key")
    with OfflineServer(expected_key="sk-right").start() as strict:
        with pytest.raises(openai.AuthenticationError), make_client(strict) as wrong:
            chat(wrong)
        with openai.OpenAI(base_url=strict.url, api_key="sk-right", max_retries=0) as ok:
            assert chat(ok).choices[0].message.content


# -- embeddings -------------------------------------------------------------------------------


def _unit(vec) -> np.ndarray:
    arr = np.asarray(vec, dtype=np.float64)
    assert abs(np.linalg.norm(arr) - 1.0) < 1e-5
    return arr


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_embeddings_through_sdk(client, encoding_format):
    texts = [
        "How do I retry failed API calls in Python?",
        "how to retry failed api calls with python",
        "Recipe for chocolate cake with strawberries",
    ]
    kw = {"encoding_format": encoding_format} if encoding_format else {}
    resp = client.embeddings.create(
        model="text-embedding-3-small", input=texts, dimensions=64, **kw
    )
    if encoding_format == "base64":
        vecs = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data]
    else:
        vecs = [d.embedding for d in resp.data]
    a, b, c = (_unit(v) for v in vecs)
    assert len(a) == 64
    assert a @ b > a @ c + 0.3
    assert a @ b > b @ c + 0.3
    again = client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=64)
    assert np.allclose(again.data[0].embedding, a, atol=1e-7)
    assert resp.usage.prompt_tokens == sum(math.ceil(len(t) / 4) for t in texts)


def test_embeddings_raw_float_and_default_dimensions(srv, client):
    payload = {"model": "text-embedding-3-large", "input": "hello", "encoding_format": "float"}
    status, _, body = raw(srv, "POST", "/v1/embeddings", json.dumps(payload).encode(), auth_json())
    assert status == 200
    data = json.loads(body)
    assert data["object"] == "list"
    assert len(_unit(data["data"][0]["embedding"])) == 3072
    sizes = {
        model: len(client.embeddings.create(model=model, input="x").data[0].embedding)
        for model in ("text-embedding-3-small", "text-embedding-ada-002", "other-model")
    }
    assert sizes == {
        "text-embedding-3-small": 1536,
        "text-embedding-ada-002": 1536,
        "other-model": 256,
    }
    blank = client.embeddings.create(model="m", input=["", "   "], dimensions=16)
    assert blank.data[0].embedding == blank.data[1].embedding
    _unit(blank.data[0].embedding)


def test_embeddings_reject_bad_input(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=0)


def test_embedding_vectors_are_semantic_enough_and_fast():
    rng = np.random.default_rng(0)
    words = np.array(
        ["alpha", "beta", "gamma", "delta", "retry", "model", "server", "cell", "kernel", "quota"]
    )
    texts = [" ".join(rng.choice(words, 90))[:500] for _ in range(64)]
    start = time.perf_counter()
    matrix = embed(texts, 256)
    print(f"\nembedding 64 x 500 chars at 256 dims: {(time.perf_counter() - start) * 1e3:.1f} ms")
    assert matrix.shape == (64, 256)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    cat, cat2, money = embed(
        ["The cat sat on the mat", "A cat was sitting on the mat", "Quarterly revenue grew 10%"],
        512,
    )
    assert cat @ cat2 > cat @ money + 0.3


# -- other endpoints --------------------------------------------------------------------------


def test_models_and_unknown_paths(srv, client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "o1", "text-embedding-3-large"} <= ids
    assert client.models.retrieve("gpt-4o").owned_by == "mirai-offline"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    status, _, body = raw(srv, "GET", "/v1/nothing-here", headers=auth_json())
    assert status == 404
    assert "error" in json.loads(body)
    assert raw(srv, "GET", "/v1/chat/completions", headers=auth_json())[0] == 405
    assert raw(srv, "DELETE", "/v1/models", headers=auth_json())[0] == 405


def test_raw_http_details(srv):
    body = json.dumps({"model": "gpt-4o", "messages": USER}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunked = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(chunked)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in data
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


# -- faults -----------------------------------------------------------------------------------


def test_scripted_429_with_retry_after_then_ok(srv, client):
    srv.set_faults(retry_after=2, retry_after_ms=1500)
    srv.script(["429", "ok"])
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    headers = info.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "1500"
    assert info.value.code == "rate_limit_exceeded"
    assert "fault injection" in info.value.message
    assert chat(client).choices[0].message.content
    assert srv.stats["by_status"] == {"429": 1, "200": 1}


def test_decimal_retry_after_and_should_retry(srv, client):
    srv.set_faults(fail_429=1, retry_after=0.25, should_retry=False)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.response.headers["retry-after"] == "0.25"
    assert info.value.response.headers["x-should-retry"] == "false"


def test_5xx_and_html_503(srv, client):
    srv.script(["500", "502", "html503"])
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as info:
        chat(client)
    assert info.value.status_code == 503
    assert isinstance(info.value, openai.InternalServerError)
    assert info.value.response.headers["content-type"].startswith("text/html")
    assert "503 Service Temporarily Unavailable" in info.value.response.text
    srv.set_faults(fail_5xx=1, status_5xx=504)
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 504
    srv.set_faults(html_503=True)
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
    ],
)
def test_force_status(srv, client, status, error):
    srv.set_faults(force_status=status)
    with pytest.raises(error):
        chat(client)
    stats = srv.stats_snapshot()
    assert stats["requests"] == 1
    assert stats["by_status"] == {str(status): 1}


def test_drop_and_down_give_connection_errors(srv, client):
    srv.script(["drop"])
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    assert chat(client).choices[0].message.content
    srv.set_faults(down=True)
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert admin(srv, "stats")[1]["by_status"] == {"drop": 1, "200": 1, "down": 2}
    srv.set_faults(down=False, drop=1.0)
    with pytest.raises(openai.APIConnectionError):
        chat(client)


def test_hang_times_out_and_stop_is_fast():
    srv = OfflineServer(faults=Faults(hang=True)).start()
    with make_client(srv, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        chat(client)
    # a second hung request still waiting when the server stops
    errors: list[BaseException] = []
    waiting = threading.Thread(target=lambda: _capture(errors, make_client(srv, timeout=10)))
    waiting.start()
    deadline = time.monotonic() + 5
    while srv.stats["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - start < 2.0
    waiting.join(5)
    assert errors and isinstance(errors[0], openai.APIConnectionError)
    srv.stop()  # idempotent


def _capture(errors: list[BaseException], client: openai.OpenAI) -> None:
    with client:
        try:
            chat(client)
        except BaseException as exc:
            errors.append(exc)


def test_seed_reproducibility():
    def statuses(seed: int) -> list[int]:
        with OfflineServer(faults=Faults(fail_429=0.5), seed=seed).start() as server:
            c = make_client(server)
            out: list[int] = []
            for _ in range(24):
                try:
                    chat(c)
                    out.append(200)
                except openai.RateLimitError:
                    out.append(429)
            c.close()
            return out

    first = statuses(7)
    assert first == statuses(7)
    assert set(first) == {200, 429}


def test_latency_and_max_in_flight(srv):
    srv.set_faults(latency_ms=50)
    clients = [make_client(srv) for _ in range(8)]
    barrier = threading.Barrier(8)

    def call(c: openai.OpenAI) -> str:
        barrier.wait()
        return chat(c).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, clients))
    for c in clients:
        c.close()
    assert len(set(results)) == 1
    stats = srv.stats
    assert 2 <= stats["max_in_flight"] <= 8
    assert 2 <= stats["max_in_flight_by_kind"]["chat"] <= 8
    assert stats["in_flight"] == 0


def test_stats_content(srv, client):
    chat(client)
    chat(client, model="gpt-4o-mini", stream=True).close()
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    client.models.list()
    admin(srv, "stats")
    stats = srv.stats
    assert stats.requests == 4
    assert stats["by_path"] == {
        "/v1/chat/completions": 2, "/v1/embeddings": 1, "/v1/models": 1,
    }  # fmt: skip
    assert stats["by_model"] == {"gpt-4o": 1, "gpt-4o-mini": 1, "text-embedding-3-small": 1}
    assert stats["by_status"] == {"200": 4}
    assert stats["embedding_inputs"] == 3
    assert stats["stream_requests"] == 1
    recent = stats["recent"]
    assert recent[0]["body"]["messages"] == USER
    assert recent[2]["body"]["input"] == ["a", "b", "c"]
    assert [r["status"] for r in recent] == [200] * 4
    srv.reset_stats()
    assert srv.stats["requests"] == 0
    assert srv.stats["recent"] == []


def test_vary(srv, client):
    assert chat(client).choices[0].message.content == chat(client).choices[0].message.content
    srv.set_faults(vary=True)
    first, second = (chat(client).choices[0].message.content for _ in range(2))
    assert first != second
    assert re.search(r" \[variant [0-9a-f]{8}\]$", first)
    data = json.loads(
        chat(client, response_format={"type": "json_object"}).choices[0].message.content
    )
    assert re.fullmatch(r"[0-9a-f]{8}", data["variant"])
    with OfflineServer(vary=True).start() as varied, make_client(varied) as c:
        assert chat(c).choices[0].message.content != chat(c).choices[0].message.content


# -- admin endpoints --------------------------------------------------------------------------


def test_admin_endpoints(srv, client):
    status, config = admin(srv, "faults", {"fail_429": 1, "retry_after": 1, "script": ["500"]})
    assert status == 200
    assert config["faults"]["fail_429"] == 1
    assert config["script"] == ["500"]
    with pytest.raises(openai.InternalServerError):
        chat(client)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    stats = admin(srv, "stats")[1]
    assert stats["by_status"] == {"500": 1, "429": 1}
    assert stats["requests"] == 2
    _, config = admin(srv, "reset", {})
    assert config["faults"] == Faults().to_dict()
    assert config["script"] == []
    assert chat(client).choices[0].message.content
    assert admin(srv, "stats")[1]["requests"] == 1
    assert admin(srv, "faults")[1]["vary"] is False
    assert admin(srv, "health")[1]["ok"] is True


def test_admin_is_never_faulted_and_rejects_bad_input(srv):
    srv.set_faults(down=True, force_status=500)
    assert admin(srv, "stats")[0] == 200
    for bad in ({"no_such_field": 1}, {"fail_429": 2}, {"script": ["teapot"]}, {"vary": "yes"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            admin(srv, "faults", bad)
        info.value.close()
        assert info.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as info:
        admin(srv, "nothing")
    info.value.close()
    assert info.value.code == 404
    assert srv.stats["requests"] == 0
    assert srv.faults.down is True


def test_python_api_validation():
    with pytest.raises(ValueError):
        OfflineServer(host="0.0.0.0")
    with pytest.raises(ValueError):
        OfflineServer(host="192.168.1.10")
    with pytest.raises(ValueError):
        Faults(fail_429=1.5)
    srv = OfflineServer(host="localhost")
    assert srv.host == "127.0.0.1"
    with pytest.raises(TypeError):
        srv.app.plan.update(bogus=1)
    with pytest.raises(ValueError):
        srv.set_faults(bogus=1)
    with pytest.raises(ValueError):
        srv.script(["nope"])
    srv.stop()  # never started: no-op


# -- pure answers -----------------------------------------------------------------------------


def test_answers_are_pure_and_split_losslessly():
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": "x" * 9}, *USER]}
    assert answers.chat_answer(body) == answers.chat_answer(dict(body))
    assert answers.prompt_tokens(body["messages"]) == (3 + 4) + (5 + 4) + 3
    text = "  lead  spaces\nand **bold** words, then\ttabs  "
    assert "".join(answers.split_for_stream(text)) == text
    assert answers.split_for_stream("") == []
    assert answers.truncate("abcdefgh", 1) == ("abcd", "length")
    assert answers.truncate("abcdefgh", 2) == ("abcdefgh", "stop")


# -- speed, async, CLI, fixture ---------------------------------------------------------------


def test_sequential_calls_have_no_nagle_stalls(client):
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        chat(client)
    mean_ms = (time.perf_counter() - start) / n * 1e3
    print(f"\nmean latency of {n} sequential non-stream chat calls: {mean_ms:.2f} ms")


def test_serve_async_in_existing_loop():
    async def main() -> tuple[str, int]:
        async with OfflineServer() as server:
            client = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0)
            replies = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o", messages=USER) for _ in range(5))
            )
            await client.close()
            return replies[0].choices[0].message.content, server.stats["requests"]

    text, requests = asyncio.run(main())
    assert "offline server" in text
    assert requests == 5


def test_cli_arguments_build_a_server():
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--port", "0", "--fail-429", "0.1", "--retry-after", "1.5", "--html-503",
         "--should-retry", "true", "--script", "429,ok", "--latency-ms", "5"]
    )  # fmt: skip
    server = server_from_args(args)
    assert server.faults.fail_429 == 0.1
    assert server.faults.html_503 is True
    assert server.faults.should_retry is True
    assert server.app.plan.pending_script() == ["429", "ok"]


def test_module_entry_point_runs_until_interrupted():
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirai_magics.server", "--port", "0", "--fail-5xx", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", line).group(0)
        with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as c:
            assert "offline server" in chat(c).choices[0].message.content
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_conftest_fixture(offline_server):
    with make_client(offline_server) as c:
        assert chat(c).choices[0].message.content
    assert offline_server.stats["requests"] == 1


def test_embedding_quirks_of_real_providers(offline_server):
    client = openai.OpenAI(base_url=offline_server.url, api_key="sk-test-server", max_retries=0)
    offline_server.set_faults(embed_max_chars=10, embed_refuse="BAD")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.embeddings.create(model="text-embedding-3-small", input=["ok", "x" * 11])
    with pytest.raises(openai.BadRequestError, match="refused"):
        client.embeddings.create(model="text-embedding-3-small", input=["BAD"])
    offline_server.set_faults(embed_max_chars=None, embed_refuse=None, embed_dims=8)
    reply = client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=64)
    assert len(reply.data[0].embedding) == 8  # the width asked for is ignored
