"""Session as the composition root: one path builds every config-derived part, reload too."""

from __future__ import annotations

import pytest

from mirai_magics.errors import ConfigError
from mirai_magics.session import Session
from mirai_magics.ui.cell import CellRequest

KEY = "sk-test-session-0123456789abcdef"


def config_file(tmp_path, name: str, base_url: str, extra: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"endpoint: {{base_url: '{base_url}'}}\n{extra}", encoding="utf-8")
    return str(path)


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def roles_sent(server) -> list[str]:
    return [m["role"] for m in server.stats_snapshot()["recent"][-1]["body"]["messages"]]


def cell(session: Session, text: str, memory: bool = True) -> None:
    request = CellRequest(text, "main", "markdown", {}, memory=memory)
    prepared = session.prepare(text, request)
    reply = session.chat(prepared.messages, "main", **prepared.send_kwargs())
    session.history.append_turn(prepared.user_text, reply.text)


def test_reload_applies_the_new_history_limit(keyed, tmp_path, offline_server):
    path = config_file(tmp_path, "a.yaml", offline_server.url)
    with Session(config_path=path) as session:
        for i in range(8):
            cell(session, f"question {i}", memory=False)
        assert roles_sent(offline_server).count("assistant") == 6  # 12 messages of history
        (tmp_path / "a.yaml").write_text(
            f"endpoint: {{base_url: '{offline_server.url}'}}\n"
            "context: {max_history_messages: 4}\n",
            encoding="utf-8",
        )
        session.reload()
        assert session.history.max_messages == 4
        cell(session, "after reload", memory=False)
        assert roles_sent(offline_server).count("assistant") == 2  # trimmed at 4, not 12
        assert len(session.history) == 4


def test_reload_with_a_new_path_switches_endpoint_and_keeps_quota_state(
    keyed, tmp_path, offline_server
):
    other = offline_server.__class__().start()
    try:
        first = config_file(tmp_path, "first.yaml", offline_server.url)
        with Session(config_path=first) as session:
            session.chat([{"role": "user", "content": "hi"}])
            policy, used = session.policy, session.policy.budgets.global_budget.used()
            session.reload(config_file(tmp_path, "second.yaml", other.url))
            assert session.config.source.endswith("second.yaml")
            session.chat([{"role": "user", "content": "hi"}])
            assert other.stats_snapshot()["requests"] == 1  # the new endpoint answered
            assert session.policy is policy  # same limits: budgets are not reset
            assert session.policy.budgets.global_budget.used() > used
    finally:
        other.stop()


def test_reload_with_new_limits_or_rules_rebuilds_the_policy(keyed, tmp_path, offline_server):
    from mirai_magics.errors import QuotaExceededError

    path = config_file(tmp_path, "p.yaml", offline_server.url)
    with Session(config_path=path) as session:
        policy = session.policy
        assert [r.name for r in policy.rules] == [
            "rate_limit_429",
            "latency_high",
            "error_rate_5percent",
        ]
        config_file(
            tmp_path,
            "p.yaml",
            offline_server.url,
            "limits: {rps: {chat: 1}, max_wait_s: 0}\ndegradation: {enabled: false}\n",
        )
        session.reload()
        assert session.policy is not policy and session.policy.rules == []
        session.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(QuotaExceededError, match="1 requests/s"):
            session.chat([{"role": "user", "content": "hi"}])  # the new rate applies at once
        assert offline_server.stats_snapshot()["requests"] == 1


def test_a_bad_file_on_reload_changes_nothing(keyed, tmp_path, offline_server):
    path = config_file(
        tmp_path, "good.yaml", offline_server.url, "context: {max_history_messages: 6}\n"
    )
    with Session(config_path=path) as session:
        before = session.config
        bad = tmp_path / "bad.yaml"
        bad.write_text("context: {max_history_mesages: 4}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="max_history_mesages"):
            session.reload(str(bad))
        assert session.config is before and session.history.max_messages == 6


def test_memory_switch_governs_retrieval_and_indexing(keyed, tmp_path, offline_server):
    path = config_file(
        tmp_path, "m.yaml", offline_server.url, "context: {rag: {min_score: -1.0}}\n"
    )
    with Session(config_path=path) as session:
        session.memory.add_cell("fib = lambda n: n if n < 2 else fib(n - 1) + fib(n - 2)")
        assert session.memory.flush()
        request = CellRequest("how does fib work?", "main", "markdown", {})
        assert session.prepare(request.text, request).flags == ["memory: 1 cell"]

        session.reload(memory=False)  # what `%config MiraiMagics.memory_enabled = False` does
        prepared = session.prepare(request.text, request)
        assert prepared.flags == [] and len(prepared.messages) == 2  # system + user only
        assert not session.memory_enabled

        session.reload(memory=True)
        assert session.prepare(request.text, request).flags == ["memory: 1 cell"]


def test_prompt_tokens_are_counted_once_and_match_the_client_estimate(keyed, offline_server):
    from mirai_magics.config import parse_config
    from mirai_magics.tokens import count_messages

    with Session(parse_config(f"endpoint: {{base_url: '{offline_server.url}'}}")) as session:
        request = CellRequest("count me", "main", "markdown", {}, memory=False)
        prepared = session.prepare("count me", request)
        assert prepared.prompt_tokens == count_messages(prepared.messages)[0]
        reply = session.chat(prepared.messages, "main", **prepared.send_kwargs())
        cap = reply.record.params["max_tokens"]
        assert reply.record.tokens_estimated == prepared.prompt_tokens + cap
