"""The bubblewrap executor: new user/pid/net/ipc/uts namespaces, a read-only Python runtime,
tmpfs work dir and /tmp, a cleared environment, rlimits and a wall clock.

Run as root (CI and these machines), bwrap itself is started as an unprivileged uid
(``SANDBOX_UID``): mapped to root outside, the code would be exempt from RLIMIT_NPROC,
which the kernel never applies to the global root user; as uid 65534 outside, the count of
its processes in the sandbox's own user namespace is what the limit binds.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..errors import SandboxUnavailableError
from .job import LAUNCHER_FILE, LAUNCHER_PATH, MAIN_PATH, Job, code_fd, launcher_spec
from .limits import MB, WORK_DIR
from .process import Outcome, supervise

SANDBOX_UID = 65534  # nobody, inside and (when we are root) outside
HELPERS = 2  # bwrap's init and the launcher share the code's process count
TOP_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl")


@dataclass(frozen=True)
class Runtime:
    """The interpreter the code runs with and the host dirs bound read-only for it."""

    interpreter: str
    binds: tuple[str, ...] = ()


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def runtime(other_user: bool) -> Runtime:
    """The kernel's own Python (its base prefix, without the venv's packages) when the
    sandbox user can read it, else the system's /usr/bin/python3."""
    real = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if real.startswith(prefix + os.sep) and (not other_user or _world_readable(real, prefix)):
        return Runtime(real, () if _within(prefix, "/usr") else (prefix,))
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        raise SandboxUnavailableError(
            f"no Python the sandbox user can read ({prefix} is private)",
            hint="install python3 (`apt-get install python3`)",
        )
    return Runtime(os.path.realpath(system))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _world_readable(interpreter: str, prefix: str) -> bool:
    """Every directory down to ``prefix`` searchable by others, the interpreter executable."""
    here = Path(prefix)
    for folder in (here, *here.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(interpreter).st_mode & stat.S_IXOTH)


@functools.lru_cache(maxsize=4)
def features(bwrap: str) -> frozenset[str]:
    """The options of this bwrap that are newer than 0.4 (``--size``, ``--disable-userns``)."""
    shown = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    text = shown.stdout + shown.stderr
    return frozenset(opt for opt in ("--size", "--perms", "--disable-userns") if opt in text)


def bwrap_argv(
    bwrap: str, job: Job, rt: Runtime, fds: dict[str, int], have: frozenset[str]
) -> list[str]:
    """The whole command line; ``fds`` maps a path inside to an open fd with its content."""
    limits = job.limits
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID)]
    argv += ["--gid", str(SANDBOX_UID)]
    argv += ["--share-net"] if limits.network else []
    argv += ["--disable-userns"] if "--disable-userns" in have else []
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    argv += ["--clearenv"]
    for name, value in job.env.items():
        argv += ["--setenv", name, value]
    argv += _system(rt, limits.network)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += _tmpfs("/tmp", "1777", limits.disk_mb, have)
    argv += _tmpfs(WORK_DIR, "0700", limits.disk_mb, have)
    for inside, fd in fds.items():
        argv += ["--ro-bind-data", str(fd), inside]
    argv += ["--remount-ro", "/"]  # the root tmpfs bwrap builds: nothing new appears in it
    spec = launcher_spec(job, nproc=limits.max_processes + HELPERS, pid_namespace=True)
    return [*argv, "--chdir", WORK_DIR, rt.interpreter, "-I", "-S", LAUNCHER_PATH, spec]


def _system(rt: Runtime, network: bool) -> list[str]:
    """/usr and its top-level links read-only, the runtime's prefix, and for the network
    only the resolver's files. No /etc otherwise, no $HOME, no notebook directory."""
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for prefix in rt.binds:
        argv += ["--ro-bind", prefix, prefix]
    for path in NETWORK_FILES if network else ():
        argv += ["--ro-bind-try", path, path]
    return argv


def _tmpfs(path: str, mode: str, size_mb: int, have: frozenset[str]) -> list[str]:
    argv = ["--perms", mode] if "--perms" in have else []
    argv += ["--size", str(size_mb * MB)] if "--size" in have else []
    return [*argv, "--tmpfs", path]


def run_bwrap(job: Job) -> Outcome:
    """Run the job under bubblewrap; as root, bwrap itself runs as ``SANDBOX_UID``."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailableError("bubblewrap (bwrap) is not installed")
    other_user = os.geteuid() == 0
    rt = runtime(other_user)
    with ExitStack() as stack:

        def kept(fd: int) -> int:
            stack.callback(os.close, fd)
            return fd

        fds = {LAUNCHER_PATH: kept(os.open(LAUNCHER_FILE, os.O_RDONLY))}
        fds[MAIN_PATH] = kept(code_fd(job.code))
        for name, path in job.inputs.items():  # opened here: the sandbox user need not reach it
            fds[f"{WORK_DIR}/{name}"] = kept(os.open(path, os.O_RDONLY))
        argv = bwrap_argv(bwrap, job, rt, fds, features(bwrap))
        user = SANDBOX_UID if other_user else None
        # env={}: bwrap's own environment would be readable inside, as /proc/1/environ
        return supervise(argv, job.limits, pass_fds=list(fds.values()), user=user, env={})
