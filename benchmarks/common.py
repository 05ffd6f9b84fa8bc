"""Shared pieces of the benchmark scripts: a fake key, quota-free config, the seed's config,
timers, busy threads, an out-of-process offline server and paired-round statistics."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

KEY = "sk-test-bench-0000000000000000"
# The benchmarks measure overhead, not rate shaping: lift the rate and token quotas out of the
# way (nothing else: retries, backoff, breaker and degradation stay as configured).
BENCH_CONFIG = """
limits:
  rps: {chat: 1000000, embeddings: 1000000}
  tokens: {per_minute: 1000000000, per_user_minute: 1000000000}
"""
SEED = Path(__file__).resolve().parents[2] / "shared/seed/openai_config.yaml"
MESSAGES = [{"role": "user", "content": "Summarise the benchmark in one line."}]
# What `session.chat(MESSAGES)` sends with the seed's main profile, for the raw baselines.
PARAMS = {
    "model": "gpt-4o-mini",
    "temperature": 0.25,
    "top_p": 0.9,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.0,
    "max_tokens": 2000,
}


def seed_config(url: str, extra: str = BENCH_CONFIG) -> tuple[Any, str]:
    """The seed's file verbatim over the packaged defaults, then ``extra`` and the endpoint
    ``url``; (config, a label saying which files). Without the seed file: the packaged
    default, which carries the seed's values."""
    from mirai_magics.config import ENV_CONFIG, load_config

    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "bench.yaml"
        top.write_text(f"endpoint: {{base_url: '{url}'}}\n{extra}", encoding="utf-8")
        saved = os.environ.pop(ENV_CONFIG, None)
        if SEED.is_file():
            os.environ[ENV_CONFIG] = str(SEED)  # the middle layer: default → seed → bench
        try:
            config = load_config(top)
        finally:
            os.environ.pop(ENV_CONFIG, None)
            if saved is not None:
                os.environ[ENV_CONFIG] = saved
    label = f"seed:{SEED}" if SEED.is_file() else "packaged-default (seed file absent)"
    return config, f"{label} + BENCH_CONFIG rate/token quotas lifted"


def timed_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn`` in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


# --- a kernel-like busy process ----------------------------------------------------------

BUSY_SOURCE = '''
import threading as _t, time as _time

class _Busy:
    """Threads doing pure-Python CPU work: they hold the GIL until a forced switch.

    ``sleep_ms`` 0: spin all the time; else spin ``spin_ms``, sleep ``sleep_ms``, repeat
    (a thread that runs now and then, as a kernel's own threads or other clients' do).
    """

    def __init__(self, threads, max_s, spin_ms=1.0, sleep_ms=0.0):
        self.stop_flag = _t.Event()
        self.deadline = _time.monotonic() + max_s
        self.spin_s, self.sleep_s = spin_ms / 1000, sleep_ms / 1000
        self.loops = [0] * threads
        self.threads = [
            _t.Thread(target=self._spin, args=(i,), name=f"bench-busy-{i}", daemon=True)
            for i in range(threads)
        ]
        self.started = _time.perf_counter()
        self.rate = 0.0

    def _spin(self, index):
        n = 0
        clock, spin_s, sleep_s = _time.perf_counter, self.spin_s, self.sleep_s
        while not self.stop_flag.is_set() and _time.monotonic() < self.deadline:
            burst_end = clock() + spin_s
            while clock() < burst_end:
                total = 0
                for i in range(100):  # pure Python: never releases the GIL on its own
                    total += i * i
                n += 1
            if sleep_s:
                _time.sleep(sleep_s)
        self.loops[index] = n

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        """Stop and join; returns the work rate (inner loops per second, all threads)."""
        self.stop_flag.set()
        for thread in self.threads:
            thread.join(10)
        elapsed = max(_time.perf_counter() - self.started, 1e-9)
        self.rate = sum(self.loops) / elapsed
        return self.rate
'''
_busy_namespace: dict[str, Any] = {}
exec(BUSY_SOURCE, _busy_namespace)  # one source for this process and for kernels (see bench_magics)
Busy = _busy_namespace["_Busy"]


@contextlib.contextmanager
def busy_threads(
    threads: int, max_s: float, spin_ms: float = 1.0, sleep_ms: float = 0.0
) -> Iterator[Any]:
    """``threads`` CPU-bound Python threads for at most ``max_s`` seconds (0: a no-op)."""
    if threads <= 0:
        yield None
        return
    busy = Busy(threads, max_s, spin_ms, sleep_ms).start()
    try:
        yield busy
    finally:
        busy.stop()


# --- the offline server in its own process --------------------------------------------------

SERVER_CHILD = """
import sys
from mirai_magics.server import OfflineServer
server = OfflineServer(host="127.0.0.1").start()
print(server.url, flush=True)
sys.stdin.read()  # runs until the parent closes our stdin (or exits)
server.stop()
"""


@contextlib.contextmanager
def server_process(timeout_s: float = 30.0) -> Iterator[str]:
    """The offline server on 127.0.0.1 in a child process (its threads take no GIL of ours)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready = threading.Event()
        line: list[str] = []

        def read() -> None:
            line.append(proc.stdout.readline().strip())
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout_s) or not line[0].startswith("http://127.0.0.1:"):
            raise RuntimeError(f"offline server process did not start: {line}")
        yield line[0]
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def offline_server(mode: str) -> Iterator[str]:
    """``process``: a child process; ``thread``: in this process (its thread shares our GIL)."""
    if mode == "process":
        with server_process() as url:
            yield url
        return
    from mirai_magics.server import OfflineServer

    with OfflineServer().start() as server:
        yield server.url


# --- paired rounds ------------------------------------------------------------------------


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_p50(samples: dict[str, list[float]], name: str, base: str) -> float:
    """p50 of the per-round differences ``name - base`` (same round, interleaved order)."""
    return p50([a - b for a, b in zip(samples[name], samples[base], strict=True)])
