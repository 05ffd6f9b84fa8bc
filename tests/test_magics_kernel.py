"""`%%mirai` and `%mirai` in a real Jupyter kernel against the offline server (over loopback)."""

from __future__ import annotations

import time

import pytest
from kernelutil import kernel_fixtures

pytestmark = pytest.mark.kernel
KEY = "sk-test-magics-0123456789abcdef"
TEST_CONFIG = """
defaults: {timeout_s: 2, max_retries: 2, backoff: {base_ms: 10, max_ms: 20}}  # a whole stream fits
context: {rag: {enabled: false}}
"""


SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens")


server, kernel = kernel_fixtures("kernel", TEST_CONFIG, KEY)


@pytest.fixture(autouse=True)
def fresh(server, kernel):
    server.set_faults(force_status=None, hang=False, fail_5xx=0.0, fail_429=0.0, stream_delay_ms=0)
    server.reset_stats()
    kernel.run("%mirai reset\n%mirai use main")
    yield


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def history_len(kernel) -> int:
    return int(
        kernel.run(
            "print(len(get_ipython().magics_manager.registry['MiraiMagics'].session.history))"
        ).text
    )


def badge(execution) -> str:
    return [t for t in execution.data("text/plain") if t.startswith("[mirai] ")][-1]


def test_help_shows_options_and_examples(kernel):
    reply = kernel.run("%%mirai?\n").reply
    page = reply["payload"][0]["data"]["text/plain"]
    for text in ("--format", "--no-history", "--out", "Examples", "%%mirai heavy --format code"):
        assert text in page


def test_plain_call_renders_markdown_and_badge(kernel, server):
    r = kernel.run("%%mirai\nHello there")
    assert r.data("text/markdown")[0].startswith("**Offline answer**")
    b = badge(r)
    assert b.startswith("[mirai] main/gpt-4o-mini · ") and "1 attempt" in b and "offline" in b
    assert any("mirai-badge" in h for h in r.data("text/html"))
    assert r.of_type("execute_result") == []  # no Out[] entry
    assert kernel.run("print(_mirai.record.model)").text.strip() == "gpt-4o-mini"
    sent = {k: last_body(server).get(k) for k in SAMPLING}
    assert sent == {  # the seed's main profile, as written in the config
        "temperature": 0.25,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.0,
        "max_tokens": 2000,
    }


def test_every_option_reaches_the_request(kernel, server):
    kernel.run(
        '%%mirai heavy --model gpt-4o-mini -t 0.7 --max-tokens 50 --system "Be brief." '
        "--no-history --out ans --no-stream\nWhat is {city}?"
    )
    body = last_body(server)
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.7
    assert body["max_tokens"] == 50
    assert body["messages"][0]["role"] == "system" and "Be brief." in body["messages"][0]["content"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][-1]["content"] == "What is {city}?"  # undefined: left literal
    assert "offline" in kernel.run("print(ans)").text.lower()
    assert history_len(kernel) == 0


def test_no_interp_sends_braces_literally(kernel, server):
    kernel.run("city = 'Oslo'")
    kernel.run("%%mirai --no-history\nAbout {city}")
    assert last_body(server)["messages"][-1]["content"] == "About Oslo"
    kernel.run("%%mirai --no-history --no-interp\nAbout {city}")
    assert last_body(server)["messages"][-1]["content"] == "About {city}"


def test_interpolation_of_in_out_err_and_undefined_names_on_badge(kernel, server):
    kernel.run("1/0", allow_error=True)
    n = int(kernel.run("print(len(In) - 2)").text)  # the execution number of the 1/0 cell
    assert kernel.run("3 * 7").data("text/plain") == ["21"]
    r = kernel.run(
        "%%mirai --no-history\n"
        f'Code: {{In[{n}]}} error: {{Err[{n}]}} out: {{Out[{n + 2}]}} json: {{"k": 1}} {{nope}}'
    )
    sent = last_body(server)["messages"][-1]["content"]
    assert "Code: 1/0" in sent and "ZeroDivisionError" in sent and "out: 21" in sent
    assert '{"k": 1}' in sent and "{nope}" in sent
    assert "undefined: {nope}" in badge(r)


