"""Batch throughput under faults at the configured rate ceiling, against a plain-gather baseline.

One run, everything on 127.0.0.1, a fake key, MIRAI_HOME in a temp dir, no metrics port:

(a) ``batch(prompts, session=session)``: N prompts (``--n``, 2000) through the in-process
    backend against the offline server (``--latency-ms`` 100 per answer) with 20% 429
    (Retry-After absent unless ``--retry-after``) and 10% 500 injected. The config (over the
    packaged defaults) sets ``limits.rps.chat`` = 50, raises both token budgets so they never
    bind, sets ``limits.concurrency.background`` (``--concurrency``) and
    ``limits.concurrency.chat`` to at least that (a background item holds a chat slot too),
    turns RAG memory off; retries, backoff, breaker and degradation stay as configured
    (printed). Throughput = N / wall; ``fraction_of_ceiling`` = throughput / 50 (target
    >= 0.9). The local token bucket holds a one-second burst (50 tokens) at the start, so a
    run can slightly exceed 1.0.
    Lost: items whose stored result is None (``jobs.store.results``). Duplicated: the store
    keeps one result per item, so it is counted server-side: chat answers with status 200
    minus items ok (a retried item is one result: its failed attempts were not 200).
(b) baseline: the same messages through ``asyncio.gather`` over ``openai.AsyncOpenAI`` with
    the SDK's default retries (max_retries 2) and ``asyncio.Semaphore(16)``, no rate limit.
(c) Arq, when ``mirai_magics/jobs/arq_backend.py`` exists, ``redis-server`` is on PATH and
    ``limits.backend: redis`` is wired (a probe call must leave a ``{ns}:rps:chat`` key in
    Redis): a redis-server on a free port (no persistence), ``--arq-workers`` (2) `mirai
    worker` processes, ``queue.backend: arq`` + ``limits.backend: redis``, ``--arq-n`` (500)
    prompts. Else ``arq=skipped reason=…``; ``--arq-force`` runs it anyway with each worker's
    local limits and says so. Every process started here is stopped, also on error.

(d) interactive first: ``--cells`` (20) interactive calls (what a ``%%mirai`` cell sends:
    ``session.chat``, history and memory off) one after another on an idle session, then the
    same while a ``--busy-n`` (500) item ``batch(wait=False)`` saturates the 50/s ceiling of
    that session; p50/p95 of each and the busy/idle ratio of p50 (same faults in both).

Peak rates are the most requests the server received in any sliding one-second window
(its per-request arrival times; retries included).

    python benchmarks/bench_batch.py [--n 2000] [--concurrency 24] [--latency-ms 100]
        [--gather-concurrency 16] [--arq-n 500] [--arq-workers 2] [--arq-force] [--seed 7]
        [--cells 20] [--busy-n 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/redisutil.py

from common import KEY, PARAMS
from openai import AsyncOpenAI
from redisutil import RedisServer

from mirai_magics.api import batch
from mirai_magics.config import parse_config
from mirai_magics.jobs.batch import payloads
from mirai_magics.server import Faults, OfflineServer
from mirai_magics.session import Session

RPS_LIMIT = 50
TARGET_FRACTION = 0.9
FAIL_429, FAIL_5XX = 0.20, 0.10
ROOT = Path(__file__).resolve().parents[1]
ARQ_BACKEND = ROOT / "mirai_magics/jobs/arq_backend.py"
NAMESPACE = "benchbatch"

CONFIG = """
endpoint: {{base_url: '{url}'}}
limits:
  backend: {limits_backend}
  rps: {{chat: {rps}, embeddings: {rps}}}
  tokens: {{per_minute: 1000000000, per_user_minute: 1000000000}}
  concurrency: {{chat: {chat}, background: {background}}}
context: {{rag: {{enabled: false}}}}
"""
ARQ_EXTRA = """queue: {{backend: arq}}
redis: {{url: '{redis_url}', namespace: {namespace}}}
"""


def config_text(url: str, concurrency: int, limits_backend: str = "local", extra: str = "") -> str:
    """The benchmark's YAML: the rate ceiling, budgets that never bind, no RAG memory."""
    chat = max(16, concurrency)  # 16: the packaged default; a background item holds one too
    return (
        CONFIG.format(
            url=url, limits_backend=limits_backend, rps=RPS_LIMIT, chat=chat, background=concurrency
        )
        + extra
    )


