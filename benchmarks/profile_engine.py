"""Where `Session.chat` spends its added time: its parts measured one by one (µs, p50).

Not a pass/fail benchmark: numbers to rank the costs behind bench_engine.py's overhead.

(1) the sync → engine loop → sync hop alone, with a coroutine that does nothing:
    `loop.run_until_complete` on the calling thread (no hop), `run_coroutine_threadsafe(...)
    .result()`, `EngineLoop.run` (Job: call_soon_threadsafe + Event.wait(0.1) polling);
(2) `Session.chat` with the SDK replaced by a fake that answers at once (no network), with
    the default stack and with parts of it removed, through the hop and awaited on the engine
    loop itself (no hop): the CPU the engine spends per call;
(3) single pieces of the per-call work, timed in a loop.

Each in a `quiet` process and a `busy` one (``--busy-threads`` threads spinning on Python
work); ``--profile pyinstrument`` additionally prints a pyinstrument profile of
`Session.chat` against a real offline server in the busy condition.

    python benchmarks/profile_engine.py [--calls 2000] [--busy-threads 1] [--profile pyinstrument]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

from common import BENCH_CONFIG, KEY, MESSAGES, busy_threads, offline_server
from openai.types.chat import ChatCompletion

from mirai_magics.client.loop import EngineLoop
from mirai_magics.config import parse_config
from mirai_magics.session import Session

RESPONSE = ChatCompletion.model_validate(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "system_fingerprint": "mirai-offline",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "A one-line summary."},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
)


class FakeCompletions:
    async def create(self, **_kwargs: Any) -> ChatCompletion:
        return RESPONSE


class FakeSDK:
    def __init__(self) -> None:
        self.chat = type("Chat", (), {"completions": FakeCompletions()})()

    async def close(self) -> None:
        pass


def p50_us(fn: Callable[[], Any], n: int) -> float:
    for _ in range(min(50, n)):
        fn()
    xs = []
    clock = time.perf_counter
    deadline = time.monotonic() + 20
    for _ in range(n):
        start = clock()
        fn()
        xs.append((clock() - start) * 1e6)
        if time.monotonic() > deadline:
            break
    return statistics.median(xs)


async def noop() -> int:
    return 1


def hop_section(condition: str, n: int) -> None:
    direct = asyncio.new_event_loop()
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    engine = EngineLoop("bench-engine")
    calls = {
        "run_until_complete_same_thread": lambda: direct.run_until_complete(noop()),
        "run_coroutine_threadsafe_result": lambda: asyncio.run_coroutine_threadsafe(
            noop(), other
        ).result(30),
        "EngineLoop.run_Job_event_poll": lambda: engine.run(noop()),
    }
    for name, fn in calls.items():
        print(f"hop_us_p50 {name}={p50_us(fn, n):.1f} ({condition})")
    engine.stop()
    other.call_soon_threadsafe(other.stop)
    thread.join(5)
    other.close()
    direct.close()


def variants(session: Session) -> dict[str, Callable[[], None]]:
    """Ways to strip the default stack from the session's client (restored by the caller)."""
    client = session.client
    observers = list(client.observers)
    policy = client.policy

    def full() -> None:
        client.observers[:] = observers
        client.policy = policy

    def no_call_log() -> None:
        full()
        client.observers[:] = [o for o in observers if o not in session.call_logs]

    def no_telemetry() -> None:
        no_call_log()
        telemetry = session.telemetry
        keep = [o for o in client.observers if getattr(o, "__self__", o) is not telemetry]
        client.observers[:] = keep

    def no_observers() -> None:
        full()
        client.observers[:] = []

    def bare() -> None:
        no_observers()
        client.policy = None

    return {
        "full_stack": full,
        "no_call_log": no_call_log,
        "no_call_log_no_telemetry": no_telemetry,
        "no_observers": no_observers,
        "no_observers_no_policy": bare,
    }


def engine_section(session: Session, condition: str, n: int) -> None:
    client = session.client
    loop = session.engine.loop
    setups = variants(session)

    async def in_loop(count: int) -> float:
        xs = []
        deadline = time.monotonic() + 20
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            await client.chat(MESSAGES)
            xs.append((time.perf_counter() - start) * 1e6)
        return statistics.median(xs)

    for name, setup in setups.items():
        setup()
        through_hop = p50_us(lambda: session.chat(MESSAGES), n)
        on_loop = session.engine.run(in_loop(n))
        print(
            f"engine_us_p50 {name}: session.chat={through_hop:.1f} "
            f"awaited_on_engine_loop={on_loop:.1f} ({condition})"
        )
    setups["full_stack"]()
    del loop


