"""The Arq queue end to end: a real redis-server, real `mirai worker` processes, the offline
server on loopback, and a Session in this process with ``queue.backend: arq``.

What is asserted is what the outside world saw: requests per prompt at the server, rows in
the job store, keys left in Redis, lines in the workers' logs.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from redisutil import free_port, redis_server  # noqa: F401  (fixture)
from serverproc import arrivals_at, server_process, wait_until

from mirai_magics.jobs.items import payload
from mirai_magics.session import Session

KEY = "sk-test-queue-arq-0123456789abcdef"
JOB_TIMEOUT_S = 4.0  # a dead worker's item is taken over after this
ARQ_POLL_S = 0.5  # Arq's poll_delay: how often an idle worker looks at the queue
START_TIMEOUT_S = 20.0
CONFIG = """
defaults: {{timeout_s: 2, deadline_s: 3, backoff: {{base_ms: 50, max_ms: 200}}}}
queue: {{backend: arq, name: "{ns}:queue", job_timeout_s: {timeout}, poll_s: 0.05}}
redis: {{namespace: "{ns}", connect_timeout_s: 1}}
limits: {{concurrency: {{background: 4}}}}
"""


class Cluster:
    """One test's Redis, offline server, `mirai worker`s and kernel Sessions."""

    def __init__(self, tmp_path: Path, redis, server, extra: str):
        self.tmp, self.redis, self.server = tmp_path, redis, server
        self.ns = f"t{secrets.token_hex(3)}"
        self.config = tmp_path / "mirai.yaml"
        self.config.write_text(CONFIG.format(ns=self.ns, timeout=JOB_TIMEOUT_S) + extra)
        self.workers: list[tuple[subprocess.Popen, Path]] = []
        self.sessions: list[Session] = []

    # --- processes ---------------------------------------------------------------------

    def start_workers(self, n: int, *args: str) -> list[subprocess.Popen]:
        """Start ``n`` workers at once; return when each has printed its start line."""
        started = []
        for _ in range(n):
            log = self.tmp / f"worker-{len(self.workers)}.log"
            cmd = [sys.executable, "-m", "mirai_magics.cli", "worker", "--config", str(self.config)]
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [*cmd, *args], stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)
                )
            self.workers.append((proc, log))
            started.append((proc, log))
        for proc, log in started:
            wait_until(
                lambda p=proc, f=log: (
                    "mirai worker: queue" in f.read_text() or p.poll() is not None
                ),
                START_TIMEOUT_S,
                "a worker's start line",
            )
            assert proc.poll() is None or "--burst" in args, log.read_text()
        return [proc for proc, _ in started]

    def log(self, proc: subprocess.Popen) -> str:
        return next(f for p, f in self.workers if p is proc).read_text()

    def logs(self) -> str:
        return "".join(f.read_text() for _, f in self.workers)

    def session(self) -> Session:
        session = Session(config_path=str(self.config))
        self.sessions.append(session)
        return session

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.workers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    # --- what happened -----------------------------------------------------------------

    def submit(self, session: Session, n: int, tag: str):
        prompts = [[{"role": "user", "content": f"{tag} item {i}"}] for i in range(n)]
        items = [payload(p, "main", user=session.user) for p in prompts]
        return session.jobs.submit("batch", "main", items)

    def requests_for(self, tag: str) -> Counter:
        """How often the server was asked each prompt of ``tag`` (chat requests)."""
        seen: Counter = Counter()
        for record in self.server.stats_snapshot().recent:
            body = record.get("body") or {}
            for message in body.get("messages") or []:
                if str(message.get("content", "")).startswith(f"{tag} item "):
                    seen[message["content"]] += 1
        return seen

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis.url)


