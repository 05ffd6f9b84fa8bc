"""Engine overhead and chaos resilience, each against a baseline measured in the same run.

(a) per-call overhead of `session.chat` (default stack: policy, telemetry, call log) over a
    raw `AsyncOpenAI` call to the same offline server, in paired, interleaved rounds: every
    round calls each client once, in a shuffled order, and the overhead is the p50 of the
    per-round differences. Clients measured:

    raw_async         AsyncOpenAI awaited *directly*: a private loop on the calling thread
                      (`loop.run_until_complete`), no thread hop — the baseline;
    raw_async_thread  AsyncOpenAI on its own loop thread, the way a sync caller inside a
                      running loop (a kernel) must do it: `run_coroutine_threadsafe(...)
                      .result()` — the same two thread hops `Session.chat` makes, nothing else;
    session           `Session.chat` (engine thread, ResilientClient, observers);
    langchain         `langchain_openai.ChatOpenAI.invoke`, when importable (a peer);
    raw_sync          the sync `OpenAI` client (what ChatOpenAI wraps).

    Three conditions: `quiet` (only these clients' threads), `busy` (``--busy-threads``
    extra Python threads spinning on pure-Python CPU work: every thread that wakes from I/O
    then waits for the GIL, up to `sys.getswitchinterval()` = 5 ms) and `intermittent` (the
    same threads spinning 1 ms, sleeping 1 ms: threads that run now and then, as a kernel's
    own threads and other clients' do). Busy threads are bounded in time and stopped at the
    end of their condition. Target: ≤ 0.2 ms added at the p50.
    ``--experiments`` adds two measurements for proposals (mirai_magics is not changed):
    `exp_same_thread` (a second Session whose engine loop is driven by the calling thread:
    no hop) and `exp_switch_0.5ms` (`Session.chat` with `sys.setswitchinterval(0.0005)`
    while the call runs).
    The server runs in a child process by default (`--server process`), so its thread does
    not compete for this process's GIL; `--server thread` keeps it in-process as before.
(b) chaos: 500 calls to `heavy` with 20% 429 (Retry-After: 0) and 10% 500 injected, on the
    seed's config (`../shared/seed/openai_config.yaml` over the packaged defaults; BENCH_CONFIG
    lifts only the rate and token quotas: retries, backoff, breaker and degradation rules are
    the seed's). Reports the success rate (target 100%), the share of heavy calls answered by
    the heavy model gpt-4o (target ≥ 0.95: isolated faults must not move calls to main),
    why the others moved, and the HTTP requests the server saw (the minimum is about 715).

    python benchmarks/bench_engine.py [--rounds 400] [--busy-threads 1] [--chaos-calls 500]
        [--chaos-seed 7] [--conditions quiet,busy,intermittent] [--server process|thread]
        [--experiments]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from common import (
    BENCH_CONFIG,
    KEY,
    MESSAGES,
    PARAMS,
    busy_threads,
    offline_server,
    p50,
    paired_p50,
    seed_config,
)
from openai import AsyncOpenAI, OpenAI

from mirai_magics.errors import MiraiError
from mirai_magics.server import Faults, OfflineServer
from mirai_magics.session import Session

TARGET_MS = 0.2
TARGET_HEAVY_SHARE = 0.95


class LoopThread:
    """An asyncio loop on a daemon thread; ``run`` is a plain blocking call from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-raw-loop")
        self.thread.daemon = True
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class SameThreadEngine:
    """Experiment: the engine's loop driven by the calling thread (no thread hop at all).

    Stands in for `EngineLoop` on a second Session, to measure what `Session.chat` would cost
    if the sync facade ran the coroutine on the caller's thread; not how mirai works today.
    """

    name = "same-thread"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    @property
    def running(self) -> bool:
        return not self.loop.is_closed()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def submit(self, coro: Any) -> Any:
        raise NotImplementedError("the experiment covers Session.chat only")

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self.loop.is_closed():
            self.loop.close()


