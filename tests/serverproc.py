"""The offline server in a process of its own, and bounded polling of what a server saw.

``server_process()`` runs `mirai serve` away from this process's GIL, so the arrival times it
records are not delayed by the test or its Session. ``wait_until`` and ``requests_reach`` poll
with a deadline: a request the client gave up on (a short timeout, a hang) is counted when the
server thread gets to read it, which on a loaded machine can be after the client returned.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from redisutil import free_port

POLL_S = 0.02


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms for at most ``timeout_s``; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def requests_reach(server, n: int, timeout_s: float = 5.0) -> int:
    """The server's request count once it is at least ``n`` (or at the deadline).

    The caller asserts on the value, so one request too many still fails."""
    deadline = time.monotonic() + timeout_s
    while (seen := server.stats_snapshot()["requests"]) < n and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return seen


@contextlib.contextmanager
def server_process(*flags: str) -> Iterator[str]:
    """`mirai serve` (with ``flags``, e.g. ``"--fail-5xx", "0.4"``) in a process of its own:
    its request times are not delayed by this process (the kernel Session, the test) holding
    the GIL. Yields the SDK base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirai_magics.cli", "serve", "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "mirai offline server listening on …"
        assert "listening on" in line, line
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stats_at(url: str) -> dict:
    """``/_mirai/stats`` of the server whose SDK base URL is ``url``."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_mirai/stats", timeout=5) as answer:
        return json.load(answer)


def arrivals_at(url: str) -> list[float]:
    """When each API request reached that server (``time.time()``), in order."""
    return sorted(stats_at(url)["arrivals"])