def test_formats_text_code_json(kernel, server):
    r = kernel.run("%%mirai --format text --no-history\nplain please")
    assert r.data("text/markdown") == [] and r.data("text/plain")[0].startswith("**Offline")
    r = kernel.run("%%mirai --format code --no-history\nwrite code")
    assert "fenced code block" in last_body(server)["messages"][0]["content"]
    assert "code → next cell" in badge(r)
    payload = r.reply["payload"]
    assert payload and payload[0]["source"] == "set_next_input"
    assert "def offline_answer" in payload[0]["text"]
    r = kernel.run("%%mirai --format json --no-history --out js\ngive json")
    assert last_body(server)["response_format"] == {"type": "json_object"}
    assert r.data("application/json")[0]["offline"] is True
    assert kernel.run("print(type(js).__name__, js['offline'])").text.split() == ["dict", "True"]


def test_history_is_trimmed_to_12_and_no_history_sends_and_stores_none(kernel, server):
    for i in range(8):
        kernel.run(f"%%mirai\nturn {i}")
    roles = [m["role"] for m in last_body(server)["messages"]]
    assert roles[0] == "system" and len(roles) == 1 + 12 + 1  # system + 12 history + cell
    assert history_len(kernel) == 12
    shown = kernel.run("%mirai history").data("text/plain")[0]
    assert shown.startswith("history: 12 messages") and "turn 7" in shown and "turn 1" not in shown
    kernel.run("%%mirai --no-history\nalone")
    assert [m["role"] for m in last_body(server)["messages"]] == ["system", "user"]
    assert history_len(kernel) == 12


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ({"force_status": 401}, "HTTP 401"),
        ({"force_status": 400}, "HTTP 400"),
        ({"hang": True}, "no complete answer within 2 s (defaults.timeout_s) after 2 attempt(s)"),
    ],
)
def test_errors_are_one_red_line_kernel_alive_history_unchanged(kernel, server, faults, expected):
    kernel.run("%%mirai\nremember me")
    before = history_len(kernel)
    server.set_faults(**faults)
    r = kernel.run("%%mirai\nthis fails")
    assert r.status == "ok" and r.of_type("error") == []
    lines = r.data("text/plain")
    assert len(lines) == 1 and lines[0].startswith("[mirai] ✗ ") and expected in lines[0]
    assert "\n" not in lines[0] and KEY not in lines[0]
    assert any("mirai-error" in h for h in r.data("text/html"))
    assert history_len(kernel) == before
    server.set_faults(**{k: None if k == "force_status" else False for k in faults})
    assert badge(kernel.run("%%mirai\nworks again"))


def test_open_breaker_renders_with_seconds_remaining(kernel, server):
    server.set_faults(fail_5xx=1.0)
    for _ in range(3):  # 2 attempts per call: the 5th failure opens the breaker
        r = kernel.run("%%mirai fast\nfail")
    line = r.data("text/plain")[0]
    assert "circuit breaker open for gpt-3.5-turbo" in line and "retry in" in line
    seen = server.stats_snapshot()["requests"]
    r = kernel.run("%%mirai fast\nrefused")
    assert server.stats_snapshot()["requests"] == seen
    status = kernel.run("%mirai status").data("text/plain")[0]
    assert "breaker gpt-3.5-turbo" in status and "open" in status
    kernel.run("%mirai reload")  # fresh client and breakers for the following tests


def test_unknown_profile_or_option_is_one_line_listing_valid_ones(kernel):
    r = kernel.run("%%mirai nosuch\nhi")
    line = r.data("text/plain")[0]
    assert "unknown profile 'nosuch'" in line and "main, heavy, fast" in line
    r = kernel.run("%%mirai --frobnicate\nhi")
    line = r.data("text/plain")[0]
    assert "--frobnicate" in line and "--no-history" in line and r.status == "ok"
    r = kernel.run("%mirai frobnicate")
    assert "unknown command 'frobnicate' — usage: %mirai status|use|" in r.data("text/plain")[0]


def test_line_commands_print_their_usage_and_refuse_bad_arguments_in_one_line(kernel):
    page = kernel.run("%mirai help").text
    assert "line commands (" in page and "  replay   Answer calls from a recording" in page
    assert kernel.run("%mirai log -h").text.startswith("usage: %mirai log [-n N] [--json]\n")
    assert kernel.run("%mirai help log").text == kernel.run("%mirai log -h").text
    assert "  forget   Drop one cell" in kernel.run("%mirai memory -h").text
    for line, shown in [
        ("%mirai log --bogus", "unrecognized arguments: --bogus — usage: %mirai log [-n N]"),
        ("%mirai metrics --port x", "--port needs a number 0–65535, got 'x'"),
        ("%mirai memory frobnicate", "unknown memory command 'frobnicate' — usage: %mirai memory"),
    ]:
        r = kernel.run(line)
        assert r.status == "ok" and r.of_type("error", "stream") == []
        (text,) = r.data("text/plain")
        assert text.startswith("[mirai] ✗ ") and shown in text, line


