"""The OpenAI endpoints of the offline server: request validation and response payloads.

No I/O here: each function takes a parsed JSON body and returns the JSON object
to answer with (or SSE events), raising :class:`ApiError` like the real API would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import answers, images, tools
from .embeddings import MAX_DIMENSIONS, default_dimensions, embeddings_object
from .errors import ApiError, invalid_json

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "o1",
    "o3-mini",
    "text-embedding-3-large",
    "text-embedding-3-small",
)
MODELS_CREATED = 1_700_000_000


@dataclass
class SseBody:
    """A streamed answer: the encoded ``data: ...`` events, ``[DONE]`` last."""

    events: list[bytes]


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_json() from exc
    if not isinstance(body, dict):
        raise invalid_json()
    return body


def _require_model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    return model


def _check_messages(body: dict) -> None:
    if "messages" not in body:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        raise ApiError(
            400,
            "Invalid type for 'messages': expected an array.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(
                400,
                f"Invalid 'messages[{i}]': expected an object with a 'role'.",
                param=f"messages[{i}]",
                code="invalid_type",
            )


def _check_reasoning_params(body: dict, model: str) -> None:
    if not answers.is_reasoning_model(model):
        return
    if body.get("max_tokens") is not None:
        raise ApiError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and value != 1:
            raise ApiError(
                400,
                f"Unsupported value: '{name}' does not support {value} with this model. "
                "Only the default (1) value is supported.",
                param=name,
                code="unsupported_value",
            )


def validate_chat(body: dict) -> None:
    model = _require_model(body)
    _check_messages(body)
    _check_reasoning_params(body, model)
    images.described(body["messages"])  # 400 for an image part that does not decode
    tools.check_tools(body)


def chat(
    body: dict,
    cid: str,
    created: int,
    variant: str | None,
    answered_by: str | None = None,
    schema_break: str | None = None,
) -> dict | SseBody:
    """A chat completion (or its SSE stream) for a validated request body; ``answered_by``:
    the ``model`` the response reports instead of the requested one (fault ``answer_model``);
    ``schema_break``: fault of the same name."""
    called = tools.tool_answer(body, cid)
    full = "" if called is not None else answers.chat_answer(body, variant, schema_break)
    text, finish = answers.truncate(full, answers.token_limit(body))
    if answered_by:
        body = {**body, "model": answered_by}
    if called is not None and body.get("stream") is True:
        return SseBody(answers.sse_events(tools.tool_call_chunks(body, cid, created, called)))
    if called is not None:  # a request with tools whose prompt says "call NAME"
        return tools.tool_call_object(body, cid, created, called)
    if body.get("stream") is True:
        chunks = answers.stream_chunks(body, cid, created, text, finish)
        return SseBody(answers.sse_events(chunks))
    return answers.completion_object(body, cid, created, text, finish)


def _embedding_inputs(body: dict) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and not value:
        raise ApiError(
            400, "'input' must not be an empty array.", param="input", code="empty_array"
        )
    raise ApiError(
        400,
        "'input' must be a string or an array of strings (offline server).",
        param="input",
        code="invalid_type",
    )


def _dimensions(body: dict, model: str) -> int:
    dims = body.get("dimensions")
    if dims is None:
        return default_dimensions(model)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        raise ApiError(
            400,
            f"Invalid 'dimensions': must be an integer in 1..{MAX_DIMENSIONS}.",
            param="dimensions",
            code="invalid_value",
        )
    return dims


def embeddings(body: dict, faults: Any = None) -> tuple[dict, int]:
    """The embeddings response and the number of inputs embedded (``faults``: embed_* quirks)."""
    model = _require_model(body)
    texts = _embedding_inputs(body)
    _refuse_inputs(texts, faults)
    dims = getattr(faults, "embed_dims", None) or _dimensions(body, model)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(
            400,
            "Invalid 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    return embeddings_object(texts, model, dims, fmt), len(texts)


def _refuse_inputs(texts: list[str], faults: Any) -> None:
    """Refuse the whole request, as providers do, when one input is too long or refused."""
    limit = getattr(faults, "embed_max_chars", None)
    marker = getattr(faults, "embed_refuse", None)
    for text in texts:
        if limit is not None and len(text) > limit:
            raise ApiError(
                400,
                "This model's maximum context length was exceeded (offline server limit).",
                param="input",
                code="context_length_exceeded",
            )
        if marker and marker in text:
            raise ApiError(400, "This input was refused (offline server fault).", param="input")


def _model_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "mirai-offline"}


def list_models(models: tuple[str, ...] = MODELS) -> dict:
    return {"object": "list", "data": [_model_object(m) for m in models]}


def get_model(name: str, models: tuple[str, ...] = MODELS) -> dict:
    if name not in models:
        raise ApiError(
            404, f"The model '{name}' does not exist", param="model", code="model_not_found"
        )
    return _model_object(name)
