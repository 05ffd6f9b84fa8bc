"""JupyterLab for browser tests: temp root, random port and token, isolated Jupyter dirs."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Settings a fresh user profile would prompt for: no news toast, no update check.
USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
LAB_CONFIG = {
    "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
    "ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}},
}
KERNEL_NAME = "mirai-e2e"  # not "python3": the venv's own spec would shadow it
_SCRUBBED_PREFIXES = ("OPENAI_", "MIRAI_", "JUPYTER", "IPYTHON", "PYTHONSTARTUP")


@dataclass
class Lab:
    """A running JupyterLab: ``url`` (no trailing slash), ``token``, ``root`` (notebook dir)."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log_path: Path

    def page_url(self, notebook: str, workspace: str) -> str:
        """The URL that opens ``notebook`` alone in a fresh workspace."""
        return f"{self.url}/doc/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 20) -> None:
        """Shut down through the API (which also stops kernels), then terminate, then kill."""
        if self.process.poll() is None:
            try:
                self.api("/api/shutdown", method="POST")
            except (OSError, urllib.error.URLError):
                self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def lab_env(base: Path, extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without keys or Jupyter settings, with every dir under ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH", "")])]
    env.update(
        HOME=str(base / "home"),
        XDG_CONFIG_HOME=str(base / "home" / ".config"),
        XDG_CACHE_HOME=str(base / "home" / ".cache"),
        JUPYTER_CONFIG_DIR=str(base / "jupyter" / "config"),
        JUPYTER_DATA_DIR=str(base / "jupyter" / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "jupyter" / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "jupyter" / "workspaces"),
        IPYTHONDIR=str(base / "ipython"),
        MIRAI_HOME=str(base / "mirai"),
        MIRAI_METRICS_PORT="0",  # each kernel on a free port, not a race for 9090
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    env.update(extra)
    return env


def prepare_dirs(env: dict[str, str]) -> None:
    """Kernelspec for this Python, server config and user settings, all in the temp dirs."""
    data, config = Path(env["JUPYTER_DATA_DIR"]), Path(env["JUPYTER_CONFIG_DIR"])
    spec_dir = data / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    config.mkdir(parents=True)
    (config / "jupyter_server_config.json").write_text(json.dumps(LAB_CONFIG))
    for rel, settings in USER_SETTINGS.items():
        path = config / "lab" / "user-settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    for key in ("HOME", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MIRAI_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(base: Path, extra_env: dict[str, str], timeout: float = 90) -> Lab:
    """Start JupyterLab on 127.0.0.1 in ``base``/root and wait until its API answers."""
    env = lab_env(base, extra_env)
    prepare_dirs(env)
    root = base / "root"
    root.mkdir()
    token = secrets.token_hex(16)
    log_path = base / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--allow-root",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={free_port()}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    lab = Lab("", token, root, process, log_path)
    try:
        lab.url = _wait_for_url(lab, Path(env["JUPYTER_RUNTIME_DIR"]), timeout)
    except BaseException:
        lab.stop()
        raise
    return lab


def _wait_for_url(lab: Lab, runtime: Path, timeout: float) -> str:
    """The server's real URL (from its runtime file, which has the port it bound), once ready."""
    deadline = time.monotonic() + timeout
    info = runtime / f"jpserver-{lab.process.pid}.json"
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early:\n{lab.log_tail()}")
        if info.exists():
            try:
                url = json.loads(info.read_text())["url"].rstrip("/")
                urllib.request.urlopen(f"{url}/api/status?token={lab.token}", timeout=5).close()
                return url
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{lab.log_tail()}")
