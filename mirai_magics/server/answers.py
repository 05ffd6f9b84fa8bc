"""Deterministic chat answers of the offline server: text, token usage and response objects.

Pure functions: given a request body they always give the same answer (unless the
caller passes a ``variant``), so tests can compute the expected text themselves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from ..client.routing import ROUTER_TAG
from ..text import clip
from . import images
from .instances import answer_schema, typed_answer

FINGERPRINT = "mirai-offline"
REASONING_PREFIXES = ("o1", "o3", "o4")
_JSON_WORD = re.compile(r"\bjson\b", re.IGNORECASE)
_SYSTEM_ROLES = ("system", "developer")


def message_text(content: object) -> str:
    """Text of a message ``content``: a string, or a list of parts with ``type: text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def last_user_text(messages: list[dict]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return message_text(msg.get("content"))
    return ""


def system_text(messages: list[dict]) -> str:
    parts = [message_text(m.get("content")) for m in messages if m.get("role") in _SYSTEM_ROLES]
    return "\n".join(parts)


def one_line(text: str) -> str:
    return clip(text)


def is_reasoning_model(model: str) -> bool:
    return model.startswith(REASONING_PREFIXES)


def wants_json(body: dict) -> bool:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return True
    return bool(_JSON_WORD.search(system_text(body["messages"])))


def wants_code(body: dict) -> bool:
    return "fenced code block" in system_text(body["messages"]).lower()


def _json_answer(model: str, last: str, n_messages: int, variant: str | None) -> str:
    obj: dict = {"offline": True, "model": model, "echo": last[:120], "messages": n_messages}
    if variant:
        obj["variant"] = variant
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _code_answer(last: str) -> str:
    topic = one_line(last)[:60].replace("\\", "/").replace('"', "'")
    return (
        "Here is an offline placeholder (the mirai offline server does not write real code):\n\n"
        "```python\n"
        "def offline_answer():\n"
        f'    """Offline placeholder for: {topic}"""\n'
        "    return 42\n"
        "```"
    )


def _markdown_answer(model: str, last: str, n_messages: int) -> str:
    return (
        f"**Offline answer** from the mirai offline server (model `{model}`, "
        f"{n_messages} messages in context).\n\nYou said: {one_line(last)[:300]}"
    )


def _route_answer(last: str) -> str:
    """A routing request (`auto` with ``routing.classifier: fast``): the offline stand-in for
    an intent classifier is the local rules, and the answer says it is offline."""
    from ..client.routing import LocalClassifier

    route = LocalClassifier.builtin().classify(last)
    obj = {"profile": route.profile, "reason": route.reason, "offline": True}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def chat_answer(body: dict, variant: str | None = None, schema_break: str | None = None) -> str:
    """The full (untruncated) answer for a validated chat request body; a ``json_schema``
    response format gets an instance of its schema, broken when the last user message
    contains ``schema_break`` (the fault)."""
    messages = body["messages"]
    model = str(body["model"])
    last = last_user_text(messages)
    schema = answer_schema(body)
    if schema is not None:
        return typed_answer(schema, broken=bool(schema_break) and schema_break in last)
    if wants_json(body) and system_text(messages).startswith(ROUTER_TAG):
        return _route_answer(last)
    if wants_json(body):
        return _json_answer(model, last, len(messages), variant)
    text = _code_answer(last) if wants_code(body) else _markdown_answer(model, last, len(messages))
    text += images.summary(messages[-1:])  # what the last message showed, for tests
    return f"{text} [variant {variant}]" if variant else text


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(messages: list[dict]) -> int:
    """Text at 4 characters a token, images by the tile rule, as the API counts them."""
    from ..tokens import message_image_tokens

    texts = sum(count_tokens(message_text(m.get("content"))) + 4 for m in messages)
    return texts + sum(message_image_tokens(m) for m in messages) + 3


def completion_tokens(answer: str) -> int:
    return max(1, count_tokens(answer))


def token_limit(body: dict) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def truncate(answer: str, limit: int | None) -> tuple[str, str]:
    """Cut ``answer`` to about ``limit`` tokens; returns (text, finish_reason)."""
    if limit is None or completion_tokens(answer) <= limit:
        return answer, "stop"
    return answer[: max(1, limit) * 4], "length"


def usage(body: dict, answer: str) -> dict:
    prompt = prompt_tokens(body["messages"])
    completion = completion_tokens(answer)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_object(body: dict, cid: str, created: int, answer: str, finish: str) -> dict:
    message = {"role": "assistant", "content": answer, "refusal": None, "annotations": []}
    return message_object(body, cid, created, message, finish, answer)


def message_object(
    body: dict, cid: str, created: int, message: dict, finish: str, counted: str
) -> dict:
    """A chat completion holding ``message``; ``counted``: the text its usage counts."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": body["model"],
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage(body, counted),
    }


def split_for_stream(text: str, words_per_chunk: int = 3) -> list[str]:
    """Split ``text`` into pieces of a few words each; their concatenation is ``text``."""
    words = [w for w in re.split(r"(?<=\s)(?=\S)", text) if w]
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def stream_chunks(
    body: dict,
    cid: str,
    created: int,
    answer: str,
    finish: str,
    deltas: Sequence[dict] = (),
    counted: str | None = None,
) -> list[dict]:
    """The ``chat.completion.chunk`` objects streaming ``answer``, then ``deltas`` (tool-call
    fragments, ``tools.call_deltas``), the finish, and a usage chunk if asked (counting
    ``counted``; default: ``answer``)."""
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        obj = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            obj["usage"] = None
        return obj

    rest = list(deltas)
    first: dict = {"role": "assistant", "content": "", "refusal": None}
    if rest and not answer:  # as OpenAI: no text, and the first tool-call fragment rides along
        first = {"role": "assistant", "content": None, **rest.pop(0), "refusal": None}
    chunks = [chunk(first)]
    chunks += [chunk({"content": piece}) for piece in split_for_stream(answer)]
    chunks += [chunk(delta) for delta in rest]
    chunks.append(chunk({}, finish))
    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = usage(body, answer if counted is None else counted)
        chunks.append(last)
    return chunks


def sse_events(chunks: list[dict]) -> list[bytes]:
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    return [*events, b"data: [DONE]\n\n"]
