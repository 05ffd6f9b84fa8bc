"""What a person sees in JupyterLab: streaming in place, badges, the picker, code cells, errors."""

from __future__ import annotations

import os
import re

import pytest

if os.environ.get("MIRAI_SKIP_E2E") == "1":  # before importing playwright, which may be absent
    pytest.skip("MIRAI_SKIP_E2E=1: browser tests skipped on request", allow_module_level=True)

from labpage import EXECUTED, CellState
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

LOAD = "%load_ext mirai_magics"
BADGE = re.compile(
    r"(\w+)/([\w.-]+) · (\d[\d,]*) → (\d[\d,]*) tokens · (\d[\d,]*(?:\.\d)?) (ms|s)\b"
)
CHAT_PATH = "/v1/chat/completions"
OWN_OUTPUT = ".jp-Cell-outputArea"  # the cell's own output area, not one inside a widget
ROWS_JS = (
    "rows => rows.map(r => [r.querySelector('th').innerText, r.querySelector('td').innerText])"
)


def chat_requests(server) -> list[tuple[str, int]]:
    """(model, status) of each chat request the server saw since the last reset (embeddings
    for memory may come and go: they are not counted)."""
    recent = server.stats_snapshot()["recent"]
    return [(r["model"], r["status"]) for r in recent if r["path"] == CHAT_PATH]


def badge_facts(notebook, index: int) -> tuple[str, str, int, int, int]:
    """(profile, model, tokens in, tokens out, latency ms) from the cell's badge."""
    badge = notebook.cell(index).locator(".mirai-badge")
    expect(badge).to_have_count(1)
    match = BADGE.search(badge.inner_text())
    assert match, f"badge without model · tokens · latency: {badge.inner_text()!r}"
    profile, model, *numbers, unit = match.groups()
    tokens_in, tokens_out, latency = (float(n.replace(",", "")) for n in numbers)
    latency *= 1000 if unit == "s" else 1  # `850 ms`, or `1.6 s` from one second on
    return profile, model, int(tokens_in), int(tokens_out), int(latency)


def test_streamed_answer_grows_in_place_then_shows_a_badge(open_notebook, e2e_server):
    notebook = open_notebook("stream", [""])
    notebook.type_into(0, LOAD)
    notebook.run(0)
    prompt = "%%mirai\nExplain what a circuit breaker does, in two sentences."
    notebook.type_into(1, prompt)
    notebook.screenshot("1-stream-typed")
    shots: list[CellState] = []

    def shoot_growth(state: CellState) -> None:
        growing = not state.done and state.outputs and "▌" in state.outputs[0]
        if growing and len(shots) < 2:
            notebook.screenshot(f"1-stream-partial-{len(shots) + 1}")
            shots.append(state)

    notebook.start(1)
    states = notebook.watch(1, on_state=shoot_growth)
    notebook.screenshot("1-stream-final", upto=1)  # docs/quickstart.png is a copy of this one

    partial = [s.outputs[0] for s in states if not s.done and s.outputs and "▌" in s.outputs[0]]
    assert len(set(partial)) >= 2, f"fewer than two intermediate states: {partial}"
    lengths = [len(text) for text in partial]
    assert lengths == sorted(lengths), "the streamed answer shrank while streaming"
    streaming = [s for s in states if not s.done]
    assert all(len(s.outputs) <= 1 for s in streaming), "chunks were appended as new outputs"
    final = states[-1].outputs
    assert len(final) == 2, final  # the answer (updated in place) and the badge
    assert final[0].startswith("Offline answer") and "▌" not in final[0]
    assert "circuit breaker" in final[0]
    profile, model, tokens_in, tokens_out, latency = badge_facts(notebook, 1)
    assert (profile, model) == ("main", "gpt-4o-mini")
    assert tokens_in > 0 and tokens_out > 0 and latency > 0
    assert chat_requests(e2e_server) == [("gpt-4o-mini", 200)]
    assert e2e_server.stats_snapshot()["stream_requests"] == 1


def test_picker_choice_changes_the_next_call(open_notebook, e2e_server):
    ask = "%%mirai\nWhich model answers this?"
    notebook = open_notebook("picker", [LOAD, "%mirai picker", ask])
    notebook.run(0)
    picker = notebook.run(1).locator(".mirai-picker")
    dropdown = picker.locator("select")
    expect(dropdown).to_have_value("main")
    expect(picker).to_contain_text("next %%mirai → main/gpt-4o-mini, T=0.25, max_tokens=2000")
    notebook.screenshot("2-picker-main")

    names = dropdown.locator("option").all_inner_texts()
    dropdown.click()  # opens the list; arrow keys and Enter pick like a person would
    notebook.screenshot("2-picker-open")
    for _ in range(names.index("heavy") - names.index("main")):
        notebook.page.keyboard.press("ArrowDown")
    notebook.page.keyboard.press("Enter")
    expect(dropdown).to_have_value("heavy")
    expect(picker).to_contain_text("next %%mirai → heavy/gpt-4o, T=0.25, max_tokens=2500")
    notebook.screenshot("2-picker-heavy")
    assert chat_requests(e2e_server) == []

    notebook.run(2)
    profile, model, *_ = badge_facts(notebook, 2)
    notebook.screenshot("2-picker-answer")
    assert (profile, model) == ("heavy", "gpt-4o")
    assert chat_requests(e2e_server) == [("gpt-4o", 200)]


