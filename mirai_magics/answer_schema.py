"""Typed answers: a pydantic model or a JSON-schema dict as the schema of an answer.

``AnswerSchema`` is what `%%mirai --schema NAME` and ``batch(..., schema=Model)`` send and
check: the ``response_format`` of OpenAI's structured outputs (``json_schema`` with
``strict: true``, so every object has ``additionalProperties: false`` and lists all its
properties as required — the openai SDK's own conversion when it is importable, else the
same rules here), and ``check(text)``, which gives the model instance (pydantic's
``model_validate_json``) or the dict (``jsonschema``), or one line naming the failing field:
``answer does not match Person: age: Input should be a valid integer``.

A dict schema is checked against the user's own schema (strictness is a wire rule of the
API, not a change of what the user asked for) with ``jsonschema``, imported on first use;
without it a dict schema is refused in one line (``pip install jsonschema``), never checked
half-way. Nothing here sends or shows anything.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import UsageError
from .text import clip, json_text

MESSAGE_LIMIT = 200
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")  # json_schema.name: ^[a-zA-Z0-9_-]{1,64}$
REASK = (
    "Your answer did not match the JSON schema {name}: {problem}. "
    "Answer again with only the JSON object, matching the schema exactly."
)


@dataclass(frozen=True)
class Checked:
    """An answer checked against a schema: ``data`` when it matches, else ``problem``."""

    name: str
    data: Any = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def error(self) -> str | None:
        """The one line a failure shows (None when the answer matched)."""
        return None if self.ok else f"answer does not match {self.name}: {self.problem}"

    def reask(self) -> str:
        """The user message of the one re-ask (`--retry-invalid`)."""
        return REASK.format(name=self.name, problem=self.problem)


@dataclass(frozen=True)
class AnswerSchema:
    """The schema of an answer: sent as ``wire`` (strict), checked with ``model`` or ``source``."""

    name: str
    wire: dict[str, Any]
    model: Any = None  # the pydantic model class; None: a JSON-schema dict
    source: dict[str, Any] | None = field(default=None, repr=False)

    def response_format(self) -> dict[str, Any]:
        """The request's ``response_format`` (JSON-safe: it goes into queued payloads too)."""
        spec = {"name": self.name, "schema": self.wire, "strict": True}
        return {"type": "json_schema", "json_schema": spec}

    def check(self, text: str) -> Checked:
        """The answer as a model instance / dict, or the problem with its first bad field."""
        if self.model is not None:
            return self._check_model(text)
        return self._check_dict(text)

    def _check_model(self, text: str) -> Checked:
        from pydantic import ValidationError

        try:
            return Checked(self.name, self.model.model_validate_json(json_text(text)))
        except ValidationError as exc:
            return Checked(self.name, problem=pydantic_problem(exc))

    def _check_dict(self, text: str) -> Checked:
        try:
            data = json.loads(json_text(text))
        except json.JSONDecodeError as exc:
            return Checked(self.name, problem=f"invalid JSON: {exc.msg} (line {exc.lineno})")
        problem = jsonschema_problem(self._validator, data)
        return Checked(self.name, data if problem is None else None, problem)

    @cached_property
    def _validator(self) -> Any:  # built once per schema, not once per batch row
        return _validator(self.source or self.wire)


def resolve_schema(name: str, namespace: Any) -> AnswerSchema:
    """`--schema NAME`: the model class or schema dict of that notebook name (one line if not)."""
    if namespace is None or not name.isidentifier() or name not in namespace:
        raise UsageError(
            f"--schema {name}: no such name in the notebook",
            hint="define the pydantic model (class Person(BaseModel): …) or the JSON-schema dict "
            "in a cell above",
        )
    return schema_of(namespace[name], name)


def schema_of(value: Any, name: str = "answer") -> AnswerSchema:
    """An AnswerSchema of a pydantic model class or a JSON-schema dict; else a UsageError."""
    if _is_model_class(value):
        return AnswerSchema(_wire_name(value.__name__), model_schema(value), model=value)
    if isinstance(value, dict):
        return _dict_schema(value, name)
    kind = type(value).__name__
    if _is_model_class(type(value)):
        raise UsageError(
            f"{name} is a {kind} instance, not a model class",
            hint=f"pass the class: --schema {kind}",
        )
    raise UsageError(
        f"{name} is of type {kind}, not a pydantic model class or a JSON-schema dict",
        hint="e.g. class Person(BaseModel): name: str; age: int",
    )


