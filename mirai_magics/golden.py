"""Golden prompts: run a YAML list of prompts through a full Session and check the answers.

    mirai golden [FILE] [--url URL] [--replay PATH]

Each entry has a ``name``, a ``prompt`` (sent literally: no interpolation), a ``profile``
(default main), an optional ``format`` and ``options`` (model, temperature, max_tokens,
system) and ``checks``: contains, not_contains, regex, json_schema, max_output_tokens.
Without ``--url`` an in-process offline server answers. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DEFAULT_FILE = "tests/golden_prompts.yaml"
FORMATS = ("markdown", "code", "text", "json")
CHECKS = ("contains", "not_contains", "regex", "json_schema", "max_output_tokens")
OPTIONS = ("model", "temperature", "max_tokens", "system")
_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "number": (int, float),
    "integer": int,
}


@dataclass
class Golden:
    """One golden prompt from the YAML file."""

    name: str
    prompt: str
    profile: str = "main"
    format: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    golden: Golden
    failures: list[str]
    tokens_out: int | None = None
    latency_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


# --- checks (pure) ------------------------------------------------------------------------


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
    from .ui.render import parse_json

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
    return [value] if isinstance(value, str) else [str(v) for v in value]


# --- the file -------------------------------------------------------------------------------


def load_goldens(path: Path) -> list[Golden]:
    """Parse and validate the YAML list; ConfigError naming the entry on a mistake."""
    import yaml

    from .client.errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read golden prompts ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of prompts", hint="see the docs")
    return [_golden(entry, i, path) for i, entry in enumerate(data)]


def _golden(entry: Any, index: int, path: Path) -> Golden:
    from .client.errors import ConfigError

    where = f"{path}: entry {index + 1}"
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("prompt"):
        raise ConfigError(f"{where}: needs at least `name` and `prompt`")
    problems = [f"unknown key {k!r}" for k in entry if k not in Golden.__dataclass_fields__]
    problems += [f"unknown check {k!r}" for k in entry.get("checks") or {} if k not in CHECKS]
    problems += [f"unknown option {k!r}" for k in entry.get("options") or {} if k not in OPTIONS]
    if entry.get("format") not in (None, *FORMATS):
        problems.append(f"format must be one of {', '.join(FORMATS)}")
    checks = entry.get("checks") or {}
    if not isinstance(checks.get("json_schema", {}), dict):
        problems.append("json_schema must be a mapping")
    if not isinstance(checks.get("max_output_tokens", 0), int):
        problems.append("max_output_tokens must be an integer")
    if problems:
        raise ConfigError(f"{where} ({entry['name']}): {'; '.join(problems)}")
    return Golden(**{**entry, "options": entry.get("options") or {}, "checks": checks})


# --- running ----------------------------------------------------------------------------------


def run_golden(session: Any, golden: Golden) -> Outcome:
    """Send one prompt the way a `%%mirai` cell would (no history, no memory, no braces)."""
    from .client.errors import MiraiError
    from .ui.cell import request_from_args

    opts = golden.options
    args = SimpleNamespace(
        profile=golden.profile,
        model=opts.get("model"),
        temperature=opts.get("temperature"),
        max_tokens=opts.get("max_tokens"),
        format=golden.format,
        system=opts.get("system"),
        no_history=True,
        no_memory=True,
        k=None,
        stream=False,
        out=None,
        no_interp=True,
    )
    try:
        request = request_from_args(args, golden.prompt, session)
        reply = session.send_prepared(session.prepare(request.text, request))
    except MiraiError as exc:
        return Outcome(golden, [f"error: {exc}"])
    record = reply.record
    failures = check_answer(reply.text, record.tokens_out, golden.checks)
    return Outcome(golden, failures, record.tokens_out, record.latency_ms)


def format_table(outcomes: list[Outcome]) -> str:
    """The pass/fail table (pure)."""
    header = ("#", "name", "profile", "format", "result", "tokens", "ms", "detail")
    rows = [
        (
            str(i),
            o.golden.name,
            o.golden.profile,
            o.golden.format or "-",
            "PASS" if o.ok else "FAIL",
            "?" if o.tokens_out is None else str(o.tokens_out),
            f"{o.latency_ms:.0f}",
            "; ".join(o.failures)[:200],
        )
        for i, o in enumerate(outcomes, 1)
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mirai golden`."""
    parser.add_argument("file", nargs="?", default=None, help=f"YAML file (default {DEFAULT_FILE})")
    parser.add_argument("--url", default=None, help="OpenAI-compatible base URL (default: offline)")
    parser.add_argument("--replay", default=None, help="answer from this call log or cassette")
    parser.add_argument("--config", default=None, help="YAML config layered over the defaults")


def run(args: argparse.Namespace) -> int:
    """Run every golden prompt; 0 when all pass, 1 otherwise."""
    path = _golden_file(args.file)
    goldens = load_goldens(path)
    session, server = _session(args)
    started = time.monotonic()
    try:
        print(f"golden prompts: {path} → {args.url or 'in-process offline server'}")
        outcomes = [run_golden(session, golden) for golden in goldens]
    finally:
        session.close()
        if server is not None:
            server.stop()
    print(format_table(outcomes))
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


def _golden_file(name: str | None) -> Path:
    if name is not None:
        return Path(name)
    here = Path(DEFAULT_FILE)
    return here if here.is_file() else Path(__file__).resolve().parent.parent / DEFAULT_FILE


def _session(args: argparse.Namespace) -> tuple[Any, Any]:
    """A Session on ``--url`` or on a fresh offline server, replaying when asked."""
    from .config import load_config
    from .replay import Replay, replay_mode
    from .session import Session

    config = load_config(args.config)
    server = None
    url = args.url
    if url is None:
        from .server import OfflineServer

        server = OfflineServer(seed=config.testing.offline_server.seed).start()
        url = server.url
    endpoint = config.endpoint.model_copy(update={"base_url": url})
    session = Session(config.model_copy(update={"endpoint": endpoint}))
    if args.replay:
        session.set_replay(Replay(args.replay, replay_mode(os.environ.get("MIRAI_REPLAY_MODE"))))
    return session, server