def test_format_code_puts_the_code_into_a_new_cell_below(open_notebook, e2e_server):
    ask = "%%mirai --format code\nWrite a function that returns the answer."
    notebook = open_notebook("code", [LOAD, ask])
    notebook.run(0)
    notebook.run(1)
    expect(notebook.cell(1).locator(".mirai-badge")).to_contain_text("code → next cell")
    below = notebook.cell(2)
    expect(below.locator(".cm-content")).to_contain_text("def offline_answer():")
    notebook.screenshot("3-code-cell")
    source = notebook.source(2)
    assert "return 42" in source and "```" not in source
    assert "Offline placeholder for: Write a function that returns the answer." in source
    assert not EXECUTED.match(below.locator(".jp-InputPrompt").inner_text())
    assert chat_requests(e2e_server) == [("gpt-4o-mini", 200)]


def test_refused_key_is_one_red_line_and_the_next_cell_still_runs(
    open_notebook, e2e_server, e2e_key
):
    sources = [LOAD, "%%mirai\nThis call is refused.", "%%mirai\nAre you still there?"]
    notebook = open_notebook("error", sources)
    notebook.run(0)
    e2e_server.set_faults(force_status=401)
    cell = notebook.run(1)

    error = cell.locator(".mirai-error")
    expect(error).to_have_count(1)
    expect(error).to_have_css("color", "rgb(211, 47, 47)")  # the light theme's --jp-error-color1
    text = error.inner_text()
    assert "\n" not in text.strip() and "API key was refused" in text
    assert e2e_key not in cell.inner_text() and "sk-test" not in cell.inner_text()
    expect(notebook.outputs(1)).to_have_count(1)  # no traceback, no stderr, no extra output
    expect(cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
    assert "Traceback" not in cell.inner_text()
    notebook.screenshot("4-error-line")

    e2e_server.set_faults(force_status=None)
    notebook.run(2)
    profile, model, *_ = badge_facts(notebook, 2)
    notebook.screenshot("4-error-next-cell")
    assert (profile, model) == ("main", "gpt-4o-mini")
    assert chat_requests(e2e_server) == [("gpt-4o-mini", 401), ("gpt-4o-mini", 200)]


def test_status_renders_its_table(open_notebook, e2e_server):
    notebook = open_notebook("status", [LOAD, "%%mirai\nSay hello.", "%mirai status"])
    for index in range(3):
        notebook.run(index)
    table = notebook.cell(2).locator("table.mirai-status")
    expect(table).to_have_count(1)
    expect(table.locator("caption")).to_have_text("mirai status")
    rows = dict(table.locator("tr").evaluate_all(ROWS_JS))
    table.locator("tr").last.scroll_into_view_if_needed()
    notebook.screenshot("5-status")
    assert int(rows["calls"]) >= 1 and rows["errors"] == "0"  # calls include memory embeddings
    assert rows["default profile"] == "main" and rows["breaker gpt-4o-mini"] == "closed"
    assert e2e_server.base_url in rows["endpoint"]
    assert re.fullmatch(r"[\d,]+ ms / [\d,]+ ms", rows["latency p50 / p95"])
    assert rows["history"] == "2 / 12 messages"  # context.max_history_messages


def test_background_cell_fills_in_its_own_output_later(open_notebook, e2e_server):
    """`%%mirai --bg` shows its job line at once; the answer and its badge replace that line
    in the cell's own output area: a fast one (it may come before the cell's displays exist),
    one that comes after its cell finished while the kernel is idle, and one that comes while
    another cell runs (which gets none of it)."""
    sources = [
        LOAD,
        "%%mirai --bg --no-memory\nSay hi.",
        "%%mirai --bg --no-memory\nSay hello.",
        "%%mirai --bg --no-memory\nSay goodbye.",
        "import time\ntime.sleep(8)\nprint('slept')",  # the 3 s answer lands in its middle
    ]
    notebook = open_notebook("background", sources)
    notebook.run(0)
    expect_answered(notebook.run(1), "Say hi")
    # from here on, answers come seconds after their cell ended (seen queued, even when loaded)
    e2e_server.set_faults(latency_ms=3000)
    queued = expect_queued(notebook, 2)
    notebook.screenshot("6-background-queued", upto=2)
    expect_answered(queued, "Say hello")
    queued = expect_queued(notebook, 3)
    notebook.start(4)
    expect_answered(queued, "Say goodbye")
    assert notebook.state(4).prompt == "[*]:", "the answer came while the next cell ran"
    sleeper = notebook.wait_executed(4)
    expect(sleeper.locator(OWN_OUTPUT)).to_have_text("slept")
    expect(sleeper.locator(".mirai-badge")).to_have_count(0)
    notebook.screenshot("6-background")


def expect_queued(notebook, index: int):
    """Run a background cell; once it finished, its output is the job line alone."""
    cell = notebook.run(index)
    expect(cell.locator(OWN_OUTPUT)).to_contain_text(re.compile(r"job c[0-9a-f]{6} · main"))
    expect(cell.locator(OWN_OUTPUT)).to_contain_text("queued (background)")
    expect(cell.locator(".mirai-badge")).to_have_count(0)
    return cell


def expect_answered(cell, said: str) -> None:
    """The answer and one badge have replaced the job line in ``cell``."""
    expect(cell.locator(".mirai-badge")).to_have_count(1, timeout=20_000)
    expect(cell.locator(OWN_OUTPUT)).to_contain_text(f"You said: {said}")
    expect(cell.locator(".mirai-badge")).to_contain_text("history: appended on completion")
    expect(cell.locator(OWN_OUTPUT)).not_to_contain_text("queued")