def peak_rps(arrivals: list[float], after: float = 0.0) -> int:
    """The most arrivals in any sliding one-second window (of those at or after ``after``)."""
    times, best, lo = sorted(t for t in arrivals if t >= after), 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def prompts_of(n: int) -> list[str]:
    return [f"Summarise item {i} of the batch benchmark in one line." for i in range(n)]


def degradation_label(config: Any) -> str:
    d = config.degradation
    rules = ",".join(r.trigger for r in d.rules) or "none"
    chain = ">".join(d.fallback_chain)
    state = "enabled" if d.enabled else "disabled"
    return f"degradation={state}(as configured) rules={rules} fallback_chain={chain}"


class Phase:
    """Wall time and what the server saw within the ``with`` block (stats reset on entry)."""

    def __init__(self, server: OfflineServer):
        self.server = server
        self.wall_s = 0.0
        self.stats: Any = None

    def __enter__(self) -> Phase:
        self.server.reset_stats()
        self.started, self.started_at = time.perf_counter(), time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self.started
        self.stats = self.server.stats_snapshot()

    @property
    def ok_answers(self) -> int:
        return int(self.stats["by_status"].get("200", 0))

    @property
    def peak(self) -> int:
        if len(self.stats["arrivals"]) < self.stats["requests"]:  # the server keeps 10k
            print(f"warning: {self.stats['requests']} requests, arrival times of the last 10k")
        return peak_rps(self.stats["arrivals"])

    @property
    def peak_after_2s(self) -> int:
        """The peak once the burst (one second of tokens) and its retries are over."""
        return peak_rps(self.stats["arrivals"], self.started_at + 2.0)

    @property
    def mean_rps(self) -> float:
        return self.stats["requests"] / self.wall_s

    def statuses(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.stats["by_status"].items()))


def tally(session: Session, results: Any) -> dict[str, Any]:
    """lost (no stored result), ok, failed (error values by code), degraded (ok, moved)."""
    stored = session.jobs.store.results(results.job_id)
    lost = sum(r is None for r in stored)
    ok = [r for r in results if r.ok]
    failed = Counter(r.error_code or "unknown" for r in results if not r.ok)
    degraded = sum(1 for r in ok if r.record is not None and r.record.degradations)
    why = Counter(
        "+".join(f"{d.rule}:{d.detail}" for d in r.record.degradations)
        for r in ok
        if r.record is not None and r.record.degradations
    )
    models = Counter(r.record.model for r in ok if r.record is not None)
    return {
        "lost": lost,
        "ok": len(ok),
        "failed": failed,
        "degraded": degraded,
        "why": why,
        "models": models,
    }


def print_batch(prefix: str, n: int, phase: Phase, t: dict[str, Any]) -> None:
    failed = sum(t["failed"].values())
    duplicated = max(0, phase.ok_answers - t["ok"])
    print(
        f"{prefix}_lost={t['lost']} {prefix}_duplicated={duplicated} {prefix}_failed={failed} "
        f"{prefix}_success_rate={t['ok'] / n:.4f}"
    )
    codes = " ".join(f"{k}={v}" for k, v in t["failed"].most_common()) or "none"
    models = " ".join(f"{k}={v}" for k, v in t["models"].most_common()) or "none"
    why = " ".join(f"{k}={v}" for k, v in t["why"].most_common()) or "none"
    print(
        f"{prefix}_failed_codes {codes} {prefix}_degraded={t['degraded']} ({why}) "
        f"{prefix}_answered_by {models}"
    )
    print(
        f"{prefix}_http_requests={phase.stats['requests']} {prefix}_http_200={phase.ok_answers} "
        f"{prefix}_http_peak_rps={phase.peak} {prefix}_http_peak_rps_after_2s="
        f"{phase.peak_after_2s} {prefix}_http_mean_rps={phase.mean_rps:.1f} (retries included)"
    )
    print(f"{prefix}_http {phase.statuses()}")


