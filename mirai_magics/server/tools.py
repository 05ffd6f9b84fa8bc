"""Tools in chat requests, as the offline server checks and answers them (pure).

A request with ``tools`` whose last user message says ``call NAME`` (NAME one of its tools)
is answered with a deterministic tool call: id ``call_<completion number>``, each required
parameter filled with a value of its type (``"offline"``, ``0``, ``false``, ``[]``, ``{}``).
Each tool the prompt names is called once, in the order named (ids ``call_<n>``,
``call_<n>_2``, …), the first only with ``parallel_tool_calls: false``. ``say "TEXT"`` in the
prompt puts TEXT before the calls, as the message content. Any other request with tools is
answered with text, as without them. Streamed, the calls come as OpenAI streams them: each
call's first fragment holds its index, id, type and name with empty arguments (the first
call's rides on the role chunk when there is no text), then the arguments in pieces, then
finish reason ``tool_calls`` and the usage chunk.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .answers import last_user_text, message_object, stream_chunks
from .errors import ApiError

_CALL = re.compile(r"\bcall\s+`?([A-Za-z_][\w-]*)`?", re.IGNORECASE)
_SAY = re.compile(r"\bsay\s+\"([^\"\n]+)\"", re.IGNORECASE)
_VALUES = {"string": "offline", "integer": 0, "number": 0, "boolean": False, "array": []}
ARGUMENT_PIECE = 4  # characters of arguments per streamed fragment (about a token)


@dataclass(frozen=True)
class ToolAnswer:
    """An answer that asks for tool calls: its text (often none) and the calls."""

    text: str
    calls: list[dict]

    @property
    def counted(self) -> str:
        """What its usage counts: the text and each call's JSON."""
        return self.text + "".join(json.dumps(call) for call in self.calls)


def check_tools(body: dict) -> None:
    """400, like the API, for ``tools`` that are not a list of function specs with names."""
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, "Invalid type for 'tools': expected an array.", param="tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(
                400,
                f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}]",
                code="missing_required_parameter",
            )


def tool_answer(body: dict, cid: str) -> ToolAnswer | None:
    """The tool calls the prompt asks for (``call NAME``), or None to answer with text."""
    functions = {t["function"]["name"]: t["function"] for t in body.get("tools") or []}
    prompt = last_user_text(body["messages"]) if functions else ""
    named = [m.group(1) for m in _CALL.finditer(prompt) if m.group(1) in functions]
    names = list(dict.fromkeys(named))[: 1 if body.get("parallel_tool_calls") is False else None]
    if not names:
        return None
    number = cid.rsplit("-", 1)[-1]
    calls = [
        _call(functions[name], f"call_{number}" + (f"_{i + 1}" if i else ""))
        for i, name in enumerate(names)
    ]
    said = _SAY.search(prompt)
    return ToolAnswer(said.group(1) if said else "", calls)


def _call(function: dict, call_id: str) -> dict:
    arguments = json.dumps(_arguments(function.get("parameters") or {}), sort_keys=True)
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _arguments(parameters: dict) -> dict:
    properties = parameters.get("properties") or {}
    return {
        name: _VALUES.get((properties.get(name) or {}).get("type"), {})
        for name in parameters.get("required") or []
    }


def tool_call_object(body: dict, cid: str, created: int, answer: ToolAnswer) -> dict:
    """A chat completion whose message holds the calls (finish reason ``tool_calls``)."""
    message = {
        "role": "assistant",
        "content": answer.text or None,
        "refusal": None,
        "tool_calls": answer.calls,
    }
    return message_object(body, cid, created, message, "tool_calls", answer.counted)


def tool_call_chunks(body: dict, cid: str, created: int, answer: ToolAnswer) -> list[dict]:
    """The ``chat.completion.chunk`` objects streaming ``answer`` as OpenAI does."""
    deltas = [delta for i, call in enumerate(answer.calls) for delta in call_deltas(i, call)]
    return stream_chunks(body, cid, created, answer.text, "tool_calls", deltas, answer.counted)


def call_deltas(index: int, call: dict) -> list[dict]:
    """One call's stream deltas: its head (id, type, name, no arguments), then the pieces."""
    function = call["function"]
    head = {"name": function["name"], "arguments": ""}
    first = {"index": index, "id": call["id"], "type": "function", "function": head}
    raw = function["arguments"]
    pieces = [raw[i : i + ARGUMENT_PIECE] for i in range(0, len(raw), ARGUMENT_PIECE)]
    rest = [{"index": index, "function": {"arguments": piece}} for piece in pieces]
    return [{"tool_calls": [fragment]} for fragment in (first, *rest)]
