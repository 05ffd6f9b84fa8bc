"""Command line of the offline server: `python -m mirai_magics.server` and `mirai serve`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .faults import FAULT_SPECS, Faults
from .runner import OfflineServer

DEFAULT_PORT = 8765
_METAVARS = {bool: "true|false", int: "INT", float: "NUMBER", str: "TEXT"}


def _bool_word(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise argparse.ArgumentTypeError("expected true or false")
    return lowered == "true"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the offline server's options to ``parser`` (e.g. a ``mirai serve`` subparser)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="loopback address only (default 127.0.0.1)")
    add(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"0 picks a free port (default {DEFAULT_PORT})",
    )
    add("--seed", type=int, default=0, help="seed of the fault injection RNG")
    add("--vary", action="store_true", help="append a random variant to every chat answer")
    add("--stream-delay-ms", type=float, default=0, help="delay between streamed chunks")
    add("--expected-key", default=None, help="reject any other API key with 401")
    add(
        "--azure-api-version",
        default=None,
        metavar="VERSION",
        help="behave like an Azure OpenAI resource: /openai/deployments/{d}/…?api-version="
        "VERSION with an api-key header, and /openai/v1/…",
    )
    add_fault_arguments(parser)
    add("--script", default=None, help="comma separated outcomes, e.g. 429,500,ok")
    return parser


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`Faults` field, derived from its declaration (FAULT_SPECS)."""
    group = parser.add_argument_group(
        "faults", "also settable while running: POST /_mirai/faults with the field names"
    )
    for spec in FAULT_SPECS:
        help_text = spec.help.replace("%", "%%") + (f" ({spec.bounds})" if spec.bounds else "")
        if spec.type is bool and spec.default is False and not spec.optional:
            group.add_argument(spec.flag, dest=spec.name, action="store_true", help=help_text)
            continue
        group.add_argument(
            spec.flag,
            dest=spec.name,
            type=_bool_word if spec.type is bool else spec.type,
            default=spec.default,
            metavar=_METAVARS[spec.type],
            help=help_text,
        )


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults of parsed options; a field without an option keeps its default."""
    given = {
        spec.name: getattr(args, spec.name) for spec in FAULT_SPECS if hasattr(args, spec.name)
    }
    return Faults(**given)


def server_from_args(args: argparse.Namespace) -> OfflineServer:
    """An (unstarted) OfflineServer configured from parsed :func:`add_arguments` options."""

    def opt(name: str, default: object = None) -> object:
        return getattr(args, name, default)

    srv = OfflineServer(
        port=opt("port", DEFAULT_PORT), faults=faults_from_args(args), seed=opt("seed", 0),
        vary=bool(opt("vary", False)), stream_delay_ms=opt("stream_delay_ms", 0),
        expected_key=opt("expected_key"), host=opt("host", "127.0.0.1"),
        azure_api_version=opt("azure_api_version"),
    )  # fmt: skip
    script = opt("script")
    if script:
        srv.script([entry for entry in str(script).split(",") if entry.strip()])
    return srv


async def _serve(srv: OfflineServer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # graceful stop on Ctrl-C and kill
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, srv.request_stop)

    def announce(server: OfflineServer) -> None:
        print(f"mirai offline server listening on {server.url} (Ctrl-C to stop)", flush=True)

    await srv.serve_async(on_ready=announce)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the server from parsed options until Ctrl-C or SIGTERM; returns an exit code."""
    try:
        srv = server_from_args(args)
    except (TypeError, ValueError) as exc:
        print(f"mirai serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(srv))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"mirai serve: cannot listen on {srv.host}:{srv.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mirai_magics.server",
        description="OpenAI-compatible offline server with fault injection (loopback only).",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
