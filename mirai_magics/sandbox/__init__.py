"""Where generated code runs, never in the kernel: ``run(code)`` → ``SandboxResult``.

``security.sandbox.executor`` picks the executor: ``docker`` when a daemon answers and the
image is present, otherwise bubblewrap (``bwrap``) with one notice on the result; with
neither, ``SandboxUnavailableError`` says what to install — code never runs unsandboxed.

    from mirai_magics.sandbox import run
    result = run("print(sum(range(10)))", timeout_s=5)
    result.stdout, result.exit_code, result.files
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import SandboxError, SandboxRefusedError, SandboxUnavailableError
from .bwrap import bwrap_path, run_bwrap
from .docker import docker_problem, run_docker
from .job import Job, input_files
from .limits import Limits, limits_for, sandbox_env
from .result import SandboxResult, result_of

__all__ = [
    "Limits",
    "SandboxError",
    "SandboxRefusedError",
    "SandboxResult",
    "SandboxUnavailableError",
    "choose",
    "run",
]


def run(
    code: str,
    *,
    timeout_s: float | None = None,
    files: Iterable[str | os.PathLike[str]] | None = None,
    memory_mb: int | None = None,
    network: bool = False,
    config: Any = None,
) -> SandboxResult:
    """Run ``code`` (Python source) in the sandbox and return what it did.

    ``timeout_s`` and ``memory_mb`` override ``security.sandbox``; ``files`` are copied into
    the work dir, read-only, by name; ``network=True`` is refused unless ``allow_network``.
    ``config`` defaults to the notebook session's, else the packaged/``MIRAI_CONFIG`` one.
    """
    config = config if config is not None else current_config()
    security = config.security
    settings = security.sandbox
    limits = limits_for(settings, timeout_s=timeout_s, memory_mb=memory_mb, network=network)
    env = sandbox_env(settings.env, tuple(security.redact_env_names), security.api_key_env_var)
    job = Job(code=code, limits=limits, env=env, inputs=input_files(files))
    executor, notice = choose(settings.executor, settings.image)
    outcome = run_docker(job, settings.image) if executor == "docker" else run_bwrap(job)
    return result_of(outcome, limits, executor, notice)


def choose(executor: str, image: str) -> tuple[str, str | None]:
    """The executor to use and the notice of a fallback; refuses when there is none."""
    if executor == "docker":
        problem = docker_problem(image)
        if problem is None:
            return "docker", None
        if bwrap_path() is not None:
            return "bwrap", f"docker: {problem}; ran in bwrap"
        raise SandboxUnavailableError(
            f"no sandbox to run code in: {problem}, and bubblewrap (bwrap) is not installed"
        )
    if bwrap_path() is None:
        raise SandboxUnavailableError(
            "no sandbox to run code in: bubblewrap (bwrap) is not installed",
            hint="`apt-get install bubblewrap` (or set security.sandbox.executor: docker)",
        )
    return "bwrap", None


def current_config() -> Any:
    """The loaded extension's session config in IPython, else the default config."""
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("MiraiMagics") if shell is not None else None
    if magics is not None:
        return magics.session.config
    from ..config import load_config

    return load_config()
