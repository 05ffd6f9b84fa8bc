"""`mirai loadtest`: parallel multi-turn dialogs through the full client, with fault injection.

Each dialog is one simulated user (its id goes out as the request's ``user`` parameter, so
the per-user budget applies per dialog) and runs ``turns`` turns of one conversation, then
starts a new one, until ``duration`` ends. Calls go through a real Session: policy (rate
buckets, budgets, concurrency caps, degradation rules), retries, breaker and fallback.
The chat rate limit (10 req/s by default) shapes the throughput: that is expected.
The local call log is off during the run, so it does not fill with thousands of load calls.
Exits 1 when the `testing.load_tests` targets (p95 latency, error rate) are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from .client.observers import Collect
from .loadreport import format_report, summarize, verdict

GRACE_S = 30.0  # calls still running this long after the deadline are cancelled
TOPICS = ("caching", "retries", "indexes", "queues", "sharding", "batching", "streaming")


def add_arguments(p: argparse.ArgumentParser) -> None:
    tests, chaos = "default: testing.load_tests", "testing.chaos"
    p.add_argument("--dialogs", type=int, help=f"parallel dialogs ({tests}.parallel_dialogs)")
    p.add_argument("--turns", type=int, help=f"turns per conversation ({tests}.turns_per_dialog)")
    p.add_argument("--duration", type=float, help=f"seconds ({tests}.duration_minutes × 60)")
    on = f"when {chaos}.enabled, else 0"
    p.add_argument("--fail-429", type=float, help=f"share of 429s ({chaos}.inject_429_rate {on})")
    p.add_argument("--fail-5xx", type=float, help=f"share of 500s ({chaos}.inject_5xx_rate {on})")
    p.add_argument("--retry-after", type=float, default=None, help="Retry-After on 429s, s")
    p.add_argument("--latency-ms", type=float, default=0, help="server latency per answer")
    p.add_argument("--max-tokens", type=int, default=256, help="output cap per call")
    p.add_argument("--profile", default="main", help="profile the dialogs ask for")
    p.add_argument("--url", default=None, help="OpenAI-compatible base URL (default: in-process)")
    p.add_argument("--config", default=None, help="YAML layered over the default config")
    p.add_argument("--seed", type=int, default=0, help="fault sequence seed")
    p.add_argument("--progress", type=float, default=60, help="progress line every N s (0: off)")


async def dialog(n: int, client: Any, policy: Any, opts: argparse.Namespace, stop_at: float):
    """One simulated user: conversations of ``opts.turns`` turns until ``stop_at``."""
    from .errors import MiraiError
    from .history import trim

    user, turn, history = f"loadtest-{n:03d}", 0, []
    while time.monotonic() < stop_at:
        turn += 1
        topic = TOPICS[(n + turn) % len(TOPICS)]
        question = f"Dialog {n}, turn {turn}: name two trade-offs of {topic} in one sentence."
        window = trim(history, policy.history_limit(opts.history))
        messages = [*window, {"role": "user", "content": question}]
        try:
            reply = await client.chat(messages, opts.profile, max_tokens=opts.max_tokens, user=user)
        except MiraiError as exc:  # counted by the collector; the user waits as advised
            await asyncio.sleep(min(pause_after(exc), max(stop_at - time.monotonic(), 0)))
            continue
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply.text},
        ]
        if turn % opts.turns == 0:
            history = []


def pause_after(exc: Exception) -> float:
    """How long a well-behaved user waits after an error: what it advises, else 1 s."""
    advised = getattr(exc, "retry_in_s", None) or getattr(exc, "remaining_s", None)
    return float(advised) if advised else 1.0


async def drive(client: Any, policy: Any, opts: argparse.Namespace, records: list[Any]) -> float:
    """Run every dialog until the deadline (cancelling stragglers); returns elapsed seconds."""
    started = time.monotonic()
    stop_at = started + opts.duration
    tasks = [
        asyncio.create_task(dialog(i, client, policy, opts, stop_at)) for i in range(opts.dialogs)
    ]
    reporter = asyncio.create_task(_progress(records, policy, started, opts.progress))
    done, pending = await asyncio.wait(tasks, timeout=opts.duration + GRACE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    reporter.cancel()
    for task in done:
        task.result()  # a bug in a dialog surfaces here, not silently
    return time.monotonic() - started


async def _progress(records: list[Any], policy: Any, started: float, every: float) -> None:
    if every <= 0:
        return
    while True:
        await asyncio.sleep(every)
        s = summarize(list(records), time.monotonic() - started)
        print(
            f"[{s.elapsed_s:5.0f} s] {s.calls:,} calls · {s.throughput:.2f}/s · "
            f"p95 {s.p95_s:.2f} s · errors {s.error_rate:.2%} · {budget_line(policy)}",
            flush=True,
        )


def budget_line(policy: Any) -> str:
    """Global token budget use over the last minute."""
    budget = policy.budgets.global_budget
    return f"tokens {budget.used():,} / {budget.limit:,} per minute (global)"


def run(args: argparse.Namespace) -> int:
    """Run the load test described by ``args``; 0 when the targets are met, else 1."""
    from .config import load_config
    from .session import Session

    config = load_config(args.config)
    if not config.testing.load_tests.enabled:
        print(f"load tests are disabled (testing.load_tests.enabled: false in {config.source})")
        return 0
    opts = _resolve(args, config)
    server = None
    if opts.url is None:
        server = _start_server(opts)
        url = server.url
    else:
        url = opts.url
        opts.injected = _inject_remote(url, opts)
    config = _for_load(config, url)
    records: list[Any] = []
    try:
        with Session(config) as session:
            client = session.client
            client.observers.append(Collect(records))
            print(_setup(opts, url), flush=True)
            elapsed = session.engine.run(drive(client, session.policy, opts, records))
            budget = budget_line(session.policy)
            stats = server.stats_snapshot() if server else _remote_stats(url)
    finally:
        if server is not None:
            server.stop()
    summary = summarize(records, elapsed)
    passed, targets_line = verdict(summary, config.testing.load_tests)
    rate = config.limits.rps.chat
    server_line = f"{_server_line(stats)}; {budget} at the end"
    print(format_report(summary, _setup(opts, url), server_line, rate, targets_line))
    return 0 if passed else 1


def _resolve(args: argparse.Namespace, config: Any) -> argparse.Namespace:
    """Fill unset options from `testing.load_tests` and `testing.chaos`."""
    tests, chaos = config.testing.load_tests, config.testing.chaos
    opts = argparse.Namespace(**vars(args))
    opts.dialogs = tests.parallel_dialogs if args.dialogs is None else args.dialogs
    opts.turns = tests.turns_per_dialog if args.turns is None else args.turns
    opts.history = config.context.max_history_messages  # as a notebook sends it
    opts.duration = args.duration if args.duration is not None else tests.duration_minutes * 60
    # faults are injected only when testing.chaos.enabled, or when a flag asks for them
    rate_429, rate_5xx = (
        (chaos.inject_429_rate, chaos.inject_5xx_rate) if chaos.enabled else (0.0, 0.0)
    )
    opts.fail_429 = rate_429 if args.fail_429 is None else args.fail_429
    opts.fail_5xx = rate_5xx if args.fail_5xx is None else args.fail_5xx
    _validate(opts, config)
    return opts


def _validate(opts: argparse.Namespace, config: Any) -> None:
    """One clear line for options that cannot make a load test."""
    from .errors import UsageError

    problems = [
        (opts.dialogs < 1, f"--dialogs must be at least 1, got {opts.dialogs}"),
        (opts.turns < 1, f"--turns must be at least 1, got {opts.turns}"),
        (opts.duration <= 0, f"--duration must be positive, got {opts.duration:g}"),
        (not 0 <= opts.fail_429 <= 1, f"--fail-429 is a probability in 0..1, got {opts.fail_429}"),
        (not 0 <= opts.fail_5xx <= 1, f"--fail-5xx is a probability in 0..1, got {opts.fail_5xx}"),
        (
            opts.profile not in config.chat_profiles(),
            f"--profile {opts.profile!r} is not a chat profile "
            f"(use one of: {', '.join(config.chat_profiles())})",
        ),
    ]
    for failed, message in problems:
        if failed:
            raise UsageError(message)


def _for_load(config: Any, url: str) -> Any:
    """The config pointed at ``url``, with the local call log off (thousands of calls)."""
    obs = config.observability
    call_log = obs.call_log.model_copy(update={"enabled": False})
    return config.model_copy(
        update={
            "endpoint": config.endpoint.model_copy(update={"base_url": url}),
            "observability": obs.model_copy(update={"call_log": call_log}),
        }
    )


def _faults(opts: argparse.Namespace) -> dict[str, Any]:
    return {
        "fail_429": opts.fail_429,
        "fail_5xx": opts.fail_5xx,
        "retry_after": opts.retry_after,
        "latency_ms": opts.latency_ms,
    }


def _start_server(opts: argparse.Namespace) -> Any:
    from .server import Faults, OfflineServer

    return OfflineServer(faults=Faults(**_faults(opts)), seed=opts.seed).start()


def _admin_url(url: str, name: str) -> str:
    return url.rstrip("/").removesuffix("/v1") + f"/_mirai/{name}"


def _inject_remote(url: str, opts: argparse.Namespace) -> bool:
    """Set the faults on a mirai offline server at ``url``; other servers are left alone."""
    body = json.dumps(_faults(opts)).encode()
    request = urllib.request.Request(
        _admin_url(url, "faults"), body, {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        print(f"note: {url} is not a mirai offline server; no faults injected", flush=True)
        return False


def _remote_stats(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(_admin_url(url, "stats"), timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _setup(opts: argparse.Namespace, url: str) -> str:
    faults = f"faults 429 {opts.fail_429:.0%} · 5xx {opts.fail_5xx:.0%}"
    if not getattr(opts, "injected", True):
        faults = "no faults injected"
    return (
        f"{opts.dialogs} dialogs × {opts.turns} turns, {opts.duration:g} s, profile "
        f"{opts.profile}, {faults}, {url}"
    )


def _server_line(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "(no server statistics)"
    statuses = " · ".join(f"{k} ×{v:,}" for k, v in sorted(stats.get("by_status", {}).items()))
    peak = stats.get("max_in_flight_by_kind", {}).get("chat", 0)
    return f"{stats.get('requests', 0):,} requests ({statuses}); max chat in flight {peak}"
