"""Tools from the Python API: functions → JSON tool specs, and tool calls back as data.

``Session.chat(prompt, tools=[get_weather, {...}])`` sends each Python function as a
``{"type": "function", "function": {name, description, parameters}}`` spec (parameters from
its signature via pydantic, description from the first docstring paragraph); a dict is
sent as written. The reply's ``tool_calls`` list what the model asked for; nothing runs them.
A streamed answer's calls arrive in fragments (id and name first, then pieces of the
arguments, each tagged with the call's index, or only its id where a server sends no
index); ``ToolCallParts`` joins them into the same ``{"id", "name", "arguments"}`` dicts a
whole answer gives (``calls_of``).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Answer(str):
    """An answer's text that carries the tool calls the model asked for."""

    tool_calls: tuple[dict[str, Any], ...]

    def __new__(cls, text: str, tool_calls: Sequence[dict[str, Any]] = ()) -> Answer:
        self = super().__new__(cls, text)
        self.tool_calls = tuple(tool_calls)
        return self


def with_calls(text: str, calls: Sequence[dict[str, Any]]) -> str:
    """``text`` as an ``Answer`` carrying ``calls``, or the plain text when there are none."""
    return Answer(text, calls) if calls else text


def tool_specs(tools: Sequence[Callable[..., Any] | dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON specs of ``tools`` (functions converted, dicts as given)."""
    return [tool_spec(tool) for tool in tools]


def tool_spec(tool: Callable[..., Any] | dict[str, Any]) -> dict[str, Any]:
    """One tool as the API takes it; anything but a function or a dict is one line."""
    if isinstance(tool, dict):
        return tool
    if not callable(tool) or not hasattr(tool, "__name__"):
        raise UsageError(
            f"tools=[…] takes functions or JSON specs, not {type(tool).__name__}",
            hint='pass a def, or {"type": "function", "function": {"name": …}}',
        )
    if not _TOOL_NAME.fullmatch(tool.__name__):  # the API takes [A-Za-z0-9_-]{1,64}
        raise UsageError(
            f"tool {tool.__name__!r} has no name the API takes (letters, digits, _ or -)",
            hint="pass a def with a name, not a lambda or a partial",
        )
    function: dict[str, Any] = {"name": tool.__name__, "parameters": parameters_of(tool)}
    doc = inspect.getdoc(tool)
    if doc:
        function["description"] = doc.split("\n\n", 1)[0].strip()
    return {"type": "function", "function": function}


def parameters_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of ``fn``'s arguments (pydantic's, without its titles)."""
    from pydantic import TypeAdapter

    try:
        schema = TypeAdapter(fn).json_schema()
    except Exception as exc:  # an annotation pydantic cannot express as JSON schema
        raise UsageError(
            f"tool {fn.__name__}: its arguments have no JSON schema ({exc})",
            hint="annotate them with str, int, float, bool, lists or pydantic models",
        ) from None
    return _untitled(schema)


def _untitled(schema: Any) -> Any:
    """``schema`` without pydantic's generated ``title`` keys (noise for the model)."""
    if isinstance(schema, dict):
        kept = {k: v for k, v in schema.items() if k != "title" or not isinstance(v, str)}
        return {k: _untitled(v) for k, v in kept.items()}
    if isinstance(schema, list):
        return [_untitled(item) for item in schema]
    return schema


def calls_of(sdk_calls: Any) -> list[dict[str, Any]]:
    """The SDK's ``message.tool_calls`` as ``{"id", "name", "arguments"}`` dicts; arguments
    that are not JSON stay a string."""
    out = []
    for call in sdk_calls or []:
        function = getattr(call, "function", None)
        raw = getattr(function, "arguments", "") or ""
        out.append(call_dict(call.id, getattr(function, "name", ""), raw))
    return out


def call_dict(call_id: str, name: str, raw: str) -> dict[str, Any]:
    """One tool call as data; ``raw`` arguments that are not JSON stay a string."""
    try:
        arguments: Any = json.loads(raw) if raw else {}
    except ValueError:
        arguments = raw
    return {"id": call_id, "name": name, "arguments": arguments}


@dataclass
class _Call:
    """One streamed tool call being joined."""

    index: int | None
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallParts:
    """The tool calls of a stream, joined from ``delta.tool_calls`` fragments.

    A fragment belongs to the call with its id, else to the call of its ``index``; a new id
    begins a new call, even under an index already used (a server that numbers parallel
    calls all 0). Without an index (Ollama, Gemini's OpenAI-compatible endpoint: the SDK
    gives None) a fragment without an id continues the last call. Calls come out in index
    order, or in the order they began when a server left an index out.
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []  # in the order they began
        self._by_index: dict[int, _Call] = {}  # index → its latest call
        self._last: _Call | None = None

    def add(self, fragments: Any) -> None:
        """Take one chunk's fragments. Id and name count once (OpenAI sends them in the
        first fragment; some compatible servers repeat them); arguments are appended."""
        for fragment in fragments or []:
            call_id = getattr(fragment, "id", None) or ""
            call = self._call(getattr(fragment, "index", None), call_id)
            function = getattr(fragment, "function", None)
            call.id = call.id or call_id
            call.name = call.name or getattr(function, "name", None) or ""
            call.arguments += getattr(function, "arguments", None) or ""
            self._last = call

    def _call(self, index: int | None, call_id: str) -> _Call:
        """The call a fragment with ``index`` and ``call_id`` belongs to (begun if new):
        the one with that id, else the latest of that index (no index: the last one),
        unless that has another id."""
        call = next((c for c in self._calls if call_id and c.id == call_id), None)
        if call is None:
            call = self._last if index is None else self._by_index.get(index)
            if call is not None and call_id and call.id:
                call = None  # a new id: a new call, even under an index already used
        if call is None:
            call = _Call(index)
            self._calls.append(call)
        if index is not None:
            self._by_index[index] = call
        return call

    def answer(self, text: str) -> str:
        """``text`` with the joined calls riding along (``with_calls``)."""
        calls = self._calls
        if all(call.index is not None for call in calls):
            calls = sorted(calls, key=lambda call: call.index or 0)  # stable within an index
        return with_calls(text, [call_dict(c.id, c.name, c.arguments) for c in calls])