@pytest.fixture
def make_cluster(tmp_path, monkeypatch, redis_server, offline_server):  # noqa: F811
    monkeypatch.setenv("MIRAI_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MIRAI_BASE_URL", offline_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    clusters: list[Cluster] = []

    def make(extra: str = "") -> Cluster:
        cluster = Cluster(tmp_path, redis_server, offline_server, extra)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def assert_answered(session: Session, job_id: str, tag: str, n: int) -> None:
    """Every item has one stored result: its own prompt's answer, no error."""
    results = session.jobs.store.results(job_id)
    assert len(results) == n
    for i, result in enumerate(results):
        assert result is not None, f"item {i} has no result"
        assert result["error"] is None, result["error"]
        assert result["text"].endswith(f"{tag} item {i}")


def test_batch_through_two_workers(make_cluster):
    cluster = make_cluster()
    workers = cluster.start_workers(2)
    cluster.server.set_faults(latency_ms=200)  # one worker alone cannot drain the queue first
    session = cluster.session()
    live = cluster.submit(session, 40, "a")
    row = session.jobs.wait(live.id, timeout_s=30)
    assert (row.state, row.done, row.failed, live.done) == ("done", 40, 0, 40)
    assert_answered(session, live.id, "a", 40)
    seen = cluster.requests_for("a")
    assert set(seen) == {f"a item {i}" for i in range(40)} and set(seen.values()) == {1}
    assert all(" try 1: ok " in cluster.log(w) for w in workers)  # both took a share
    logs = cluster.logs()
    assert KEY not in logs and "a item" not in logs  # neither the key nor the prompts
    redis = cluster.redis_client()
    assert redis.zcard(f"{cluster.ns}:queue") == 0
    assert redis.keys(f"arq:*{live.id}*") == []  # collected results are not left behind


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_batch(make_cluster):
    cluster = make_cluster()
    victim, survivor = cluster.start_workers(2)
    cluster.server.set_faults(latency_ms=800)
    session = cluster.session()
    live = cluster.submit(session, 24, "b")
    wait_until(lambda: live.done >= 4, 15, "the first results")
    wait_until(lambda: cluster.server.stats.in_flight >= 5, 5, "both workers busy")
    victim.kill()
    killed, killed_wall = time.monotonic(), time.time()
    row = session.jobs.wait(live.id, timeout_s=30)
    finished_s = time.monotonic() - killed
    assert (row.state, row.done, row.failed) == ("done", 24, 0)
    assert_answered(session, live.id, "b", 24)
    assert set(cluster.requests_for("b")) == {f"b item {i}" for i in range(24)}
    # the victim's items ran again on the survivor (try 2), started within the job timeout
    retried = re.findall(
        r"^(\S+ \S+) mirai\.worker \S+ try 2: ok in (\d+) ms", cluster.log(survivor), re.M
    )
    assert retried, cluster.log(survivor)
    starts = [
        datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() - int(ms) / 1000
        for t, ms in retried
    ]
    takeover_s = max(starts) - killed_wall
    print(f"\ntake-over {takeover_s:.2f} s after SIGKILL; batch done {finished_s:.2f} s after")
    # room for three processes on a loaded machine; the take-over still comes from the 4 s
    # job timeout, not the default one (deadline_s + 15 s = 18 s here)
    assert takeover_s <= JOB_TIMEOUT_S + ARQ_POLL_S + 2
    assert finished_s <= JOB_TIMEOUT_S + 10


@pytest.mark.slow
def test_redis_stopped_mid_batch_then_resume(make_cluster):
    cluster = make_cluster()
    cluster.start_workers(2)
    cluster.server.set_faults(latency_ms=400)
    session = cluster.session()
    live = cluster.submit(session, 24, "c")
    wait_until(lambda: live.done >= 6, 15, "the first results")
    cluster.redis.stop()
    row = session.jobs.wait(live.id, timeout_s=10)
    assert row.state == "interrupted"
    assert "\n" not in row.error and f"Redis at {cluster.redis.url} is unreachable" in row.error
    stored = [i for i, r in enumerate(session.jobs.store.results(live.id)) if r is not None]
    assert len(stored) >= 6 and row.done == len(stored)

    wait_until(lambda: "lost; reconnecting" in cluster.logs(), 5, "a worker to notice")
    cluster.redis.start()  # empty (no persistence); the workers reconnect by themselves
    session.jobs.resume(live.id)
    row = session.jobs.wait(live.id, timeout_s=30)
    assert (row.state, row.done, row.failed) == ("done", 24, 0)
    assert_answered(session, live.id, "c", 24)
    seen = cluster.requests_for("c")
    assert set(seen) == {f"c item {i}" for i in range(24)}
    assert {seen[f"c item {i}"] for i in stored} == {1}  # finished items were not sent again


def test_restarted_kernel_collects_what_workers_finished(make_cluster):
    cluster = make_cluster()
    first = cluster.session()
    live = cluster.submit(first, 10, "f")
    redis = cluster.redis_client()
    wait_until(lambda: redis.zcard(f"{cluster.ns}:queue") == 10, 10, "10 queued items")
    first.close()  # the kernel goes away; its job stays resumable

    cluster.server.set_faults(latency_ms=100)
    (worker,) = cluster.start_workers(1, "--burst", "--concurrency", "2")  # then exits
    worker.wait(timeout=20)
    assert worker.returncode == 0, cluster.log(worker)
    assert "concurrency 2," in cluster.log(worker)
    assert sum(cluster.requests_for("f").values()) == 10
    assert cluster.server.stats_snapshot().max_in_flight == 2

    second = cluster.session()
    assert second.jobs.store.job(live.id).state == "interrupted"
    second.jobs.resume(live.id)  # nothing is queued again: the results are in Redis
    row = second.jobs.wait(live.id, timeout_s=10)
    assert (row.state, row.done) == ("done", 10)
    assert_answered(second, live.id, "f", 10)
    assert sum(cluster.requests_for("f").values()) == 10


def test_cancel_drops_queued_items_from_redis(make_cluster):
    cluster = make_cluster()
    session = cluster.session()
    live = cluster.submit(session, 10, "g")
    redis = cluster.redis_client()
    wait_until(lambda: redis.zcard(f"{cluster.ns}:queue") == 10, 10, "10 queued items")
    row = session.jobs.cancel(live.id)
    assert (row.state, row.failed) == ("cancelled", 10)
    assert redis.zcard(f"{cluster.ns}:queue") == 0
    assert redis.keys(f"arq:job:*{live.id}*") == []  # no worker will find them


def test_worker_without_redis_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, MIRAI_REDIS_URL=f"redis://:hunter2pass@127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mirai worker: Redis at redis://127.0.0.1:")
    assert "unreachable" in lines[0] and "hunter2pass" not in done.stderr


