"""Engine overhead and chaos resilience, each against a baseline measured in the same run.

(a) median time of `session.chat` vs a raw `AsyncOpenAI` call to the same offline server,
    interleaved, N calls each; target: added overhead ≤ 0.5 ms at the median.
(b) chaos: 500 calls with 20% 429 (Retry-After: 0) and 10% 500 injected; target 100% success,
    and the HTTP requests the server saw (the minimum possible is about 715).

    python benchmarks/bench_engine.py [--calls 500] [--chaos-calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from common import BENCH_CONFIG, KEY, timed_ms
from openai import AsyncOpenAI

from mirai_magics.config import parse_config
from mirai_magics.errors import MiraiError
from mirai_magics.server import Faults, OfflineServer
from mirai_magics.session import Session

MESSAGES = [{"role": "user", "content": "Summarise the benchmark in one line."}]


def overhead(calls: int) -> None:
    with OfflineServer().start() as server:
        config = parse_config(f"endpoint: {{base_url: '{server.url}'}}\n{BENCH_CONFIG}", "bench")
        raw = AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        loop = asyncio.new_event_loop()
        params = {"model": "gpt-4o-mini", "temperature": 0.25, "top_p": 1.0, "max_tokens": 1024}

        def raw_call() -> None:
            loop.run_until_complete(raw.chat.completions.create(messages=MESSAGES, **params))

        with Session(config) as session:
            for _ in range(20):  # warm both paths (imports, connection pools)
                raw_call()
                session.chat(MESSAGES)
            raw_ms, mirai_ms = [], []
            for _ in range(calls):
                raw_ms.append(timed_ms(raw_call))
                mirai_ms.append(timed_ms(lambda: session.chat(MESSAGES)))
        loop.run_until_complete(raw.close())
        loop.close()
    raw_p50, mirai_p50 = statistics.median(raw_ms), statistics.median(mirai_ms)
    print(f"calls_each={calls}")
    print(f"raw_sdk_ms_p50={raw_p50:.3f}")
    print(f"session_chat_ms_p50={mirai_p50:.3f}")
    print(f"engine_overhead_ms_p50={mirai_p50 - raw_p50:.3f} ratio={mirai_p50 / raw_p50:.2f}")
    verdict = "met" if mirai_p50 - raw_p50 <= 0.5 else "MISSED"
    print(f"target_overhead_le_0.5ms={verdict}")


def chaos(calls: int) -> None:
    faults = Faults(fail_429=0.2, fail_5xx=0.1, retry_after=0)
    with OfflineServer(faults=faults, seed=7).start() as server:
        config = parse_config(f"endpoint: {{base_url: '{server.url}'}}\n{BENCH_CONFIG}", "bench")
        ok = failed = degraded = 0
        started = time.perf_counter()
        with Session(config) as session:
            for _ in range(calls):
                try:
                    reply = session.chat(MESSAGES, "heavy")
                except MiraiError:
                    failed += 1
                    continue
                ok += 1
                degraded += reply.record.degraded_from is not None
        seen = server.stats_snapshot()["requests"]
    elapsed = time.perf_counter() - started
    print(f"chaos_calls={calls} fail_429=0.2 fail_5xx=0.1 retry_after=0")
    print(f"chaos_success_rate={ok / calls:.4f} failed={failed} degraded={degraded}")
    print(f"chaos_http_requests={seen} minimum_expected~={round(calls / 0.7)}")
    print(f"chaos_seconds={elapsed:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--chaos-calls", type=int, default=500)
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ["OPENAI_API_KEY"] = KEY
    overhead(args.calls)
    chaos(args.chaos_calls)


if __name__ == "__main__":
    main()
