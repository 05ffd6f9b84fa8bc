"""The picker as a person uses it: labels in full, a changed field kept across profiles, the
other fields loaded from each profile, no temperature for a reasoning profile."""

from __future__ import annotations

import os

import pytest

if os.environ.get("MIRAI_SKIP_E2E") == "1":  # before importing playwright, which may be absent
    pytest.skip("MIRAI_SKIP_E2E=1: browser tests skipped on request", allow_module_level=True)

from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

LOAD = "%load_ext mirai_magics"
CHAT_PATH = "/v1/chat/completions"
# each label of the panel: its text, and whether the text fits (no "temperat…" ellipsis)
LABELS_JS = (
    "labels => labels.filter(l => l.innerText)"
    ".map(l => [l.innerText, l.scrollWidth <= l.clientWidth])"
)


def choose(notebook, dropdown, name: str) -> None:
    """Pick ``name`` as a person does: open the list, arrow keys, Enter."""
    names = dropdown.locator("option").all_inner_texts()
    current = names.index(dropdown.input_value())
    dropdown.click()
    key = "ArrowDown" if names.index(name) > current else "ArrowUp"
    for _ in range(abs(names.index(name) - current)):
        notebook.page.keyboard.press(key)
    notebook.page.keyboard.press("Enter")
    expect(dropdown).to_have_value(name)


def sent_bodies(server) -> list[dict]:
    recent = server.stats_snapshot()["recent"]
    return [r["body"] for r in recent if r["path"] == CHAT_PATH]


def test_picker_switch_keeps_the_users_field_and_loads_the_profiles_others(
    open_notebook, e2e_server
):
    ask = "%%mirai\nWhich settings does this call use?"
    notebook = open_notebook("picker-switch", [LOAD, "%mirai picker", ask])
    notebook.run(0)
    picker = notebook.run(1).locator(".mirai-picker")
    dropdown, summary = picker.locator("select"), picker.locator("code")
    slider = picker.locator(".widget-slider")
    tokens = picker.locator("input[type='number']")
    expect(summary).to_have_text("next %%mirai → main/gpt-4o-mini, T=0.25, max_tokens=2000")
    labels = picker.locator(".widget-label").evaluate_all(LABELS_JS)
    assert [text for text, _ in labels] == ["profile", "temperature", "max tokens"]
    assert all(fits for _, fits in labels), f"a label is cut: {labels}"
    notebook.screenshot("7-picker-labels")

    tokens.fill("300")  # the user's own cap, typed into the field
    tokens.press("Enter")
    expect(summary).to_have_text("next %%mirai → main/gpt-4o-mini, T=0.25, max_tokens=300")
    choose(notebook, dropdown, "creative")  # its own temperature, the user's cap
    expect(summary).to_have_text("next %%mirai → creative/gpt-4o, T=0.40, max_tokens=300")
    expect(slider).to_be_visible()
    notebook.screenshot("7-picker-creative")

    choose(notebook, dropdown, "reasoning")  # o1-class: no temperature to show
    expect(summary).to_have_text("next %%mirai → reasoning/o1-preview, T=–, max_tokens=300")
    expect(slider).to_be_hidden()
    expect(picker.locator(".widget-label", has_text="temperature")).to_be_hidden()
    notebook.screenshot("7-picker-reasoning")

    choose(notebook, dropdown, "heavy")
    expect(summary).to_have_text("next %%mirai → heavy/gpt-4o, T=0.25, max_tokens=300")
    expect(slider).to_be_visible()
    assert sent_bodies(e2e_server) == []  # choosing sends nothing

    notebook.run(2)
    expect(notebook.cell(2).locator(".mirai-badge")).to_contain_text("heavy/gpt-4o")
    notebook.screenshot("7-picker-answer", upto=2)
    (body,) = sent_bodies(e2e_server)
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("gpt-4o", 300, 0.25)
