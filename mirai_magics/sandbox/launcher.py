"""The helper that runs inside the sandbox (stdlib only, never imported by the package).

``python -I -S launcher.py SPEC_JSON``: it refuses to run as root, makes itself undumpable
(the code cannot ptrace it or open its pipes through /proc), sets the rlimits, runs the code
as a child, enforces the wall clock and the output cap, kills whatever the code left behind,
then sends the files of the work dir. Everything reaches the host as frames on stdout: one
kind byte, a 4-byte big-endian length, the payload — ``o``/``e`` chunks of the code's
stdout/stderr, ``f`` a file header (JSON: path, size) followed by its ``d`` chunks, and last
``x`` (JSON: exit status, reason) — see ``frames.py`` for the host's side.
"""

import contextlib
import json
import os
import resource
import selectors
import signal
import stat
import struct
import subprocess
import sys
import time

CHUNK = 65536
MB = 1024 * 1024
AFTER_EXIT_S = 0.2  # output of processes the code left behind, once the code itself ended


def send(kind, payload):
    data = kind + struct.pack(">I", len(payload)) + payload
    while data:
        data = data[os.write(1, data) :]


def undumpable():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    except (OSError, AttributeError):
        pass


def limit_tree(spec):
    """Limits that bind the whole process tree, this helper included."""
    pairs = [
        (resource.RLIMIT_AS, spec["memory_mb"] * MB),
        (resource.RLIMIT_FSIZE, spec["disk_mb"] * MB),
        (resource.RLIMIT_NOFILE, spec["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]
    if spec.get("nproc"):
        pairs.append((resource.RLIMIT_NPROC, spec["nproc"]))
    for which, value in pairs:
        resource.setrlimit(which, (value, value))


def child_limits(cpu_s):
    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))

    return apply


def start(spec):
    return subprocess.Popen(
        [sys.executable, "-B", "-s", spec["main"]],
        cwd=spec["work"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=child_limits(spec["cpu_s"]),
        start_new_session=True,
    )


def pump(proc, spec):
    """Forward output until the code ends; "timeout" or "output" when it had to be stopped."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, b"o")
    selector.register(proc.stderr, selectors.EVENT_READ, b"e")
    deadline = time.monotonic() + spec["timeout_s"]
    budget = [spec["max_output"]]
    ended = None
    while selector.get_map():
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        if ended is None and proc.poll() is not None:
            ended = now
        if ended is not None and now - ended > AFTER_EXIT_S:
            return None
        for key, _ in selector.select(timeout=min(0.05, deadline - now)):
            if not forward(selector, key, budget):
                return "output"
    return None


def forward(selector, key, budget):
    """One read from the code's pipe; False once the output cap is passed."""
    data = os.read(key.fd, CHUNK)
    if not data:
        selector.unregister(key.fileobj)
        return True
    kept = data[: budget[0]]
    budget[0] -= len(kept)
    if kept:
        send(key.data, kept)
    return len(kept) == len(data)


def kill_rest(proc, spec):
    """SIGKILL every process of the sandbox but this one (kill(-1) in its own namespace)."""
    if spec.get("pid_namespace"):
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def send_files(spec):
    """The regular files the code left in the work dir (the input files excepted)."""
    inputs = set(spec["inputs"])
    for folder, dirs, names in os.walk(spec["work"]):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, spec["work"])
            info = os.lstat(path)
            if relative in inputs or not stat.S_ISREG(info.st_mode):
                continue
            send(b"f", json.dumps({"path": relative, "size": info.st_size}).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda handle=handle: handle.read(CHUNK), b""):
                    send(b"d", chunk)


def main():
    spec = json.loads(sys.argv[1])
    if os.getuid() == 0 or os.geteuid() == 0:
        sys.exit("sandbox: refusing to run code as root")
    undumpable()
    limit_tree(spec)
    os.makedirs(os.environ.get("HOME", "/tmp/home"), exist_ok=True)
    proc = start(spec)
    reason = pump(proc, spec)
    kill_rest(proc, spec)
    status = proc.wait()
    send_files(spec)
    send(b"x", json.dumps({"exit": status, "reason": reason}).encode())


if __name__ == "__main__":
    main()
