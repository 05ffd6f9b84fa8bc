"""A real Jupyter kernel for tests: run code, collect every iopub message, interrupt, restart."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

REPO = Path(__file__).resolve().parent.parent


def kernel_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus any real key, plus the source checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MIRAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("MIRAI_STREAM", "0")
    env.setdefault("MIRAI_METRICS_PORT", "0")  # a free port: kernels never race for 9090
    env.update(extra)
    return env


def server_kernel_env(server_url: str, home: Path, config_yaml: str, key: str) -> dict[str, str]:
    """A kernel pointed at a test's offline server, with its own config file and MIRAI_HOME."""
    (home / "mirai.yaml").write_text(config_yaml)
    return kernel_env(
        MIRAI_BASE_URL=server_url,
        OPENAI_API_KEY=key,
        MIRAI_CONFIG=str(home / "mirai.yaml"),
        MIRAI_HOME=str(home / ".mirai"),
    )


@dataclass
class Execution:
    """What one execute request produced on iopub."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.reply.get("status", "")

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def text(self) -> str:
        """All text/plain and stream output, in order."""
        parts = []
        for m in self.messages:
            content = m["content"]
            if m["msg_type"] == "stream":
                parts.append(content["text"])
            elif m["msg_type"] in ("display_data", "execute_result", "update_display_data"):
                parts.append(content["data"].get("text/plain", "") + "\n")
            elif m["msg_type"] == "error":
                parts.append(f"{content['ename']}: {content['evalue']}\n")
        return "".join(parts)

    def data(self, mime: str) -> list[Any]:
        return [
            m["content"]["data"][mime]
            for m in self.of_type("display_data", "execute_result")
            if mime in m["content"]["data"]
        ]


class Kernel:
    """A python3 kernel started in ``cwd`` with ``env``."""

    def __init__(self, cwd: str | os.PathLike[str], env: dict[str, str] | None = None):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env=env or kernel_env())
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 60, allow_error: bool = False) -> Execution:
        """Execute ``code`` and wait until the kernel is idle again."""
        msg_id = self.kc.execute(code)
        result = self.collect(msg_id, timeout)
        if result.status != "ok" and not allow_error:
            raise AssertionError(f"cell failed: {result.text}")
        return result

    def collect(self, msg_id: str, timeout: float = 60) -> Execution:
        result = Execution()
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            result.messages.append(msg)
        result.reply = self.kc.get_shell_msg(timeout=timeout)["content"]
        return result

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def restart(self) -> None:
        """A graceful restart, as the notebook's "Restart kernel" does (exit hooks run)."""
        self.km.restart_kernel(now=False)
        self.kc.wait_for_ready(timeout=60)

    def kill(self) -> None:
        """SIGKILL, as an out-of-memory killer would."""
        import signal

        self.km.signal_kernel(signal.SIGKILL)

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def kernel_fixtures(
    name: str, config_yaml: str, key: str, *, kernel_name: str = "kernel"
) -> tuple[Any, Any]:
    """Module-scoped ``server`` and ``kernel`` fixtures: an offline server, and a kernel on it
    with its own config and MIRAI_HOME and the extension loaded. In a test module::

        server, kernel = kernel_fixtures("typed", CONFIG, KEY)
    """
    import pytest

    from mirai_magics.server import OfflineServer

    @pytest.fixture(scope="module")
    def server() -> Any:
        with OfflineServer().start() as srv:
            yield srv

    @pytest.fixture(scope="module", name=kernel_name)
    def kernel(server: Any, tmp_path_factory: Any) -> Any:
        home = tmp_path_factory.mktemp(name)
        with Kernel(home, server_kernel_env(server.url, home, config_yaml, key)) as k:
            k.run("%load_ext mirai_magics")
            yield k

    return server, kernel