def with_switch_interval(call: Callable[[], Any], seconds: float) -> Callable[[], Any]:
    """Experiment: ``call`` with the GIL switch interval lowered while it runs."""

    def run() -> Any:
        old = sys.getswitchinterval()
        sys.setswitchinterval(seconds)
        try:
            return call()
        finally:
            sys.setswitchinterval(old)

    return run


class Clients:
    """Every client of the comparison, pointed at one server; ``calls`` maps name → sync call."""

    def __init__(self, url: str, session: Session, experiments: Session | None = None):
        self.session = session
        self.experiment_session = experiments
        self.direct_loop = asyncio.new_event_loop()
        self.raw = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)
        self.loop_thread = LoopThread()
        self.raw_threaded = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)
        self.sync = OpenAI(base_url=url, api_key=KEY, max_retries=0)
        create = self.raw.chat.completions.create
        threaded = self.raw_threaded.chat.completions.create
        self.calls: dict[str, Callable[[], Any]] = {
            "raw_async": lambda: self.direct_loop.run_until_complete(
                create(messages=MESSAGES, **PARAMS)
            ),
            "raw_async_thread": lambda: self.loop_thread.run(threaded(messages=MESSAGES, **PARAMS)),
            "session": lambda: session.chat(MESSAGES),
            "raw_sync": lambda: self.sync.chat.completions.create(messages=MESSAGES, **PARAMS),
        }
        if experiments is not None:
            self.calls["exp_same_thread"] = lambda: experiments.chat(MESSAGES)
            self.calls["exp_switch_0.5ms"] = with_switch_interval(
                lambda: session.chat(MESSAGES), 0.0005
            )
        self.langchain: Any = None
        try:
            from langchain_openai import ChatOpenAI
        except ImportError:
            print("peer_langchain=skipped (langchain_openai not importable)")
        else:
            self.langchain = ChatOpenAI(
                model=PARAMS["model"],
                temperature=PARAMS["temperature"],
                top_p=PARAMS["top_p"],
                frequency_penalty=PARAMS["frequency_penalty"],
                presence_penalty=PARAMS["presence_penalty"],
                max_tokens=PARAMS["max_tokens"],
                base_url=url,
                api_key=KEY,
                max_retries=0,
            )
            self.calls["langchain"] = lambda: self.langchain.invoke(MESSAGES)

    def close(self) -> None:
        self.direct_loop.run_until_complete(self.raw.close())
        self.direct_loop.close()
        self.loop_thread.run(self.raw_threaded.close())
        self.loop_thread.close()
        self.sync.close()