# --- (a) batch() in process -----------------------------------------------------------


def run_batch(server: OfflineServer, args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """The batch phase; returns the items' messages, for the baseline."""
    config = parse_config(config_text(server.url, args.concurrency), "<bench_batch>")
    prompts = prompts_of(args.n)
    limits = config.limits
    print(
        f"batch_config rps_chat={limits.rps.chat:g} concurrency_background="
        f"{limits.concurrency.background} concurrency_chat={limits.concurrency.chat} "
        f"tokens_per_minute={limits.tokens.per_minute} rag=off "
        f"attempts={config.defaults.max_retries} "
        f"backoff_base_ms={config.defaults.backoff.base_ms:g} "
        f"breaker_failure_threshold={config.circuit_breaker.failure_threshold}"
    )
    print(degradation_label(config))
    print(f"bucket_burst={max(1.0, limits.rps.chat):g} (local token bucket: a one-second burst)")
    with Session(config) as session:
        _ = session.client  # the SDK client is built before the clock starts
        messages = [
            p["messages"] for p in payloads(session, prompts, "main", template=None, fmt="text")
        ]
        with Phase(server) as phase:
            results = batch(prompts, session=session)
        t = tally(session, results)
        engaged = sum(rule.engagements for rule in session.policy.rules)
    sys.stderr.write("\n")
    throughput = args.n / phase.wall_s
    fraction = throughput / RPS_LIMIT
    verdict = "met" if fraction >= TARGET_FRACTION else "missed"
    print(
        f"batch_wall_s={phase.wall_s:.2f} batch_throughput_rps={throughput:.2f} "
        f"fraction_of_ceiling={fraction:.3f} target_ge_{TARGET_FRACTION}={verdict}"
    )
    burst = max(1.0, limits.rps.chat)
    print(
        f"batch_throughput_rps_without_burst={(args.n - burst) / phase.wall_s:.2f} "
        f"(N - {burst:g} burst tokens) / wall"
    )
    print_batch("batch", args.n, phase, t)
    print(f"batch_rule_engagements={engaged}")
    return messages


# --- (b) the plain-gather baseline ------------------------------------------------------


async def gather_all(url: str, messages: list[list[dict[str, Any]]], width: int) -> list[Any]:
    client = AsyncOpenAI(base_url=url, api_key=KEY)  # SDK default retries (2)
    gate = asyncio.Semaphore(width)

    async def one(msgs: list[dict[str, Any]]) -> Any:
        async with gate:
            return await client.chat.completions.create(messages=msgs, **PARAMS)

    try:
        return await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)
    finally:
        await client.close()


def run_gather(server: OfflineServer, messages: list[list[dict[str, Any]]], width: int) -> None:
    with Phase(server) as phase:
        answers = asyncio.run(gather_all(server.url, messages, width))
    ok = sum(not isinstance(a, BaseException) for a in answers)
    errors = Counter(type(a).__name__ for a in answers if isinstance(a, BaseException))
    n = len(messages)
    print(
        f"gather_wall_s={phase.wall_s:.2f} gather_success_rate={ok / n:.4f} "
        f"gather_peak_rps={phase.peak}"
    )
    codes = " ".join(f"{k}={v}" for k, v in errors.most_common()) or "none"
    print(
        f"gather_concurrency={width} gather_max_retries=2(sdk default) gather_failed={n - ok} "
        f"gather_errors {codes} gather_throughput_rps={n / phase.wall_s:.2f}"
    )
    print(
        f"gather_http_requests={phase.stats['requests']} gather_http_200={phase.ok_answers} "
        f"gather_http {phase.statuses()}"
    )


# --- (d) a cell's latency while a batch runs ---------------------------------------------