def pieces_section(session: Session, condition: str, n: int) -> None:
    """Single pieces, timed with timeit on this thread (µs per call)."""
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    from mirai_magics.client import retry as retry_mod
    from mirai_magics.client.records import CallRecord
    from mirai_magics.telemetry import tracing
    from mirai_magics.tokens import count_messages

    client = session.client
    d = session.config.defaults
    record = session.records[-1] if session.records else CallRecord(profile="main", model="x")

    def build_retrying() -> Any:
        return AsyncRetrying(
            stop=stop_after_attempt(d.max_retries)
            | retry_mod.stop_before_deadline(time.monotonic() + 240, time.monotonic),
            wait=retry_mod.wait_retry_after(
                retry_mod.backoff(**d.backoff.model_dump()), lambda e: retry_mod.classify(e)
            ),
            retry=retry_if_exception(lambda exc: False),
            sleep=asyncio.sleep,
            reraise=True,
        )

    async def run_retrying() -> None:
        async for attempt in build_retrying():
            with attempt:
                return None

    loop = asyncio.new_event_loop()

    def span_once() -> None:
        with tracing.span("mirai.llm.call", kind="chat"):
            pass

    pieces: dict[str, Callable[[], Any]] = {
        "AsyncRetrying_build": build_retrying,
        "AsyncRetrying_build_and_one_attempt": lambda: loop.run_until_complete(run_retrying()),
        "run_until_complete_noop_baseline": lambda: loop.run_until_complete(noop()),
        "backoff_model_dump": lambda: d.backoff.model_dump(),
        "count_messages": lambda: count_messages(MESSAGES),
        "CallRecord_new": lambda: CallRecord(profile="main", model="", requested_profile="main"),
        "tracing_span_noop": span_once,
        "tracing_tracer_lookup": tracing._tracer,
    }
    for observer in client.observers:
        label = getattr(observer, "__qualname__", None) or type(observer).__name__
        if observer in session.call_logs:
            continue  # queues a background write: timed with its write below
        if hasattr(observer, "on_call"):  # Observer objects (on_attempt / on_call hooks)
            pieces[f"observer_call:{label}"] = lambda o=observer: o.on_call(record, MESSAGES, "x")
        else:  # plain callables (event, record, info)
            pieces[f"observer_call:{label}"] = lambda o=observer: o(
                "call", record, {"messages": MESSAGES, "text": "x"}
            )
    if client.policy is not None:
        policy = client.policy

        async def admit() -> None:
            async with policy.admit("chat", record):
                pass

        pieces["policy_admit_ctx"] = lambda: loop.run_until_complete(admit())
        pieces["policy_route_and_adjust"] = lambda: (
            policy.route("main", record),
            policy.adjust_params(dict(record.params), record),
        )
    for log in session.call_logs:
        rows = [(record, MESSAGES, "x", None)] * 50
        pieces[f"call_log_write_per_row:{log.path.name}"] = lambda lg=log, r=rows: lg.write_many(r)
    for name, fn in pieces.items():
        number = 200 if name.startswith("call_log") else max(200, n)
        try:
            seconds = min(timeit.repeat(fn, number=number, repeat=3)) / number
        except Exception as exc:  # a piece that moved in a refactor: say so, go on
            print(f"piece_us {name}=n/a ({type(exc).__name__}: {exc}) ({condition})")
            continue
        if name.startswith("call_log"):
            seconds /= 50
        print(f"piece_us {name}={seconds * 1e6:.1f} ({condition})")
    loop.close()


def profile_busy(url: str, threads: int, calls: int) -> None:
    from pyinstrument import Profiler

    config = parse_config(f"endpoint: {{base_url: '{url}'}}\n{BENCH_CONFIG}", "bench")
    with Session(config) as session:
        for _ in range(20):
            session.chat(MESSAGES)
        with busy_threads(threads, 60):
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
            for _ in range(calls):
                session.chat(MESSAGES)
            profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--busy-threads", type=int, default=1)
    parser.add_argument("--profile", choices=("none", "pyinstrument"), default="none")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    with tempfile.TemporaryDirectory() as home, offline_server("process") as url:
        os.environ["MIRAI_HOME"] = home
        config = parse_config(f"endpoint: {{base_url: '{url}'}}\n{BENCH_CONFIG}", "bench")
        with Session(config) as session:
            session.chat(MESSAGES)  # builds the client against the real server
            session.client.sdk = FakeSDK()
            for condition, threads in (("quiet", 0), ("busy", args.busy_threads)):
                n = args.calls if threads == 0 else max(args.calls // 10, 100)
                with busy_threads(threads, 120):
                    hop_section(condition, n)
                    engine_section(session, condition, n)
                    pieces_section(session, condition, n)
        if args.profile == "pyinstrument":
            profile_busy(url, args.busy_threads, 300)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
