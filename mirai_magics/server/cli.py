"""Command line of the offline server: `python -m mirai_magics.server` and `mirai serve`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .faults import Faults
from .runner import OfflineServer

DEFAULT_PORT = 8765


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
    add("--fail-429", type=float, default=0, help="probability of a 429 answer")
    add("--retry-after", type=float, default=None, help="Retry-After seconds sent with 429")
    add("--retry-after-ms", type=int, default=None, help="retry-after-ms sent with 429")
    add("--fail-5xx", type=float, default=0, help="probability of a 5xx answer")
    add("--status-5xx", type=int, default=500, help="status of injected 5xx answers")
    add("--html-503", action="store_true", help="5xx answers become 503 with an HTML body")
    add("--latency-ms", type=float, default=0, help="latency added before each answer")
    add("--drop", type=float, default=0, help="probability of closing without an answer")
    add("--hang", action="store_true", help="never answer API requests")
    add("--down", action="store_true", help="close every API connection immediately")
    add("--force-status", type=int, default=None, help="answer every API request with this status")
    add("--should-retry", type=_bool_word, default=None, help="x-should-retry header: true|false")
    add("--script", default=None, help="comma separated outcomes, e.g. 429,500,ok")
    return parser


def server_from_args(args: argparse.Namespace) -> OfflineServer:
    """An (unstarted) OfflineServer configured from parsed :func:`add_arguments` options."""

    def opt(name: str, default: object = None) -> object:
        return getattr(args, name, default)

    faults = Faults(
        fail_429=opt("fail_429", 0), retry_after=opt("retry_after"),
        retry_after_ms=opt("retry_after_ms"), fail_5xx=opt("fail_5xx", 0),
        status_5xx=opt("status_5xx", 500), html_503=bool(opt("html_503", False)),
        latency_ms=opt("latency_ms", 0), hang=bool(opt("hang", False)), drop=opt("drop", 0),
        down=bool(opt("down", False)), force_status=opt("force_status"),
        should_retry=opt("should_retry"),
    )  # fmt: skip
    srv = OfflineServer(
        port=opt("port", DEFAULT_PORT), faults=faults, seed=opt("seed", 0),
        vary=bool(opt("vary", False)), stream_delay_ms=opt("stream_delay_ms", 0),
        expected_key=opt("expected_key"), host=opt("host", "127.0.0.1"),
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
