"""Tools from the Python API: specs on the wire, tool calls back as data, nothing executed."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI
from openai.types.chat.chat_completion_chunk import (
    ChoiceDeltaToolCall as Fragment,
)
from openai.types.chat.chat_completion_chunk import (
    ChoiceDeltaToolCallFunction as Function,
)

from mirai_magics.errors import ClientRequestError, UsageError
from mirai_magics.session import StreamRestart
from mirai_magics.tools import ToolCallParts, tool_spec

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


def asked(reply) -> list[tuple[str, object]]:
    """What the model asked for, without the call ids (each completion has its own)."""
    return [(call["name"], call["arguments"]) for call in reply.tool_calls]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


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
    with pytest.raises(UsageError, match="tool '<lambda>' has no name the API takes"):
        tool_spec(lambda city: city)  # the API would refuse "<lambda>" with an HTTP 400


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


def test_the_server_streams_a_tool_call_as_openai_does_over_the_real_sdk(offline_server):
    sdk = OpenAI(api_key=KEY, base_url=offline_server.url, max_retries=0)
    request = {"model": "gpt-4o", "messages": user("call lookup"), "tools": [SPEC]}
    whole = sdk.chat.completions.create(**request)
    chunks = list(
        sdk.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    first = chunks[0].choices[0].delta
    assert (first.role, first.content) == ("assistant", None)
    (head,) = first.tool_calls
    assert (head.index, head.id, head.type) == (0, "call_2", "function")
    assert (head.function.name, head.function.arguments) == ("lookup", "")
    pieces = [c.choices[0].delta.tool_calls for c in chunks[1:-2]]
    assert len(pieces) > 2 and all(p[0].id is None and p[0].function.name is None for p in pieces)
    arguments = "".join(p[0].function.arguments for p in pieces)
    assert json.loads(arguments) == json.loads(
        whole.choices[0].message.tool_calls[0].function.arguments
    )
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_stream_chat_returns_the_tool_calls_chat_returns(make_session, offline_server):
    session = make_session(NO_MEMORY)
    prompt = user("Please call get_weather, then call lookup.")
    whole = session.chat(prompt, tools=[get_weather, SPEC])
    streamed = list(session.stream_chat(prompt, tools=[get_weather, SPEC]))
    reply = streamed[-1]
    body = last_body(offline_server)
    assert body["stream"] is True and [t["function"]["name"] for t in body["tools"]] == [
        "get_weather",
        "lookup",
    ]
    assert (
        asked(reply)
        == asked(whole)
        == [
            ("get_weather", {"city": "offline"}),
            ("lookup", {"limit": 0, "word": "offline"}),
        ]
    )
    assert [call["id"] for call in reply.tool_calls] == ["call_2", "call_2_2"]
    assert streamed[:-1] == [] and reply.text == ""  # no text was shown
    assert reply.record.finish_reason == "tool_calls" and reply.record.tokens_out
    assert RAN == []

    one = session.stream_chat(prompt, tools=[get_weather, SPEC], parallel_tool_calls=False)
    assert asked(list(one)[-1]) == [("get_weather", {"city": "offline"})]


def test_a_stream_with_text_before_its_tool_call_keeps_both(make_session):
    session = make_session(NO_MEMORY)
    prompt = user('Say "Let me look that up for you." and call get_weather.')
    streamed = list(session.stream_chat(prompt, tools=[get_weather]))
    pieces = [p for p in streamed[:-1] if isinstance(p, str)]
    assert len(pieces) > 1 and not any(isinstance(p, StreamRestart) for p in streamed)
    reply = streamed[-1]
    assert "".join(pieces) == reply.text == "Let me look that up for you."
    assert asked(reply) == [("get_weather", {"city": "offline"})]
    whole = session.chat(prompt, tools=[get_weather])
    assert (whole.text, asked(whole)) == (reply.text, asked(reply))
    assert whole.record.finish_reason == reply.record.finish_reason == "tool_calls"
    assert whole.record.tokens_out == reply.record.tokens_out


def test_tool_call_fragments_are_joined_by_index_whatever_the_provider_repeats():
    parts = ToolCallParts()
    parts.add([Fragment(index=1, id="b", type="function", function=Function(name="second"))])
    parts.add([Fragment(index=0, id="a", function=Function(name="first", arguments='{"x"'))])
    parts.add(
        [
            Fragment(index=0, id="a", function=Function(name="first", arguments=": 1}")),
            Fragment(index=1, function=Function(arguments="not json")),
        ]
    )
    parts.add(None)
    answer = parts.answer("text")
    assert answer == "text" and answer.tool_calls == (
        {"id": "a", "name": "first", "arguments": {"x": 1}},
        {"id": "b", "name": "second", "arguments": "not json"},
    )
    assert type(ToolCallParts().answer("plain")) is str


def unindexed(**fields) -> Fragment:
    """A fragment as the SDK builds it from a chunk with no ``index`` (Ollama, Gemini's
    OpenAI-compatible endpoint): it does not validate a response, so the index is None."""
    return Fragment.model_construct(index=None, **fields)


def test_fragments_without_an_index_are_joined_by_id_in_the_order_the_calls_began():
    parts = ToolCallParts()
    parts.add([unindexed(id="a", function=Function(name="first", arguments='{"x"'))])
    parts.add([unindexed(function=Function(arguments=": 1}"))])  # no id: the last call's
    parts.add([unindexed(id="b", type="function", function=Function(name="second"))])
    parts.add([unindexed(id="b", function=Function(name="second", arguments="{}"))])
    answer = parts.answer("")
    assert answer.tool_calls == (
        {"id": "a", "name": "first", "arguments": {"x": 1}},
        {"id": "b", "name": "second", "arguments": {}},
    )


def test_a_new_id_is_a_new_call_whatever_index_the_server_gives_it():
    mixed = ToolCallParts()  # an index on one call, none on the next
    mixed.add([Fragment(index=0, id="a", function=Function(name="first", arguments="{}"))])
    mixed.add([unindexed(id="b", function=Function(name="second", arguments='{"y": 2}'))])
    reused = ToolCallParts()  # parallel calls all numbered 0
    reused.add([Fragment(index=0, id="a", function=Function(name="first", arguments="{}"))])
    reused.add([Fragment(index=0, id="b", function=Function(name="second", arguments='{"y"'))])
    reused.add([Fragment(index=0, function=Function(arguments=": 2}"))])
    for parts in (mixed, reused):
        assert parts.answer("").tool_calls == (
            {"id": "a", "name": "first", "arguments": {}},
            {"id": "b", "name": "second", "arguments": {"y": 2}},
        )