@pytest.mark.slow
def test_shared_rps_limit_across_workers_and_kernel(make_cluster, monkeypatch):
    limit = 8
    with server_process() as url:
        monkeypatch.setenv("MIRAI_BASE_URL", url)
        cluster = make_cluster(f"limits: {{backend: redis, rps: {{chat: {limit}}}}}\n")
        cluster.start_workers(2)
        session = cluster.session()
        live = cluster.submit(session, 40, "d")
        cells = threading.Thread(
            target=lambda: [
                session.chat([{"role": "user", "content": f"cell {i}"}]) for i in range(8)
            ]
        )
        cells.start()
        row = session.jobs.wait(live.id, timeout_s=30)
        cells.join(timeout=30)
        arrivals = arrivals_at(url)
    errors = [r["error"] for r in session.jobs.store.results(live.id) if r and r["error"]]
    assert (row.state, row.done) == ("done", 40), errors
    assert len(arrivals) >= 48
    gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(arrivals)]
    bins = Counter(int(t - arrivals[0]) for t in arrivals)
    assert max(bins.values()) <= limit, (sorted(bins.items()), gaps)
    window = max(sum(1 for u in arrivals if t <= u < t + 1.0) for t in arrivals)
    assert window <= limit, gaps


def test_worker_items_spend_the_submitting_users_budget(make_cluster, monkeypatch):
    cluster = make_cluster("limits: {backend: redis}\n")
    monkeypatch.setenv("MIRAI_USER", "bob-worker")
    cluster.start_workers(1)
    monkeypatch.setenv("MIRAI_USER", "alice")
    session = cluster.session()
    live = cluster.submit(session, 4, "u")
    row = session.jobs.wait(live.id, timeout_s=30)
    assert (row.state, row.done, row.failed) == ("done", 4, 0)
    redis = cluster.redis_client()
    assert redis.exists(f"{cluster.ns}:tokens:user:alice")
    assert not redis.exists(f"{cluster.ns}:tokens:user:bob-worker")
    assert {r["record"]["user"] for r in session.jobs.store.results(live.id)} == {"alice"}


def test_cancel_from_another_kernel_drops_the_queued_items(make_cluster):
    cluster = make_cluster()
    first = cluster.session()
    live = cluster.submit(first, 5, "x")  # no worker runs: the items wait in the queue
    redis = cluster.redis_client()
    wait_until(lambda: redis.zcard(f"{cluster.ns}:queue") == 5, 10, "the items queued")
    first.close()
    second = cluster.session()
    row = second.jobs.cancel(live.id)
    assert row.state == "cancelled"
    assert redis.zcard(f"{cluster.ns}:queue") == 0
    assert cluster.requests_for("x") == {}
