"""The `mirai` command: demo, serve, worker, check-config, alerts, loadtest, golden, canary…"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import MiraiError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except MiraiError as exc:
        print(f"mirai: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirai", description=__doc__)
    sub = parser.add_subparsers(title="commands")
    _add(sub, "demo", "offline demo: a streamed call and a failing-then-retried call", _demo)
    p = _add(sub, "check-config", "validate a config file and print it, secrets redacted", _check)
    p.add_argument("path", nargs="?", help="YAML file layered over the defaults")
    p = _add(sub, "alerts", "write the Prometheus rule file (recording + alerting rules)", _alerts)
    p.add_argument("--config", metavar="PATH", help="YAML file layered over the defaults")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p = _add(sub, "serve", "run the offline OpenAI-compatible server on 127.0.0.1", _serve)
    from .server import add_arguments

    add_arguments(p)
    for name, help_text, module in (
        ("worker", "run queued items (queue.backend: arq) from Redis", "jobs.worker"),
        ("loadtest", "parallel multi-turn dialogs with fault injection", "loadtest"),
        ("golden", "run golden prompts and print a pass/fail table", "golden"),
        ("canary-report", "calls, errors, latency and cost per model version", "canary_report"),
    ):
        _add_lazy(sub, name, help_text, module)
    return parser


def _add(
    sub: argparse._SubParsersAction, name: str, help_text: str, run: Callable[..., int]
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(run=run)
    return p


def _add_lazy(sub: argparse._SubParsersAction, name: str, help_text: str, module: str) -> None:
    """Subcommands whose module declares ``add_arguments(parser)`` and ``run(args)``."""
    import importlib

    try:
        mod = importlib.import_module(f"mirai_magics.{module}")
    except ImportError:
        return
    p = _add(sub, name, help_text, mod.run)
    mod.add_arguments(p)


def _check(args: argparse.Namespace) -> int:
    """The effective config as YAML in the seed's layout, each value's layer in a comment;
    notices and the verdict on stderr."""
    from .config import load_config
    from .redact import redact_all

    config = load_config(args.path)
    layers = " → ".join(f"{label} {source}" for label, source in config.layers)
    print(f"# layers, lowest first: {layers}")
    print("# each value's comment names the layer that set it (built-in: none did)")
    for line in _key_lines(config):
        print(line)
    data = config.model_dump(mode="json", exclude_none=True)
    text = "\n".join(annotated_yaml(data, config.origins())) + "\n"
    print(redact_all(text), end="")
    for line in config.notices():
        print(f"notice: {line}", file=sys.stderr)
    print(f"# valid: {config.source}", file=sys.stderr)
    return 0


def _key_lines(config: Any) -> list[str]:
    """``# api key: [REDACTED] (from $OPENAI_API_KEY)``, then one line per named endpoint."""

    def state(var: str) -> str:
        return "[REDACTED]" if os.environ.get(var) else "(not set)"

    key = config.security.api_key_env_var
    lines = [f"# api key: {state(key)} (from ${key})"]
    for name, endpoint in config.endpoints.items():
        var = endpoint.api_key_env_var
        told = f"{state(var)} (from ${var})" if var else "none (EMPTY is sent)"
        lines.append(f"# api key ({name}): {told}")
    return lines


def annotated_yaml(data: dict[str, Any], origins: dict[Any, str], path: tuple = ()) -> list[str]:
    """``data`` as block YAML, each value followed by ``# <the layer that set it>``."""
    from .config import BUILT_IN

    lines, indent = [], "  " * len(path)
    for key, value in data.items():
        where = (*path, str(key))
        head = f"{indent}{_flow(key)}:"
        if isinstance(value, dict) and value:
            lines += [head, *annotated_yaml(value, origins, where)]
            continue
        origin = next(
            (origins[where[:i]] for i in range(len(where), 0, -1) if where[:i] in origins), BUILT_IN
        )
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            lines.append(f"{head}  # {origin}")
            lines += [f"{indent}  {line}" for line in _block(value)]
        else:
            lines.append(f"{head} {_flow(value)}  # {origin}")
    return lines


def _flow(value: Any) -> str:
    """One line of YAML for a scalar or a list of scalars."""
    import yaml

    if isinstance(value, str) and "\n" in value:
        return json.dumps(value, ensure_ascii=False)  # a double-quoted YAML scalar, one line
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()


def _block(value: list[Any]) -> list[str]:
    import yaml

    text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=1 << 30)
    return text.splitlines()


def _alerts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import load_config
    from .telemetry.alerts import render

    config = load_config(args.config)
    text = render(config.observability, config.source)
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"# wrote {args.output}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import run_from_args

    return run_from_args(args)  # 2: a bad option value (one line on stderr), 1: cannot listen


def _demo(args: argparse.Namespace) -> int:
    from .client.records import Reply
    from .session import Session

    with Session() as session:
        where = (
            "the offline server (no API key set)"
            if session.endpoint.offline
            else session.endpoint.base_url
        )
        print(f"mirai demo — talking to {where}\n")
        messages = [{"role": "user", "content": "Say hello to the notebook in one sentence."}]
        print("streamed call:")
        reply = None
        for item in session.stream_chat(messages, "main", max_tokens=200):
            if isinstance(item, str):
                print(item, end="", flush=True)
            elif isinstance(item, Reply):
                reply = item
        print("\n")
        _print_record(reply.record if reply else None)
        if not session.endpoint.offline:
            print("\n(fault injection needs the offline server; unset the API key to see it)")
            return 0
        session.endpoint.server.script(["500", "429", "ok"])
        print("\nfailing-then-retried call (the server answers 500, then 429, then 200):")
        reply = session.chat(messages, "heavy")
        print(reply.text, "\n")
        _print_record(reply.record)
    return 0


def _print_record(record: object) -> None:
    from .ui.badges import badge_text

    if record is None:
        return
    print(badge_text(record))
    keys = ("profile", "model", "tokens_in", "tokens_out", "latency_ms", "attempts")
    data = {k: getattr(record, k) for k in (*keys, "retry_reasons", "offline", "error")}
    data["latency_ms"] = round(data["latency_ms"], 1)
    print(json.dumps(data))


if __name__ == "__main__":
    raise SystemExit(main())
