"""Config errors in one line: the file and line that set a key, its dotted path, the problem.

Pydantic reports a location inside the merged data; this finds the layer (packaged default,
``MIRAI_CONFIG``, an explicit file) and the line that wrote it, by composing its YAML. It is
the layer whose value the merge kept: below a ``!replace`` mapping or a list of a later layer,
what the lower layers wrote there is gone, so a key missing under ``models: !replace`` is
reported at the user's line, not at the packaged default's.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .config_yaml import REPLACE_TAG, compose

Layer = tuple[str, str]  # (source, YAML text), in the order they are merged


def first_error(exc: ValidationError, layers: list[Layer], root: type[BaseModel]) -> str:
    """One line: the file and line that set the key, its dotted path and the problem."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    raw = getattr((first.get("ctx") or {}).get("error"), "loc", None) or first["loc"]
    loc = _walk(raw, root)[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown key (valid: {', '.join(_valid_keys(raw[:-1], root))})"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif first["type"] != "value_error" and not isinstance(first.get("input"), dict | list):
        msg = f"{msg.replace('Input should be', 'must be')} (got {first.get('input')!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    path = dotted(loc)
    return f"{locate(layers, loc)}: {path + ': ' if path else ''}{msg}{more}"


def _valid_keys(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """Field names of the model found at ``loc`` inside ``root`` (for 'unknown key' errors)."""
    model = _walk(loc, root)[1]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _walk(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[tuple[Any, ...], Any]:
    """``loc`` without the union tags pydantic inserts (``rules[0].rate_limit_429.window_s``
    is ``rules[0].window_s`` in the file), and the type found at its end."""
    clean: list[Any] = []
    kind: Any = root
    for part in loc:
        kind = _unwrap(kind)
        members = get_args(kind) if get_origin(kind) in (Union, types.UnionType) else ()
        tagged = next((m for m in members if part in _tags(m)), None)
        if tagged is not None:
            kind = tagged
            continue
        clean.append(part)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            kind = field.annotation if field else None
        else:  # a list or dict entry: the element type; anything else has no parts
            kind = get_args(kind)[-1] if get_origin(kind) in (list, dict) else None
    return tuple(clean), _unwrap(kind)


def _unwrap(kind: Any) -> Any:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _tags(member: Any) -> set[str]:
    """How pydantic names a union member in an error location (its class, its literal tag)."""
    if not (isinstance(member, type) and issubclass(member, BaseModel)):
        return {getattr(member, "__name__", str(member))}
    literals = [
        get_args(f.annotation)
        for f in member.model_fields.values()
        if get_origin(f.annotation) is Literal
    ]
    return {member.__name__, *(str(args[0]) for args in literals if len(args) == 1)}


def locate(layers: list[Layer], loc: tuple[Any, ...]) -> str:
    """``file: line N`` of the key at ``loc`` (or of its deepest parent that is written) in
    the layer whose value is in effect there: the last one that writes it, or, when a later
    layer replaced a parent of it (``!replace``, a list, a scalar), that later one; just the
    last file when no layer writes it."""
    best: tuple[int, str, int | None] = (0, layers[-1][0], None)
    for source, text in layers:
        depth, line, cut = _line_of(compose(text), loc)
        # cut ≤ best's depth: what the layers below wrote there was thrown away in the merge
        if line is not None and (depth >= best[0] or cut <= best[0]):
            best = (depth, source, line)
    _, source, line = best
    return f"{source}: line {line}" if line else source


def _line_of(node: Any, loc: tuple[Any, ...]) -> tuple[int, int | None, int]:
    """How many parts of ``loc`` a composed YAML tree has, the line of the deepest one, and
    how many parts lead to the first value that replaces the lower layers' (past the end:
    none does)."""
    depth, line, cut = 0, None, len(loc) + 1
    for part in loc:
        pair = None
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            pair = (node.value[part],) * 2 if part < len(node.value) else None
        if pair is None:
            break
        depth, line, node = depth + 1, pair[0].start_mark.line + 1, pair[1]
        if cut > depth and _replaces(node):
            cut = depth
    return depth, line, cut


def _replaces(node: yaml.Node) -> bool:
    """True for a value the merge puts in place of the lower layers' (not merged into them)."""
    return not isinstance(node, yaml.MappingNode) or node.tag == REPLACE_TAG


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
