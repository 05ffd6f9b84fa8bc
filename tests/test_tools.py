"""Tools from the Python API: specs on the wire, tool calls back as data, nothing executed."""

from __future__ import annotations

import pytest

from mirai_magics.errors import ClientRequestError, UsageError
from mirai_magics.tools import tool_spec

KEY = "sk-test-tools-0123456789abcdef"
NO_MEMORY = "context: {rag: {enabled: false}}\n"
RAN: list[str] = []


def get_weather(city: str, days: int = 1, metric: bool = True) -> str:
    """The weather forecast for a city.

    Longer notes the model does not need.
    """
    RAN.append(city)
    return "sunny"


SPEC = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["word", "limit"],
        },
    },
}


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def test_a_function_becomes_a_json_spec_from_its_signature_and_docstring():
    assert tool_spec(get_weather) == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "default": 1},
                    "metric": {"type": "boolean", "default": True},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    assert tool_spec(SPEC) is SPEC
    with pytest.raises(UsageError, match="takes functions or JSON specs, not int"):
        tool_spec(3)  # type: ignore[arg-type]


def test_tools_are_passed_through_and_tool_calls_come_back_unexecuted(make_session, offline_server):
    session = make_session(NO_MEMORY)
    reply = session.chat("Please call get_weather for me.", tools=[get_weather, SPEC])
    body = last_body(offline_server)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "lookup"]
    assert body["tools"][0] == tool_spec(get_weather)
    assert reply.tool_calls == [
        {"id": "call_1", "name": "get_weather", "arguments": {"city": "offline"}}
    ]
    assert reply.text == "" and reply.record.finish_reason == "tool_calls"
    assert RAN == []  # nothing ran the function

    reply = session.chat("call lookup", tools=[SPEC], tool_choice="auto")
    assert last_body(offline_server)["tool_choice"] == "auto"
    assert reply.tool_calls[0]["arguments"] == {"limit": 0, "word": "offline"}


def test_without_a_call_request_the_answer_is_text_and_tools_stay_optional(
    make_session, offline_server
):
    session = make_session(NO_MEMORY)
    reply = session.chat("What is the weather like?", tools=[get_weather])
    assert reply.tool_calls == [] and reply.text.startswith("**Offline answer**")
    plain = session.chat("Hello")
    assert "tools" not in last_body(offline_server) and plain.tool_calls == []


def test_the_server_refuses_tools_without_a_function_name(make_session):
    session = make_session(NO_MEMORY)
    with pytest.raises(ClientRequestError, match=r"tools\[0\]\.function\.name"):
        session.chat("call x", tools=[{"type": "function", "function": {}}])


def test_the_readme_tools_example_runs_as_written():
    from test_images import readme_block

    block = readme_block("tools")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    expected = block.rsplit("# ", 1)[1].strip()
    assert repr(namespace["reply"].tool_calls) == expected