def cell_latencies(session: Session, n: int, tag: str) -> list[float]:
    """Seconds per interactive call, one after another."""
    spent = []
    for i in range(n):
        started = time.perf_counter()
        session.chat([{"role": "user", "content": f"{tag} cell {i}"}])
        spent.append(time.perf_counter() - started)
    return spent


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_interactive(server: OfflineServer, args: argparse.Namespace) -> None:
    config = parse_config(config_text(server.url, args.concurrency), "<bench_batch cells>")
    with Session(config) as session:
        _ = session.client
        idle = cell_latencies(session, args.cells, "idle")
        job_id = batch(prompts_of(args.busy_n), session=session, wait=False)
        live = session.jobs.live.get(job_id)
        while live is not None and live.done < 2 * RPS_LIMIT:  # the ceiling is reached
            time.sleep(0.05)
        busy = cell_latencies(session, args.cells, "busy")
        done_meanwhile = live.done if live is not None else -1
        session.jobs.cancel(job_id)
    sys.stderr.write("\n")
    ratio = quantile(busy, 0.5) / quantile(idle, 0.5)
    print(
        f"cell_idle_p50_ms={quantile(idle, 0.5) * 1000:.0f} "
        f"cell_idle_p95_ms={quantile(idle, 0.95) * 1000:.0f} "
        f"cell_busy_p50_ms={quantile(busy, 0.5) * 1000:.0f} "
        f"cell_busy_p95_ms={quantile(busy, 0.95) * 1000:.0f} "
        f"cell_busy_over_idle_p50={ratio:.2f} (cells={args.cells}, a {args.busy_n}-item batch "
        f"running: {done_meanwhile} items done by the last cell)"
    )


