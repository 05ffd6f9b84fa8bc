"""Golden prompts: run a YAML list of prompts through a full Session and check the answers.

    mirai golden [FILE] [--url URL] [--replay PATH]

Without FILE the prompts come from ``testing.golden_prompts.path`` (relative to the working
directory); ``testing.golden_prompts.enabled: false`` turns that default off (a FILE given
on the command line still runs). Each entry has a ``name``, a ``prompt`` (sent literally: no
interpolation), a ``profile`` (default main), an optional ``format`` and ``options`` (model,
temperature, max_tokens, system) and ``checks`` (see :mod:`mirai_magics.golden_checks`).
The whole file is validated before the first prompt runs.
Without ``--url`` an in-process offline server answers. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .golden_checks import CHECKS, check_answer, check_problems

FORMATS = ("markdown", "code", "text", "json")
OPTIONS = ("model", "temperature", "max_tokens", "system")
DISABLED = "testing.golden_prompts.enabled: false"
_FIX = "fix the entry and run `mirai golden` again (nothing was sent)"


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


# --- the file -------------------------------------------------------------------------------


def load_goldens(path: Path) -> list[Golden]:
    """Parse and validate the YAML list; ConfigError naming the entry on a mistake."""
    import yaml

    from .errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read golden prompts ({exc})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of prompts", hint="see the docs")
    return [_golden(entry, i, path) for i, entry in enumerate(data)]


def _golden(entry: Any, index: int, path: Path) -> Golden:
    from .errors import ConfigError

    where = f"{path}: entry {index + 1}"
    if not isinstance(entry, dict) or not _is_text(entry.get("name"), entry.get("prompt")):
        raise ConfigError(f"{where}: needs at least `name` and `prompt` (strings)", hint=_FIX)
    problems = entry_problems(entry)
    if problems:
        raise ConfigError(f"{where} ({entry['name']}): {'; '.join(problems)}", hint=_FIX)
    fields = {**entry, "options": entry.get("options") or {}, "checks": entry.get("checks") or {}}
    return Golden(**fields)


def entry_problems(entry: dict[str, Any]) -> list[str]:
    """Every mistake in one entry (pure), so a run never stops half-way on a bad file."""
    problems = [f"unknown key {k!r}" for k in entry if k not in Golden.__dataclass_fields__]
    if entry.get("format") not in (None, *FORMATS):
        problems.append(f"format must be one of {', '.join(FORMATS)}")
    problems += _mapping_problems(entry.get("options"), "option", OPTIONS)
    checks = entry.get("checks")
    problems += _mapping_problems(checks, "check", CHECKS)
    return problems + (check_problems(checks) if isinstance(checks, dict) else [])


def _mapping_problems(value: Any, noun: str, known: tuple[str, ...]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"{noun}s must be a mapping of {noun}: value (one of {', '.join(known)})"]
    return [f"unknown {noun} {k!r}" for k in value if k not in known]


def _is_text(*values: Any) -> bool:
    return all(isinstance(v, str) and v for v in values)


# --- running ----------------------------------------------------------------------------------


def run_golden(session: Any, golden: Golden) -> Outcome:
    """Send one prompt the way a `%%mirai` cell would (no history, no memory, no braces)."""
    from .errors import MiraiError
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
        request = request_from_args(args, golden.prompt, session.config)
        prepared = session.prepare(request.text, request)
        reply = session.chat(prepared.messages, prepared.profile, **prepared.send_kwargs())
    except MiraiError as exc:
        return Outcome(golden, [f"error: {exc}"])
    record = reply.record
    failures = check_answer(reply.text, record.tokens_out, golden.checks)
    return Outcome(golden, failures, record.tokens_out, record.latency_ms)


def format_table(outcomes: list[Outcome]) -> str:
    """The pass/fail table (pure)."""
    from .ui.status import text_grid

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
    lines = text_grid(header, rows)
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mirai golden`."""
    parser.add_argument(
        "file", nargs="?", default=None, help="YAML file (default: testing.golden_prompts.path)"
    )
    parser.add_argument("--url", default=None, help="OpenAI-compatible base URL (default: offline)")
    parser.add_argument("--replay", default=None, help="answer from this call log or cassette")
    parser.add_argument("--config", default=None, help="YAML config layered over the defaults")


def run(args: argparse.Namespace) -> int:
    """Run every golden prompt; 0 when all pass, 1 otherwise."""
    from .config import load_config

    config = load_config(args.config)
    settings = config.testing.golden_prompts
    if args.file is None and not settings.enabled:
        print(f"golden prompts are disabled ({DISABLED} in {config.source})")
        return 0
    path = Path(args.file) if args.file is not None else _configured_file(config)
    goldens = load_goldens(path)
    session, server = _session(args, config)
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


def _configured_file(config: Any) -> Path:
    """``testing.golden_prompts.path``, or a ConfigError saying where it was looked for."""
    from .errors import ConfigError

    path = Path(config.testing.golden_prompts.path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"no golden prompts file at {path.resolve()} "
            f"(testing.golden_prompts.path: {str(path)!r} in {config.source}, "
            "relative to the working directory)",
            hint="pass the file (`mirai golden FILE`) or set testing.golden_prompts.path",
        )
    return path


def _session(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """A Session on ``--url`` or on a fresh offline server, replaying when asked."""
    from .replay import Replay, replay_mode
    from .session import Session

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