def test_streaming_on_updates_one_handle_and_off_displays_once(kernel, server):
    server.set_faults(stream_delay_ms=20)  # the whole stream within timeout_s (2 s)
    streamed = kernel.run("%%mirai --stream --no-history\nstream this")
    updates = streamed.of_type("update_display_data")
    assert len(updates) >= 2
    ids = {m["content"]["transient"]["display_id"] for m in updates}
    assert len(ids) == 1
    final = updates[-1]["content"]["data"]["text/markdown"]
    assert final.startswith("**Offline answer**") and "▌" not in final
    assert server.stats_snapshot()["recent"][-1]["body"]["stream"] is True
    plain = kernel.run("%%mirai --no-stream --no-history\nstream this")
    assert plain.of_type("update_display_data") == []
    assert plain.data("text/markdown")[0] == final


def test_picker_changes_the_next_calls_profile(kernel, server):
    shown = kernel.run("%mirai picker")
    assert shown.of_type("execute_result") == [] and shown.data("text/plain")
    kernel.run("picker = _mirai_picker")
    kernel.run("picker.children[0].value = 'heavy'")
    r = kernel.run("%%mirai\nwho answers?")
    assert (last_body(server)["model"], last_body(server)["max_tokens"]) == ("gpt-4o", 2500)
    assert badge(r).startswith("[mirai] heavy/gpt-4o")
    kernel.run("picker.children[1].value = 0.9")
    kernel.run("%%mirai\nwarmer")
    assert last_body(server)["temperature"] == 0.9
    assert kernel.run("print(picker.children[1].max)").text.strip() == "1.0"


def test_use_and_status(kernel, server):
    kernel.run("%mirai use fast")
    kernel.run("%%mirai\nhi")
    assert last_body(server)["model"] == "gpt-3.5-turbo"
    status = kernel.run("%mirai status").data("text/plain")[0]
    for label in ("calls", "errors", "retries", "tokens this minute", "latency p50 / p95"):
        assert label in status
    assert KEY not in kernel.run("%mirai config").text


def test_fix_sends_last_traceback_and_cell_to_heavy(kernel, server):
    kernel.run("def broken():\n    return undefined_thing\nbroken()", allow_error=True)
    r = kernel.run("%mirai fix")
    body = last_body(server)
    assert body["model"] == "gpt-4o"
    prompt = body["messages"][-1]["content"]
    assert "NameError" in prompt and "return undefined_thing" in prompt
    assert badge(r).startswith("[mirai] heavy/gpt-4o")


def test_reload_ext_leaves_one_engine_thread(kernel):
    kernel.run("%%mirai\nstart the engine")
    kernel.run("%reload_ext mirai_magics")
    kernel.run("%%mirai\nafter reload")
    names = kernel.run("import threading; print(sorted(t.name for t in threading.enumerate()))")
    assert names.text.count("mirai-engine") == 1
    kernel.run("%unload_ext mirai_magics")
    names = kernel.run("print(sorted(t.name for t in threading.enumerate()))")
    assert "mirai-engine" not in names.text
    assert "mirai" not in kernel.run("print(get_ipython().magics_manager.magics['cell'])").text
    kernel.run("%load_ext mirai_magics")


def test_interrupt_during_stream_cancels_cleanly(kernel, server):
    kernel.run("%%mirai\nbefore the interrupt")
    before = history_len(kernel)
    server.set_faults(stream_delay_ms=400)
    msg_id = kernel.kc.execute("%%mirai --stream\nslow stream please")
    deadline = time.monotonic() + 10
    while server.stats_snapshot()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # let the first chunks arrive
    kernel.interrupt()
    r = kernel.collect(msg_id, timeout=30)
    assert r.reply["status"] == "error" and r.reply["ename"] == "CallInterrupted"
    while server.stats_snapshot()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stats_snapshot()["in_flight"] == 0  # the stream's connection was closed
    server.set_faults(stream_delay_ms=0)
    assert history_len(kernel) == before
    threads = kernel.run("import threading; print([t.name for t in threading.enumerate()])")
    assert threads.text.count("mirai-engine") == 1
    chat = server.stats_snapshot()["by_path"]["/v1/chat/completions"]
    assert chat == 2  # the call before and the interrupted stream: no retry after the cancel
    assert badge(kernel.run("%%mirai\nafter the interrupt"))