def _dict_schema(schema: dict[str, Any], name: str) -> AnswerSchema:
    if schema.get("type") != "object":
        raise UsageError(
            f'{name}: a typed answer\'s schema needs "type": "object" at its root',
            hint="wrap the value in an object with one property (structured outputs need it)",
        )
    _check_schema(schema, name)
    title = schema.get("title")
    label = title if isinstance(title, str) and title.strip() else name
    return AnswerSchema(_wire_name(label), strict_schema(schema), source=schema)


def _check_schema(schema: dict[str, Any], name: str) -> None:
    validator = _validator(schema)  # first: says in one line when jsonschema is missing
    from jsonschema.exceptions import SchemaError

    try:
        type(validator).check_schema(schema)
    except SchemaError as exc:
        raise UsageError(f"{name} is not a valid JSON schema: {clip(exc.message, 120)}") from None


def _validator(schema: dict[str, Any]) -> Any:
    try:
        from jsonschema import validators
    except ImportError:
        raise UsageError(
            "a JSON-schema dict needs the jsonschema package to check answers",
            hint="pip install jsonschema, or pass a pydantic model",
        ) from None
    return validators.validator_for(schema)(schema)


def model_schema(model: Any) -> dict[str, Any]:
    """The strict JSON schema of a pydantic model, as the openai SDK builds it."""
    try:
        try:
            from openai.lib._pydantic import to_strict_json_schema
        except ImportError:  # an SDK that moved it: the same rules, here
            return strict_schema(model.model_json_schema())
        return to_strict_json_schema(model)
    except (TypeError, ValueError, RuntimeError) as exc:  # PydanticInvalidForJsonSchema…
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(
            f"{getattr(model, '__name__', model)!s} has no JSON schema ({reason})",
            hint="give --schema a model whose fields are JSON types",
        ) from None


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A strict copy of ``schema`` (the caller's dict is left as it was)."""
    copied = copy.deepcopy(schema)
    try:
        from openai.lib._pydantic import _ensure_strict_json_schema
    except ImportError:
        return _strict(copied, copied)
    return _ensure_strict_json_schema(copied, path=(), root=copied)


def _strict(node: Any, root: dict[str, Any]) -> Any:
    """OpenAI's strict rules (the SDK's ``_ensure_strict_json_schema``), in place."""
    if not isinstance(node, dict):
        return node
    for key in ("$defs", "definitions"):
        for sub in (node.get(key) or {}).values():
            _strict(sub, root)
    if node.get("type") == "object":
        node.setdefault("additionalProperties", False)
    if isinstance(node.get("properties"), dict):
        node["required"] = list(node["properties"])
        node["properties"] = {k: _strict(v, root) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root)
    for key in ("anyOf", "allOf"):
        if isinstance(node.get(key), list):
            node[key] = [_strict(v, root) for v in node[key]]
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
        node.update(node.pop("allOf")[0])
    if "default" in node and node["default"] is None:
        del node["default"]
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:  # a $ref with siblings: inline it
        node.update({**_resolve(root, ref), **node})
        del node["$ref"]
        return _strict(node, root)
    return node


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    found: Any = root
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found


def pydantic_problem(exc: Any) -> str:
    """The first error of a pydantic ValidationError: ``age: Input should be …`` (+N more)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    line = f"{where}: {first['msg']}" if where else str(first["msg"])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return clip(line, MESSAGE_LIMIT) + more


def jsonschema_problem(validator: Any, data: Any) -> str | None:
    """The most relevant jsonschema error as ``field: message``, or None when ``data`` fits."""
    from jsonschema.exceptions import best_match

    errors = list(validator.iter_errors(data))
    if not errors:
        return None
    first = best_match(errors)
    where = ".".join(str(part) for part in first.absolute_path)
    line = f"{where}: {first.message}" if where else first.message
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return clip(line, MESSAGE_LIMIT) + more


def plain(data: Any) -> Any:
    """JSON-safe form of a typed value (a model instance as its JSON dict) for displays."""
    dump = getattr(data, "model_dump", None)
    return dump(mode="json") if callable(dump) else data


def _is_model_class(value: Any) -> bool:
    if not isinstance(value, type):
        return False
    from pydantic import BaseModel

    return issubclass(value, BaseModel)


def _wire_name(label: str) -> str:
    return _NAME_CHARS.sub("_", label)[:64] or "answer"
