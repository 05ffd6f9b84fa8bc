"""Tools in chat requests, as the offline server checks and answers them (pure).

A request with ``tools`` whose last user message says ``call NAME`` (NAME one of its tools)
is answered with one deterministic tool call: id ``call_<completion id>``, each required
parameter filled with a value of its type (``"offline"``, ``0``, ``false``, ``[]``, ``{}``).
Any other request with tools is answered with text, as without them. Never streamed.
"""

from __future__ import annotations

import json
import re

from .answers import last_user_text, message_object
from .errors import ApiError

_CALL = re.compile(r"\bcall\s+`?([A-Za-z_][\w-]*)`?", re.IGNORECASE)
_VALUES = {"string": "offline", "integer": 0, "number": 0, "boolean": False, "array": []}


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


def tool_call(body: dict, cid: str) -> dict | None:
    """The tool call the prompt asks for (``call NAME``), or None to answer with text."""
    functions = {t["function"]["name"]: t["function"] for t in body.get("tools") or []}
    match = _CALL.search(last_user_text(body["messages"])) if functions else None
    if match is None or match.group(1) not in functions:
        return None
    function = functions[match.group(1)]
    arguments = json.dumps(_arguments(function.get("parameters") or {}), sort_keys=True)
    return {
        "id": f"call_{cid.rsplit('-', 1)[-1]}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _arguments(parameters: dict) -> dict:
    properties = parameters.get("properties") or {}
    return {
        name: _VALUES.get((properties.get(name) or {}).get("type"), {})
        for name in parameters.get("required") or []
    }


def tool_call_object(body: dict, cid: str, created: int, call: dict) -> dict:
    """A chat completion whose message holds ``call`` (finish reason ``tool_calls``)."""
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    return message_object(body, cid, created, message, "tool_calls", json.dumps(call))