# --- (c) Arq: redis-server and `mirai worker`s -------------------------------------------


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers; only this process, by its handle."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def redis_server(binary: str, workdir: Path) -> Iterator[str]:
    """The tests' redis-server launcher (tests/redisutil.py): a free port, no persistence."""
    server = RedisServer(binary, workdir).start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def workers(count: int, config_path: Path, env: dict[str, str], workdir: Path) -> Iterator[None]:
    """``count`` `mirai worker` processes, each ready (its start line printed) before we go on."""
    procs: list[subprocess.Popen] = []
    try:
        for i in range(count):
            log = (workdir / f"worker{i}.log").open("ab")
            cmd = [sys.executable, "-m", "mirai_magics.cli", "worker", "--config", str(config_path)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()
        deadline = time.monotonic() + 30
        for i, proc in enumerate(procs):
            path = workdir / f"worker{i}.log"
            while "mirai worker:" not in path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = path.read_text(errors="replace")[-500:]
                    raise RuntimeError(f"mirai worker {i} did not start: {tail}")
                time.sleep(0.05)
        yield
    finally:
        for proc in procs:
            stop_process(proc)


def shared_limits_wired(config: Any, redis_url: str) -> bool:
    """A probe: one call with ``limits.backend: redis`` must leave the shared rate window."""
    import redis

    probe = parse_config(
        f"endpoint: {{base_url: '{config.endpoint.base_url}'}}\n"
        f"limits: {{backend: redis}}\nredis: {{url: '{redis_url}', namespace: {NAMESPACE}}}\n"
        "context: {rag: {enabled: false}}\n",
        "<bench_batch probe>",
    )
    with contextlib.suppress(Exception), Session(probe) as session:
        session.chat([{"role": "user", "content": "probe"}])
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(f"{NAMESPACE}:rps:*")
        client.flushdb()  # the benchmark starts from empty windows
    finally:
        client.close()
    return bool(keys)


def arq_reason() -> str | None:
    """Why the Arq part cannot run here (None: it can)."""
    if not ARQ_BACKEND.is_file():
        return "mirai_magics/jobs/arq_backend.py is absent"
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    try:
        import arq  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not importable"
    return None


def run_arq(server: OfflineServer, args: argparse.Namespace, home: Path) -> None:
    reason = arq_reason()
    if reason is not None:
        print(f"arq=skipped reason={reason.replace(' ', '_')}")
        return
    workdir = home / "arq"
    workdir.mkdir()
    with redis_server(shutil.which("redis-server") or "", workdir) as url:
        base = parse_config(config_text(server.url, args.concurrency), "<bench_batch>")
        wired = shared_limits_wired(base, url)
        if not wired and not args.arq_force:
            print(
                "arq=skipped reason=limits.backend:redis_not_wired "
                f"(a probe call left no {NAMESPACE}:rps:* key in Redis; --arq-force runs "
                "with per-worker local limits)"
            )
            return
        extra = ARQ_EXTRA.format(redis_url=url, namespace=NAMESPACE)
        backend = "redis" if wired else "local"
        text = config_text(server.url, args.concurrency, backend, extra)
        path = workdir / "arq.yaml"
        path.write_text(text, encoding="utf-8")
        config = parse_config(text, str(path))
        env = {**os.environ, "MIRAI_HOME": str(workdir), "PYTHONUNBUFFERED": "1"}
        prompts = prompts_of(args.arq_n)
        limits = "redis(shared)" if wired else "local-per-worker(limits.backend:redis not wired)"
        print(
            f"arq_config workers={args.arq_workers} worker_concurrency="
            f"{config.limits.concurrency.background} limits={limits} poll_s={config.queue.poll_s}"
        )
        with workers(args.arq_workers, path, env, workdir), Session(config) as session:
            _ = session.client
            with Phase(server) as phase:
                results = batch(prompts, session=session)
            t = tally(session, results)
        sys.stderr.write("\n")
    throughput = args.arq_n / phase.wall_s
    verdict = "yes" if phase.peak <= RPS_LIMIT else "no"
    print(
        f"arq_workers={args.arq_workers} arq_throughput_rps={throughput:.2f} "
        f"arq_peak_rps={phase.peak} arq_peak_le_limit={verdict}"
    )
    print(f"arq_prompts={args.arq_n} arq_wall_s={phase.wall_s:.2f}")
    print_batch("arq", args.arq_n, phase, t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="prompts of the batch and baseline")
    parser.add_argument(
        "--concurrency", type=int, default=24, help="limits.concurrency.background (items at once)"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=100, help="server latency added to each answer"
    )
    parser.add_argument(
        "--retry-after", type=float, default=None, help="Retry-After seconds sent with 429"
    )
    parser.add_argument("--gather-concurrency", type=int, default=16)
    parser.add_argument("--arq-n", type=int, default=500, help="prompts of the Arq part (0: off)")
    parser.add_argument("--arq-workers", type=int, default=2)
    parser.add_argument(
        "--arq-force",
        action="store_true",
        help="run the Arq part even when limits.backend: redis is not wired (local limits)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the fault sequence's seed")
    parser.add_argument("--cells", type=int, default=20, help="interactive calls per phase (d)")
    parser.add_argument("--busy-n", type=int, default=500, help="items of the batch in (d)")
    args = parser.parse_args()
    for name in ("MIRAI_BASE_URL", "OPENAI_BASE_URL", "MIRAI_CONFIG", "MIRAI_REDIS_URL"):
        os.environ.pop(name, None)  # the config below says where calls and Redis go
    os.environ["OPENAI_API_KEY"] = KEY
    os.environ["MIRAI_METRICS_PORT"] = "0"
    retry_after = "absent" if args.retry_after is None else f"{args.retry_after:g}s"
    print(f"prompts={args.n} rps_limit={RPS_LIMIT} faults=429:{FAIL_429:.2f},500:{FAIL_5XX:.2f}")
    print(
        f"server=in-process 127.0.0.1 latency_ms={args.latency_ms:g} retry_after={retry_after} "
        f"seed={args.seed}"
    )
    faults = Faults(
        fail_429=FAIL_429,
        fail_5xx=FAIL_5XX,
        retry_after=args.retry_after,
        latency_ms=args.latency_ms,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        os.environ["MIRAI_HOME"] = home  # jobs store and call log go here, not into the cwd
        with OfflineServer(faults=faults, seed=args.seed).start() as server:
            messages = run_batch(server, args)
            run_gather(server, messages, args.gather_concurrency)
            if args.cells > 0:
                run_interactive(server, args)
            if args.arq_n > 0:
                run_arq(server, args, Path(home))
    print(f"total_seconds={time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
