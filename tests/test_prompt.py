"""Token estimates, history trimming and prompt assembly (pure functions)."""

from __future__ import annotations

import pytest

from mirai_magics.errors import ContextTooLongError
from mirai_magics.history import History, trim
from mirai_magics.prompt import build_messages, system_prompt
from mirai_magics.tokens import count_messages, estimate_text


def test_estimate_is_script_aware_with_margin():
    assert estimate_text("") == 0
    assert estimate_text("a" * 400) == 125  # 400/4 × 1.25
    assert estimate_text("日" * 300) == 125  # 300/3 × 1.25
    assert estimate_text("ab日") == 2  # (2/4 + 1/3) × 1.25 → ceil


def test_count_messages_adds_per_message_overhead(monkeypatch):
    monkeypatch.setenv("MIRAI_NO_TIKTOKEN", "1")
    total, exact = count_messages([{"role": "user", "content": "a" * 40}])
    assert (total, exact) == (3 + 4 + 13, False)


def test_history_keeps_whole_turns_up_to_the_limit():
    h = History(max_messages=12)
    for i in range(10):
        h.append_turn(f"q{i}", f"a{i}")
    window = h.window()
    assert len(window) == 12 and window[0] == {"role": "user", "content": "q4"}
    assert [m["content"] for m in h.window(6)] == ["q7", "a7", "q8", "a8", "q9", "a9"]
    window[0]["content"] = "mutated"
    assert h.window()[0]["content"] == "q4"  # window() hands out copies


def test_trim_never_starts_with_an_orphaned_reply():
    messages = [{"role": r, "content": str(i)} for i, r in enumerate(["user", "assistant"] * 3)]
    assert trim(messages, 5)[0]["role"] == "user" and len(trim(messages, 5)) == 4
    assert trim(messages, 0) == []


def test_system_prompt_over_budget_is_refused_before_sending():
    system = system_prompt("base", "x " * 4000, "markdown")
    with pytest.raises(ContextTooLongError, match="over the 1500-token limit") as info:
        build_messages(system=system, history=[], user="hi", max_system_tokens=1500)
    assert "estimated" in str(info.value) and "\n" not in str(info.value)


def test_messages_order_system_memory_history_user():
    prompt = build_messages(
        system=system_prompt("base", "extra", "json"),
        history=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        user="now",
        memory_block="earlier cells",
    )
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system", "system", "user", "assistant", "user"]
    assert "JSON" in prompt.messages[0]["content"] and "extra" in prompt.messages[0]["content"]


def test_secret_env_values_follow_added_and_rotated_variables(monkeypatch):
    from mirai_magics.redact import secret_env_values

    monkeypatch.setenv("MIRAI_TEST_API_TOKEN", "first-secret-value")
    assert "first-secret-value" in secret_env_values()
    monkeypatch.setenv("MIRAI_TEST_API_TOKEN", "rotated-secret-value")  # same size, new value
    values = secret_env_values()
    assert "rotated-secret-value" in values and "first-secret-value" not in values
    monkeypatch.delenv("MIRAI_TEST_API_TOKEN")
    assert "rotated-secret-value" not in secret_env_values()


def test_secret_env_values_see_a_swap_of_one_variable_for_another(monkeypatch):
    from mirai_magics.redact import secret_env_values

    monkeypatch.setenv("MIRAI_TEST_PLAIN", "not a secret")
    assert "not a secret" not in secret_env_values()
    monkeypatch.delenv("MIRAI_TEST_PLAIN")  # one removed, one added: the same count
    monkeypatch.setenv("MIRAI_DB_PASSWORD", "swapped-in-secret")
    assert "swapped-in-secret" in secret_env_values()