def rounds_of(clients: Clients, rounds: int, max_s: float, seed: int) -> dict[str, list[float]]:
    """``rounds`` paired rounds (each client once per round, shuffled), at most ``max_s``."""
    rng = random.Random(seed)
    names = list(clients.calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(20):  # warm every path (imports, pools, the engine thread)
        for name in names:
            clients.calls[name]()
    deadline = time.monotonic() + max_s
    clock = time.perf_counter
    for _ in range(rounds):
        if time.monotonic() > deadline:
            break
        rng.shuffle(names)
        for name in names:
            call = clients.calls[name]
            start = clock()
            call()
            samples[name].append((clock() - start) * 1000)
    return samples


def report(condition: str, samples: dict[str, list[float]], stack: str, extra: str) -> None:
    n = len(samples["raw_async"])
    print(f"condition={condition} rounds={n} stack={stack} {extra}".rstrip())
    print(" ".join(f"{name}_ms_p50={p50(v):.3f}" for name, v in samples.items()))
    raw = p50(samples["raw_async"])
    added = paired_p50(samples, "session", "raw_async")
    ratio = p50(samples["session"]) / raw
    print(f"engine_overhead_ms_p50={added:.3f} ratio={ratio:.2f} ({condition})")
    hop = paired_p50(samples, "raw_async_thread", "raw_async")
    work = paired_p50(samples, "session", "raw_async_thread")
    print(
        f"engine_split_ms_p50 hop_only={hop:.3f} (raw AsyncOpenAI on a loop thread - direct) "
        f"beyond_hop={work:.3f} (session - raw on a loop thread) ({condition})"
    )
    sync_added = paired_p50(samples, "raw_sync", "raw_async")
    print(f"raw_sync_openai_vs_raw_async_ms_p50={sync_added:.3f} ({condition})")
    if "langchain" in samples:
        peer = paired_p50(samples, "langchain", "raw_async")
        peer_ratio = p50(samples["langchain"]) / raw
        vs = p50(samples["session"]) / p50(samples["langchain"])
        print(f"peer_langchain_overhead_ms_p50={peer:.3f} ratio={peer_ratio:.2f} ({condition})")
        print(
            f"session_vs_langchain_ms_p50={paired_p50(samples, 'session', 'langchain'):.3f} "
            f"ratio={vs:.2f} ({condition})"
        )
    else:
        print(f"peer_langchain_overhead_ms_p50=skipped ({condition})")
    for name in [n for n in samples if n.startswith("exp_")]:
        exp = paired_p50(samples, name, "raw_async")
        print(f"experiment_{name[4:]}_overhead_ms_p50={exp:.3f} ({condition})")
    verdict = "met" if added <= TARGET_MS else "missed"
    print(f"target_overhead_le_{TARGET_MS}ms={verdict} ({condition})")


def overhead(args: argparse.Namespace) -> None:
    spin_ms, sleep_ms = (float(x) for x in args.intermittent.split(":"))
    conditions = {  # name → (threads, spin_ms, sleep_ms)
        "quiet": (0, 0.0, 0.0),
        "busy": (args.busy_threads, 1.0, 0.0),
        "intermittent": (args.busy_threads, spin_ms, sleep_ms),
    }
    wanted = [c for c in args.conditions.split(",") if c]
    with offline_server(args.server) as url:
        # The stack measured: policy, telemetry (metrics, JSON log) and the call log. Tracing
        # is off unless --tracing: with the OTel SDK installed it records every span (~0.2 ms).
        tracing = "" if args.tracing else "observability: {tracing: {enabled: false}}\n"
        config, _ = seed_config(url, BENCH_CONFIG + tracing)
        print(f"overhead_tracing={'on' if args.tracing else 'off'}")
        with Session(config) as session, contextlib.ExitStack() as stack:
            experiments = None
            if args.experiments:
                experiments = stack.enter_context(Session(config))
                experiments.engine = SameThreadEngine()
                experiments.chat(MESSAGES)
            clients = Clients(url, session, experiments)
            try:
                session.chat(MESSAGES)
                parts = [
                    "policy" if session.policy is not None else "",
                    "telemetry" if session.telemetry is not None else "",
                    "call_log" if session.call_logs else "",
                ]
                stack = ",".join(p for p in parts if p) or "none"
                switch = f"switch_interval_ms={sys.getswitchinterval() * 1000:g}"
                for index, name in enumerate(wanted):
                    threads, spin, sleep = conditions[name]
                    seed = args.seed + index
                    with busy_threads(threads, args.max_seconds + 30, spin, sleep) as busy:
                        samples = rounds_of(clients, args.rounds, args.max_seconds, seed)
                    extra = f"busy_threads={threads} server={args.server} {switch}"
                    if busy is not None:
                        mode = "spin" if sleep == 0 else f"spin_{spin:g}ms_sleep_{sleep:g}ms"
                        extra += f" busy_mode={mode} busy_loops_per_s={busy.rate:.0f}"
                    report(name, samples, stack, extra)
            finally:
                clients.close()


class ChaosTally:
    """What the chaos calls did: answered, by the heavy model or not, and why not."""

    def __init__(self, heavy_model: str):
        self.heavy_model = heavy_model
        self.ok = self.failed = self.by_heavy = self.degraded = 0
        self.moved: Counter[str] = Counter()  # why a call was not answered by heavy

    def add(self, record: Any) -> None:
        self.ok += 1
        self.degraded += record.degraded_from is not None
        if record.model == self.heavy_model:
            self.by_heavy += 1
        else:
            self.moved["+".join(d.label for d in record.degradations) or "unknown"] += 1

    def fail(self, exc: MiraiError) -> None:
        self.failed += 1
        self.moved[f"error:{exc.code}"] += 1


def chaos(calls: int, seed: int = 7) -> None:
    faults = Faults(fail_429=0.2, fail_5xx=0.1, retry_after=0)
    with OfflineServer(faults=faults, seed=seed).start() as server:
        config, label = seed_config(server.url)
        tally = ChaosTally(config.models["heavy"].name)
        started = time.perf_counter()
        with Session(config) as session:
            for _ in range(calls):
                try:
                    tally.add(session.chat(MESSAGES, "heavy").record)
                except MiraiError as exc:
                    tally.fail(exc)
            engaged = sum(rule.engagements for rule in session.policy.rules)
        stats = server.stats_snapshot()
    elapsed = time.perf_counter() - started
    share = tally.by_heavy / calls
    print(f"chaos_config={label}")
    print(f"chaos_calls={calls} profile=heavy fail_429=0.2 fail_5xx=0.1 retry_after=0 seed={seed}")
    print(
        f"chaos_success_rate={tally.ok / calls:.4f} failed={tally.failed} degraded={tally.degraded}"
    )
    print(
        f"chaos_heavy_answered_by_heavy_share={share:.4f} "
        f"({tally.by_heavy}/{calls} answered by {tally.heavy_model})"
    )
    verdict = "met" if share >= TARGET_HEAVY_SHARE else "missed"
    print(f"target_heavy_share_ge_{TARGET_HEAVY_SHARE}={verdict}")
    moved = " ".join(f"{why}={n}" for why, n in tally.moved.most_common()) or "none"
    print(f"chaos_not_heavy_reasons={moved} rule_engagements={engaged}")
    statuses = " ".join(f"{k}={v}" for k, v in sorted(stats["by_status"].items()))
    print(f"chaos_http_requests={stats['requests']} minimum_expected~={round(calls / 0.7)}")
    print(f"chaos_http_statuses {statuses}")
    print(f"chaos_seconds={elapsed:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", "--calls", type=int, default=400, dest="rounds")
    parser.add_argument("--busy-threads", type=int, default=1, help="threads of busy conditions")
    parser.add_argument(
        "--conditions",
        default="quiet,busy,intermittent",
        help="comma list of quiet, busy (threads spinning), intermittent (spin/sleep)",
    )
    parser.add_argument(
        "--intermittent", default="1:1", help="SPIN_MS:SLEEP_MS of the intermittent threads"
    )
    parser.add_argument("--max-seconds", type=float, default=60, help="bound per condition")
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--switch-interval-ms", type=float, default=None, help="experiment: sys.setswitchinterval"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="also time Session.chat driven on the calling thread (no hop) and with the GIL "
        "switch interval lowered to 0.5 ms during the call: measurements for proposals",
    )
    parser.add_argument(
        "--tracing", action="store_true", help="keep the seed's tracing on in the overhead rounds"
    )
    parser.add_argument("--chaos-calls", type=int, default=500, help="0 skips the chaos section")
    parser.add_argument("--chaos-seed", type=int, default=7, help="the fault sequence's seed")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MIRAI_HOME"] = home  # the call log goes here, not into the cwd
        overhead(args)
        if args.chaos_calls > 0:
            chaos(args.chaos_calls, args.chaos_seed)


if __name__ == "__main__":
    main()
