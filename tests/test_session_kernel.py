"""The magics' traitlets reach the Session, and the first call is warmed after %load_ext."""

from __future__ import annotations

import time

import pytest
from kernelutil import Kernel, kernel_env, server_kernel_env

from mirai_magics.server import OfflineServer

pytestmark = pytest.mark.kernel
KEY = "sk-test-session-kernel-0123456789abcdef"
MAGICS = "get_ipython().magics_manager.registry['MiraiMagics']"


@pytest.fixture(scope="module")
def server():
    with OfflineServer().start() as srv:
        yield srv


def badge(execution) -> str:
    return [t for t in execution.data("text/plain") if t.startswith("[mirai] ")][-1]


def history_sent(server) -> int:
    roles = [m["role"] for m in server.stats_snapshot()["recent"][-1]["body"]["messages"]]
    return roles.count("user") + roles.count("assistant") - 1


def test_config_path_traitlet_is_what_reload_reads(server, tmp_path):
    env = server_kernel_env(server.url, tmp_path, "context: {rag: {enabled: false}}\n", KEY)
    other = tmp_path / "other.yaml"
    other.write_text("context: {rag: {enabled: false}, max_history_messages: 2}\n")
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        for i in range(3):
            k.run(f"%%mirai\nquestion {i}")
        assert history_sent(server) == 4
        k.run(f"%config MiraiMagics.config_path = {str(other)!r}")
        note = k.run("%mirai reload").text
        assert "other.yaml" in note
        k.run("%%mirai\nafter the reload")
        assert history_sent(server) == 2  # the new file's limit, not the old one's 12


def test_memory_enabled_false_stops_retrieval_not_only_indexing(tmp_path):
    every_cell_hits = "context: {rag: {min_score: -1.0}}\n"
    (tmp_path / "mirai.yaml").write_text(every_cell_hits)
    env = kernel_env(MIRAI_HOME=str(tmp_path / ".mirai"), MIRAI_CONFIG=str(tmp_path / "mirai.yaml"))
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        k.run("def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)")
        assert "memory: 1 cell" in badge(k.run("%%mirai\nHow does fibonacci work?"))
        k.run("%config MiraiMagics.memory_enabled = False")
        off = badge(k.run("%%mirai\nHow does fibonacci work?"))
        assert "memory" not in off  # no retrieval (the badge said `memory: 1 cell` before)
        k.run("%config MiraiMagics.memory_enabled = True")
        assert "memory: " in badge(k.run("%%mirai\nHow does fibonacci work?"))


def wait_for(k: Kernel, expression: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = k.run(f"print({expression})").text.strip()
        if out == "True":
            return out
        time.sleep(0.1)
    raise AssertionError(f"{expression} stayed false for {timeout_s} s")


def test_load_ext_warms_the_first_call_in_the_background(tmp_path):
    env = kernel_env(MIRAI_HOME=str(tmp_path / ".mirai"))
    with Kernel(tmp_path, env) as k:
        loaded = k.run("%load_ext mirai_magics")
        assert loaded.status == "ok" and not loaded.text.strip()  # nothing printed
        # no %mirai yet: the session, its SDK client and the offline server get ready anyway
        wait_for(k, f"{MAGICS}._session is not None and {MAGICS}._session._client is not None")
        assert k.run("import sys; print('openai' in sys.modules)").text.strip() == "True"
        first = k.run("%%mirai\nhello")
        assert badge(first).startswith("[mirai] main/gpt-4o-mini") and "offline" in badge(first)


def test_warm_up_with_a_bad_config_stays_silent_until_the_first_cell(tmp_path):
    (tmp_path / "bad.yaml").write_text("context: {max_history_mesages: 4}\n")
    env = kernel_env(MIRAI_HOME=str(tmp_path / ".mirai"), MIRAI_CONFIG=str(tmp_path / "bad.yaml"))
    with Kernel(tmp_path, env) as k:
        loaded = k.run("%load_ext mirai_magics\nimport time; time.sleep(1)")
        assert loaded.status == "ok" and not loaded.text.strip()
        failed = k.run("%%mirai\nhello")
        assert failed.status == "ok" and "max_history_mesages" in failed.text
        assert "Traceback" not in failed.text
        assert k.run("print(1 + 1)").text.strip() == "2"  # the kernel keeps going


def test_warm_up_can_be_turned_off(tmp_path):
    env = kernel_env(MIRAI_HOME=str(tmp_path / ".mirai"), MIRAI_WARM="0")
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics\nimport time; time.sleep(1)")
        checked = k.run(f"import sys; print({MAGICS}._session is None, 'openai' in sys.modules)")
        assert checked.text.strip() == "True False"
