"""What one sandboxed run may use: the config's ``security.sandbox`` plus per-run overrides.

Also the environment the code sees: a short fixed whitelist plus ``security.sandbox.env``,
never a variable whose name matches ``security.redact_env_names`` nor the API key's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SandboxRefusedError
from ..schema import secret_name_reason

MB = 1024 * 1024
OPEN_FILES = 256  # RLIMIT_NOFILE of the code
SANDBOX_HOME = "/tmp/home"
WORK_DIR = "/work"
BASE_ENV = {
    "HOME": SANDBOX_HOME,
    "TMPDIR": "/tmp",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # what was printed before a kill is kept
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
}


@dataclass(frozen=True)
class Limits:
    """The limits of one run; sizes in MB or bytes as named."""

    timeout_s: float = 30.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_output_bytes: int = 1 * MB
    disk_mb: int = 64
    network: bool = False
    cpus: float = 1.0

    @property
    def cpu_s(self) -> int:
        """RLIMIT_CPU: a second more than the wall clock, so a busy loop meets the timeout."""
        return math.ceil(self.timeout_s) + 1


def limits_for(
    settings: object,
    *,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    network: bool = False,
) -> Limits:
    """The config's limits (``security.sandbox``) with this run's overrides, checked."""
    if not getattr(settings, "enabled", True):
        raise SandboxRefusedError(
            "security.sandbox.enabled is false: mirai runs no generated code",
            hint="set it to true to run code in the sandbox",
        )
    if network and not settings.allow_network:
        raise SandboxRefusedError(
            "network access for sandboxed code is off (security.sandbox.allow_network: false)",
            hint="set allow_network: true in the config to allow --net",
        )
    timeout = settings.timeout_s if timeout_s is None else timeout_s
    memory = settings.memory_mb if memory_mb is None else memory_mb
    if not timeout > 0 or not memory >= 16:
        raise SandboxRefusedError(
            f"bad limits: timeout {timeout} s, memory {memory} MB",
            hint="the timeout must be above 0 s and the memory at least 16 MB",
        )
    return Limits(
        timeout_s=float(timeout),
        memory_mb=int(memory),
        max_processes=settings.max_processes,
        max_output_bytes=settings.max_output_bytes,
        disk_mb=settings.disk_mb,
        network=network,
        cpus=settings.cpus,
    )


def sandbox_env(
    names: list[str],
    secret_parts: tuple[str, ...],
    key_var: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of the code: BASE_ENV plus whitelisted names that are set
    (a secret-shaped name is dropped even if the whitelist slipped past validation)."""
    environ = os.environ if environ is None else environ
    env = dict(BASE_ENV)
    for name in names:
        if name in environ and not secret_name_reason(name, secret_parts, key_var):
            env[name] = environ[name]
    return env
