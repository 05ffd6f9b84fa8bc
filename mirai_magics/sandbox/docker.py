"""The docker executor: ``docker run --rm --network none --read-only`` as a non-root user,
tmpfs work dir, memory/pids/cpu limits, only whitelisted variables; the image must already
be present (mirai never pulls)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .job import LAUNCHER_FILE, LAUNCHER_PATH, MAIN_PATH, Job, launcher_spec
from .limits import WORK_DIR
from .process import Outcome, supervise

USER = "65534:65534"
HELPERS = 2  # docker's init and the launcher
PROBE_TTL_S = 30.0
_probes: dict[str, tuple[float, str | None]] = {}


def docker_problem(image: str) -> str | None:
    """Why the docker executor cannot run now (no client, no daemon, no image), or None;
    the daemon's answer is remembered for half a minute."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    key = f"{docker} {image}"
    cached = _probes.get(key)
    if cached is not None and time.monotonic() - cached[0] < PROBE_TTL_S:
        return cached[1]
    problem = _probe(docker, image)
    _probes[key] = (time.monotonic(), problem)
    return problem


def _probe(docker: str, image: str) -> str | None:
    if _quiet([docker, "info", "--format", "{{.ServerVersion}}"]) != 0:
        return "no Docker daemon answers"
    if _quiet([docker, "image", "inspect", image]) != 0:
        return f"image {image} is not present locally (mirai never pulls: `docker pull {image}`)"
    return None


def _quiet(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, capture_output=True, timeout=5).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1


def docker_argv(docker: str, job: Job, image: str, name: str, staged: Path) -> list[str]:
    """The whole ``docker run`` command; ``staged`` holds the launcher and the code."""
    limits = job.limits
    size = f"size={limits.disk_mb}m"
    argv = [docker, "run", "--rm", "--name", name, "--init", "--user", USER]
    argv += [] if limits.network else ["--network", "none"]
    argv += ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    argv += ["--memory", f"{limits.memory_mb}m", "--memory-swap", f"{limits.memory_mb}m"]
    argv += ["--pids-limit", str(limits.max_processes + HELPERS), "--cpus", f"{limits.cpus:g}"]
    argv += ["--tmpfs", f"/tmp:rw,{size},mode=1777"]
    argv += ["--tmpfs", f"{WORK_DIR}:rw,exec,{size},uid=65534,gid=65534,mode=0700"]
    for name, inside in (("launch.py", LAUNCHER_PATH), ("main.py", MAIN_PATH)):
        argv += ["-v", f"{staged / name}:{inside}:ro"]
    for inside, host in job.inputs.items():
        argv += ["-v", f"{host.resolve()}:{WORK_DIR}/{inside}:ro"]
    for key, value in job.env.items():  # the whitelist: never a secret-named variable
        argv += ["-e", f"{key}={value}"]
    argv += ["--workdir", WORK_DIR, "--hostname", "sandbox", image]
    # docker's pids limit binds here; RLIMIT_NPROC would count every uid-65534 process
    spec = launcher_spec(job, nproc=None, pid_namespace=True)
    return [*argv, "python3", "-I", "-S", LAUNCHER_PATH, spec]


def run_docker(job: Job, image: str) -> Outcome:
    """Run the job in a fresh container; the backstop also `docker kill`s it."""
    docker = shutil.which("docker") or "docker"
    name = f"mirai-sandbox-{secrets.token_hex(6)}"
    with tempfile.TemporaryDirectory(prefix="mirai-sandbox-") as folder:
        staged = Path(folder)
        shutil.copyfile(LAUNCHER_FILE, staged / "launch.py")
        (staged / "main.py").write_text(job.code, encoding="utf-8")
        for path in staged.iterdir():
            path.chmod(0o644)
        staged.chmod(0o755)
        argv = docker_argv(docker, job, image, name, staged)

        def kill() -> None:
            _quiet([docker, "kill", name])

        return supervise(argv, job.limits, env=_client_env(), on_kill=kill)


def _client_env() -> dict[str, str]:
    """What the docker client needs to find its daemon; nothing else of the kernel's."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH")
    return {k: os.environ[k] for k in keep if k in os.environ}
