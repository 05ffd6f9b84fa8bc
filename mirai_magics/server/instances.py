"""Minimal JSON instances of a JSON schema: the offline server's answer to a request with
``response_format: {type: json_schema}``.

Deterministic, and valid for the schemas structured outputs allow: every property of an
object, strings ``"…"`` (or a sample of their ``format``), numbers 0 (or their minimum),
booleans true, arrays of one item, the first ``enum`` value, ``const``, the first
non-null branch of ``anyOf``, ``$ref`` followed. Recursion stops at ``MAX_DEPTH`` (an
empty array there). ``typed_answer(schema, broken=True)`` does not match (fault
``schema_break``): its first property has the wrong type.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 8
TEXT = "…"
FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "offline@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def answer_schema(body: dict) -> dict | None:
    """The JSON schema a chat request asks its answer to match, or None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def instance(schema: Any, root: dict | None = None, depth: int = 0) -> Any:
    """A small value matching ``schema`` (``root`` resolves ``$ref``)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if isinstance(schema.get("$ref"), str):
        return instance(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return instance(_not_null(branches), root, depth + 1)
    kind = _kind(schema)
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return _array(schema, root, depth)
    if kind in ("integer", "number"):
        return _number(schema)
    return {"boolean": True, "null": None}.get(kind, _string(schema))


def typed_answer(schema: dict, broken: bool = False) -> str:
    """The answer text: a matching instance as compact JSON; ``broken``: its first property
    of the wrong type (0 for a string, else a string), or not JSON when it has none."""
    value = instance(schema)
    if broken:
        if not isinstance(value, dict) or not value:
            return "offline fault schema_break: this answer is not JSON"
        first = next(iter(value))
        value = {**value, first: 0 if isinstance(value[first], str) else TEXT}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _array(schema: dict, root: dict, depth: int) -> list:
    if isinstance(schema.get("prefixItems"), list):
        return [instance(sub, root, depth + 1) for sub in schema["prefixItems"]]
    if depth >= MAX_DEPTH:
        return []
    count = max(1, int(schema.get("minItems") or 0))
    return [instance(schema.get("items") or {}, root, depth + 1) for _ in range(count)]


def _number(schema: dict) -> int:
    if isinstance(schema.get("minimum"), int | float):
        return int(-(-schema["minimum"] // 1))  # the smallest whole number allowed
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        return int(schema["exclusiveMinimum"] // 1) + 1
    return 0


def _string(schema: dict) -> str:
    sample = FORMATS.get(str(schema.get("format")), TEXT)
    return sample * max(1, int(schema.get("minLength") or 0)) if sample == TEXT else sample


def _kind(schema: dict) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def _not_null(branches: list) -> Any:
    for branch in branches:
        if not (isinstance(branch, dict) and branch.get("type") == "null"):
            return branch
    return branches[0]


def _resolve(root: dict, ref: str) -> Any:
    found: Any = root
    for part in ref.removeprefix("#/").split("/"):
        found = found.get(part) if isinstance(found, dict) else None
    return found
