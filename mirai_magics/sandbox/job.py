"""One run as the executors see it: the code, its input files, limits, environment, and the
launcher's spec (the same for docker and bubblewrap)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SandboxRefusedError
from .limits import OPEN_FILES, WORK_DIR, Limits

LAUNCHER_FILE = Path(__file__).with_name("launcher.py")
LAUNCHER_PATH = "/sandbox/launch.py"  # where the helper and the code sit inside
MAIN_PATH = "/sandbox/main.py"


@dataclass(frozen=True)
class Job:
    """What to run and with what: ``inputs`` maps a name in the work dir to a host file."""

    code: str
    limits: Limits
    env: dict[str, str]
    inputs: dict[str, Path] = field(default_factory=dict)


def input_files(paths: Iterable[str | os.PathLike[str]] | None) -> dict[str, Path]:
    """``--file PATH``s by the name they get in the work dir (read-only there)."""
    found: dict[str, Path] = {}
    for raw in paths or ():
        path = Path(raw).expanduser()
        if not path.is_file():
            raise SandboxRefusedError(
                f"--file {raw}: no such file", hint="give the path of a readable file"
            )
        if path.name in found:
            raise SandboxRefusedError(
                f"--file {raw}: a second file named {path.name!r}",
                hint="input files land in the work dir by name; rename one",
            )
        found[path.name] = path
    return found


def launcher_spec(job: Job, *, nproc: int | None, pid_namespace: bool) -> str:
    """The launcher's one argument: JSON of the limits it applies inside."""
    limits = job.limits
    return json.dumps(
        {
            "main": MAIN_PATH,
            "work": WORK_DIR,
            "inputs": sorted(job.inputs),
            "timeout_s": limits.timeout_s,
            "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb,
            "disk_mb": limits.disk_mb,
            "open_files": OPEN_FILES,
            "max_output": limits.max_output_bytes,
            "nproc": nproc,
            "pid_namespace": pid_namespace,
        },
        separators=(",", ":"),
    )


def code_fd(code: str) -> int:
    """An anonymous in-memory file holding the code, positioned at its start."""
    fd = os.memfd_create("mirai-sandbox-code")
    os.write(fd, code.encode("utf-8"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
