"""Supervision of one executor process from the host: frames in, its own errors, a backstop.

The launcher inside enforces the timeout and the output cap itself (so the files written
before a timeout still come back); the host keeps its own deadline (the timeout plus a grace
for start-up and files) and kills the whole process group when it passes, or when the
sandbox sends far more than it may.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .frames import Decoded, FrameReader
from .limits import MB, Limits

GRACE_S = 10.0
ERRORS_KEPT = 16 * 1024  # the executor's own stderr (bwrap/docker messages)


@dataclass
class Outcome:
    """What the executor process gave back, before it becomes a SandboxResult."""

    decoded: Decoded
    returncode: int
    errors: str
    backstop: str  # "timeout" or "flood" when the host had to kill it, else ""
    duration_s: float


def supervise(
    argv: Sequence[str],
    limits: Limits,
    *,
    pass_fds: Sequence[int] = (),
    user: int | None = None,
    env: dict[str, str] | None = None,
    on_kill: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``argv`` in its own session; decode its stdout; kill it at the backstop."""
    reader = FrameReader(limits.max_output_bytes, limits.disk_mb * MB)
    flood = 2 * limits.max_output_bytes + limits.disk_mb * MB + MB
    started = time.monotonic()
    deadline = started + limits.timeout_s + GRACE_S
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        start_new_session=True,  # one process group: the backstop kills all of it
        env=env,
        cwd="/",  # not the notebook's folder, which the sandbox user may not even enter
        **_as_user(user),
    )
    errors, backstop = b"", "timeout"
    try:
        errors, backstop = _pump(proc, reader, deadline, flood)
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        backstop = "timeout"
    finally:
        if backstop or proc.poll() is None:
            _kill(proc, on_kill)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return Outcome(
        decoded=reader.decoded,
        returncode=proc.returncode,
        errors=errors.decode("utf-8", "replace").strip(),
        backstop=backstop,
        duration_s=time.monotonic() - started,
    )


def _as_user(uid: int | None) -> dict[str, Any]:
    """Popen's own (thread-safe) privilege drop: no preexec_fn in a threaded kernel."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


def _pump(
    proc: subprocess.Popen[bytes], reader: FrameReader, deadline: float, flood: int
) -> tuple[bytes, str]:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "frames")  # type: ignore[arg-type]
    selector.register(proc.stderr, selectors.EVENT_READ, "errors")  # type: ignore[arg-type]
    errors, received = bytearray(), 0
    while selector.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(errors), "timeout"
        for key, _ in selector.select(timeout=min(left, 0.5)):
            data = os.read(key.fd, 65536)
            if not data:
                selector.unregister(key.fileobj)
            elif key.data == "errors":
                errors += data[: max(ERRORS_KEPT - len(errors), 0)]
            else:
                reader.feed(data)
                received += len(data)
                if received > flood:
                    return bytes(errors), "flood"
    return bytes(errors), ""


def _kill(proc: subprocess.Popen[bytes], on_kill: Callable[[], None] | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if on_kill is not None:
        on_kill()
    proc.wait()
