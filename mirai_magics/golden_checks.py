"""Golden prompt checks: validating an entry's checks, and checking an answer (all pure).

Checks: ``contains`` / ``not_contains`` (a string or a list), ``regex`` (a pattern or a list,
searched anywhere), ``json_schema`` (a subset: type, enum, required, properties, items) and
``max_output_tokens``. :func:`check_problems` finds what a file gets wrong before any prompt
runs; :func:`check_answer` lists what an answer fails.
"""

from __future__ import annotations

import json
import re
from typing import Any

CHECKS = ("contains", "not_contains", "regex", "json_schema", "max_output_tokens")
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "number": (int, float),
    "integer": int,
}


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """JSON-schema subset: type, enum, required, properties, items."""
    expected = schema.get("type")
    if expected is not None and not _is_type(value, expected):
        return [f"{where}: expected {expected}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']!r}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def _is_type(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    for name in names:
        if name not in _TYPES:
            raise ValueError(f"json_schema: unsupported type {name!r}")
        if isinstance(value, bool) and name in ("number", "integer"):
            continue
        if isinstance(value, _TYPES[name]):
            return True
    return False


def check_answer(text: str, tokens_out: int | None, checks: dict[str, Any]) -> list[str]:
    """Every failed check as one line; empty when the answer passes."""
    failures = [f"missing {s!r}" for s in _listed(checks.get("contains")) if s not in text]
    failures += [f"contains {s!r}" for s in _listed(checks.get("not_contains")) if s in text]
    failures += [
        f"no match for /{p}/" for p in _listed(checks.get("regex")) if not re.search(p, text)
    ]
    cap = checks.get("max_output_tokens")
    if cap is not None and (tokens_out is None or tokens_out > cap):
        failures.append(f"{tokens_out} output tokens > {cap}")
    if "json_schema" in checks:
        failures += _json_failures(text, checks["json_schema"])
    return failures


def _json_failures(text: str, schema: dict[str, Any]) -> list[str]:
    from .text import parse_json

    try:
        value = parse_json(text)
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc.msg}"]
    try:
        return schema_errors(value, schema)
    except ValueError as exc:
        return [str(exc)]


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def check_problems(checks: dict[str, Any]) -> list[str]:
    """Wrong shapes, invalid regular expressions and unusable schemas among the checks."""
    problems = [
        f"{name} must be a string or a list of strings"
        for name in ("contains", "not_contains", "regex")
        if name in checks and not _is_text_list(checks[name])
    ]
    if _is_text_list(checks.get("regex")):
        problems += _regex_problems(_listed(checks.get("regex")))
    cap = checks.get("max_output_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
        problems.append("max_output_tokens must be an integer")
    if "json_schema" in checks:
        problems += schema_problems(checks["json_schema"])
    return problems


def schema_problems(schema: Any, where: str = "json_schema") -> list[str]:
    """What in a schema the JSON-schema subset of :func:`schema_errors` cannot use."""
    if not isinstance(schema, dict):
        return [f"{where} must be a mapping"]
    problems: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        problems += [
            f"{where}: unsupported type {n!r}"
            for n in names
            if not isinstance(n, str) or n not in _TYPES
        ]
    if not isinstance(schema.get("enum", []), list):
        problems.append(f"{where}.enum must be a list")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        problems.append(f"{where}.required must be a list of keys")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return [*problems, f"{where}.properties must be a mapping"]
    for key, sub in properties.items():
        problems += schema_problems(sub, f"{where}.properties.{key}")
    if "items" in schema:
        problems += schema_problems(schema["items"], f"{where}.items")
    return problems


def _regex_problems(patterns: list[str]) -> list[str]:
    problems = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"regex {pattern!r} is not a valid regular expression ({exc})")
    return problems


def _is_text_list(value: Any) -> bool:
    """A string, or a list of strings and numbers (YAML reads `contains: [42]` as a number)."""
    items = value if isinstance(value, list) else [value]
    return all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items)
