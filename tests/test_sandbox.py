"""Generated code attacks the sandbox (issue 14); each test asserts what the code could not do.

The same attacks run under every executor: bubblewrap (installed by `.ci/run`) and docker,
which is skipped with the reason when no daemon answers or its image is not present. The
code runs for real; nothing is mocked. Secrets are set in this process's environment, a
TCP server listens on 127.0.0.1, files sit in the notebook directory and in $HOME.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mirai_magics.config import parse_config
from mirai_magics.errors import ConfigError, MiraiError
from mirai_magics.sandbox import (
    SandboxRefusedError,
    SandboxUnavailableError,
    run,
)
from mirai_magics.sandbox.docker import docker_problem

KEY = "sk-test-sandbox-0123456789abcdef"
OTHER_SECRETS = {"GITHUB_TOKEN": "ghp_sandboxtest0123456789", "DB_PASSWORD": "hunter2-sandbox"}
IMAGE = "python:3.12-slim"


def bwrap_missing() -> str | None:
    return None if shutil.which("bwrap") else "bubblewrap (bwrap) is not installed"


@pytest.fixture(params=["bwrap", "docker"])
def executor(request) -> str:
    problem = docker_problem(IMAGE) if request.param == "docker" else bwrap_missing()
    if problem is not None:
        if request.param == "bwrap" and os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(f"{request.param}: {problem}")
    return request.param


@pytest.fixture
def secrets_set(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name, value in OTHER_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SANDBOX_DEMO_SETTING", "visible")


def config_for(executor: str, extra: str = ""):
    return parse_config(
        f"security: {{sandbox: {{executor: {executor}, env: [SANDBOX_DEMO_SETTING]{extra}}}}}"
    )


def sandboxed(executor: str, code: str, *, extra: str = "", **kwargs):
    result = run(code, config=config_for(executor, extra), **kwargs)
    assert result.executor == executor
    return result


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def sandbox_processes(within_s: float = 3.0) -> list[str]:
    """Live processes on this host that run sandboxed code (zombies excluded), once the
    kernel has had ``within_s`` to reap the ones just killed."""
    deadline = time.monotonic() + within_s
    while (found := _sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _sandbox_processes() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"/sandbox/main.py" in cmdline and state != "Z":
            found.append(cmdline.decode(errors="replace"))
    return found


# --- attacks ------------------------------------------------------------------------------


def test_code_sees_neither_the_api_key_nor_any_secret_named_variable(executor, secrets_set):
    code = """
import json, os
seen = dict(os.environ)
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        seen[pid] = open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')
    except OSError:
        pass
print(json.dumps(seen))
"""
    result = sandboxed(executor, code)
    assert result.ok, result
    seen = json.loads(result.stdout)
    assert "OPENAI_API_KEY" not in seen
    assert not [n for n in seen if any(p in n for p in ("KEY", "TOKEN", "SECRET", "PASSWORD"))]
    for secret in (KEY, *OTHER_SECRETS.values()):
        assert secret not in result.stdout  # nor in any process's environment inside
    assert seen["SANDBOX_DEMO_SETTING"] == "visible"  # the whitelist is what gets in


def test_code_cannot_reach_a_server_on_loopback_nor_resolve_names(executor):
    listener = Listener()
    code = f"""
import socket
try:
    socket.create_connection(('127.0.0.1', {listener.port}), timeout=3)
    print('connected')
except OSError as exc:
    print('connect failed', type(exc).__name__)
try:
    socket.getaddrinfo('example.com', 443)
    print('resolved')
except OSError as exc:
    print('resolve failed', type(exc).__name__)
"""
    result = sandboxed(executor, code)
    assert "connect failed" in result.stdout and "resolve failed" in result.stdout
    assert listener.accepted == 0


def test_network_is_refused_unless_the_config_allows_it(executor):
    listener = Listener()
    with pytest.raises(SandboxRefusedError, match="allow_network"):
        sandboxed(executor, "print(1)", network=True)
    if executor == "docker":
        return  # a container's 127.0.0.1 is its own: the test server is not reachable
    code = f"import socket; socket.create_connection(('127.0.0.1', {listener.port})); print('ok')"
    allowed = sandboxed(executor, code, extra=", allow_network: true", network=True)
    assert allowed.stdout.strip() == "ok" and listener.accepted == 1  # the switch is real


def test_code_cannot_read_the_notebook_dir_or_home(executor, tmp_path, monkeypatch):
    notebook, home = tmp_path / "notebook", tmp_path / "home"
    notebook.mkdir(), home.mkdir()
    (notebook / "data.csv").write_text("notebook-secret-1234\n")
    (home / ".netrc").write_text("home-secret-5678\n")
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    monkeypatch.chdir(notebook)
    monkeypatch.setenv("HOME", str(home))
    targets = [str(notebook / "data.csv"), str(home / ".netrc"), "data.csv", real_home]
    code = f"""
import os
for path in {targets!r}:
    try:
        print(path, 'READ', os.listdir(path) if os.path.isdir(path) else open(path).read())
    except OSError as exc:
        print(path, 'refused', type(exc).__name__)
print('cwd', os.getcwd(), sorted(os.listdir('.')))
"""
    result = sandboxed(executor, code)
    assert "READ" not in result.stdout
    assert "secret" not in result.stdout
    assert "cwd /work []" in result.stdout  # a fresh, empty work dir


def test_code_cannot_write_outside_its_work_dir(executor, tmp_path, monkeypatch):
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    given = notebook / "input.txt"
    given.write_text("original")
    monkeypatch.chdir(notebook)
    targets = [str(notebook / "dropped.txt"), "/usr/dropped", "/etc/dropped", "/dropped"]
    targets += ["/sandbox/main.py", "/work/input.txt", str(Path(sys.prefix) / "dropped")]
    code = f"""
for path in {targets!r}:
    try:
        open(path, 'w').write('x')
        print(path, 'WRITTEN')
    except OSError as exc:
        print(path, 'refused', type(exc).__name__)
open('result.txt', 'w').write('kept')
"""
    result = sandboxed(executor, code, files=[given])
    assert "WRITTEN" not in result.stdout, result.stdout
    assert result.files == {"result.txt": b"kept"}  # the work dir comes back, inputs do not
    assert sorted(p.name for p in notebook.iterdir()) == ["input.txt"]
    assert given.read_text() == "original"
    assert not Path(sys.prefix, "dropped").exists()


def test_an_infinite_loop_is_killed_at_the_timeout(executor):
    code = "open('progress.txt', 'w').write('started')\nprint('looping')\nwhile True:\n    pass\n"
    started = time.monotonic()
    result = sandboxed(executor, code, timeout_s=2)
    assert result.timed_out and result.killed_reason == "timeout 2 s"
    assert result.exit_code == -signal.SIGKILL
    assert 2 <= result.duration_s < 6 and time.monotonic() - started < 8
    assert result.stdout == "looping\n"  # what it printed before is kept
    assert result.files == {"progress.txt": b"started"}  # and what it wrote


def test_allocating_4_gb_is_stopped_by_the_memory_limit(executor):
    code = """
small = bytearray(100 * 1024 * 1024)
print('100 MB fine', flush=True)
huge = bytearray(4 * 1024 ** 3)
print('4 GB allocated')
"""
    result = sandboxed(executor, code)
    assert result.killed_reason == "memory limit 1024 MB"
    assert result.stdout == "100 MB fine\n"
    assert "4 GB allocated" not in result.stdout


def test_a_fork_bomb_is_stopped_by_the_process_limit(executor):
    # bounded even without the limit: 11 rounds of every process forking is 2**11 processes
    bomb = """
import os, time
main = os.getpid()
refused = 0
for _ in range(11):
    try:
        os.fork()
    except BlockingIOError:
        refused += 1
if os.getpid() != main:
    time.sleep(4)  # hold the slot while the main process counts
    os._exit(0)
time.sleep(0.5)
print(sum(name.isdigit() for name in os.listdir('/proc')))
"""
    result = sandboxed(executor, bomb, timeout_s=10)
    alive = int(result.stdout.split()[0])
    assert 60 <= alive <= 64 + 2  # the code's 64 and the sandbox's own two, never 2048
    assert sandbox_processes() == []  # nothing it started outlives the run
    chain = "import os, time\nn = 0\ntry:\n    while n < 5000:\n        if os.fork() == 0:\n"
    chain += "            time.sleep(3)\n            os._exit(0)\n        n += 1\n"
    chain += "finally:\n    print(n)\n"
    counted = sandboxed(executor, chain, timeout_s=10)
    assert counted.stdout.strip() == "63"  # the 64th process is refused
    assert counted.killed_reason == "process limit 64"
    assert "BlockingIOError" in counted.stderr


def test_a_file_past_the_work_dir_size_is_refused_and_the_dir_is_bounded(executor):
    code = "open('big.bin', 'wb').write(b'x' * 70 * 1024 * 1024)"  # disk_mb is 64
    single = sandboxed(executor, code)
    assert single.killed_reason == "file size limit 64 MB"
    many = "for i in range(10):\n    open(f'part{i}', 'wb').write(b'x' * 20 * 1024 * 1024)\n"
    filled = sandboxed(executor, many)
    assert filled.killed_reason == "disk limit 64 MB"
    assert sum(map(len, filled.files.values())) <= 64 * 1024 * 1024


def test_100_mb_of_output_is_capped_at_1_mb(executor):
    code = "import sys\nline = 'x' * 999 + '\\n'\n"
    code += "for _ in range(100_000):\n    sys.stdout.write(line)\n"  # 100 MB
    started = time.monotonic()
    result = sandboxed(executor, code)
    assert len(result.stdout.encode()) == 1024 * 1024
    assert result.truncated and result.killed_reason == "output limit 1 MB"
    assert "output truncated" in repr(result)
    assert time.monotonic() - started < 10


def test_the_code_cannot_signal_the_process_that_started_it(executor):
    me = os.getpid()
    code = f"""
import os, signal
for target in ({me}, {os.getppid()}):
    try:
        os.kill(target, signal.SIGKILL)
        print(target, 'sent')
    except OSError as exc:
        print(target, type(exc).__name__)
"""
    result = sandboxed(executor, code)
    assert f"{me} ProcessLookupError" in result.stdout or f"{me} PermissionError" in result.stdout
    assert os.getpid() == me  # and we are still here to check


# --- executors, refusals, results ----------------------------------------------------------


def test_with_neither_executor_it_refuses_in_one_line_and_runs_nothing(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    marker = tmp_path / "ran-unsandboxed"
    for executor in ("docker", "bwrap"):
        with pytest.raises(SandboxUnavailableError) as caught:
            run(f"open({str(marker)!r}, 'w')", config=config_for(executor))
        assert "apt-get install bubblewrap" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_docker_without_a_daemon_falls_back_to_bwrap_with_one_notice():
    problem = docker_problem(IMAGE)
    if problem is None:
        pytest.skip("a Docker daemon answers here, with the image: no fallback to show")
    if bwrap_missing():
        pytest.skip(bwrap_missing())
    result = run("print('hi')", config=config_for("docker"))
    assert result.executor == "bwrap" and result.stdout == "hi\n"
    assert result.notice == f"docker: {problem}; ran in bwrap"
    assert repr(result).count(problem) == 1


def test_a_secret_named_variable_in_the_whitelist_is_refused_at_load():
    with pytest.raises(ConfigError) as caught:
        parse_config("security: {sandbox: {env: [MPLBACKEND, GITHUB_TOKEN]}}")
    assert "sandbox.env[1]: GITHUB_TOKEN matches redact_env_names (TOKEN)" in str(caught.value)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is the API key variable"):
        parse_config("security: {sandbox: {env: [OPENAI_API_KEY]}}")


def test_a_disabled_sandbox_or_a_bad_option_runs_nothing(tmp_path):
    disabled = parse_config("security: {sandbox: {enabled: false}}")
    with pytest.raises(SandboxRefusedError, match="enabled is false"):
        run("print(1)", config=disabled)
    with pytest.raises(SandboxRefusedError, match="no such file"):
        run("print(1)", config=config_for("bwrap"), files=[tmp_path / "missing.csv"])
    with pytest.raises(MiraiError, match="timeout"):
        run("print(1)", config=config_for("bwrap"), timeout_s=0)


def test_input_files_are_read_only_in_the_work_dir(executor, tmp_path):
    data = tmp_path / "numbers.csv"
    data.write_text("1\n2\n3\n")
    code = "total = sum(map(int, open('numbers.csv')))\nopen('total.txt', 'w').write(str(total))"
    result = sandboxed(executor, code, files=[str(data)])
    assert result.ok and result.files == {"total.txt": b"6"}


def test_the_result_renders_as_a_compact_block_with_one_red_line_on_failure(executor):
    good = sandboxed(executor, "print('hello')\nopen('a.txt', 'w').write('abc')")
    text, page = repr(good), good._repr_html_()
    assert text.startswith("--- stdout\nhello")
    assert f"[sandbox] {executor} · exit 0 · " in text and "files: a.txt (3 B)" in text
    assert "✗" not in text and "hello" in page and "exit 0" in page
    bad = sandboxed(executor, "print('<b>x</b>')\n1 / 0")
    assert repr(bad).startswith("✗ exit 1: ZeroDivisionError: division by zero\n")
    assert bad._repr_html_().count("✗") == 1 and "&lt;b&gt;x&lt;/b&gt;" in bad._repr_html_()
    long = sandboxed(executor, "print('y' * 10_000)")
    assert "more characters, truncated" in repr(long) and len(long.stdout) == 10_001


def test_docker_command_isolates_as_the_issue_asks():
    from mirai_magics.sandbox.docker import docker_argv
    from mirai_magics.sandbox.job import Job
    from mirai_magics.sandbox.limits import BASE_ENV, Limits

    job = Job("print(1)", Limits(), dict(BASE_ENV), {"data.csv": Path("/x/data.csv")})
    argv = docker_argv("docker", job, IMAGE, "mirai-sandbox-t", Path("/stage"))
    line = " ".join(argv)
    for part in ("run --rm", "--network none", "--read-only", "--user 65534:65534"):
        assert part in line
    for part in ("--memory 1024m", "--pids-limit 66", "--cpus 1", "--cap-drop ALL"):
        assert part in line
    assert "-v /x/data.csv:/work/data.csv:ro" in line and argv.count(IMAGE) == 1
    assert "pull" not in argv


def test_the_readme_example_runs():
    result = run("print(sum(range(10)))", timeout_s=5)
    assert result.stdout == "45\n" and result.exit_code == 0 and result.killed_reason is None


def test_load_ext_imports_no_sandbox_and_the_attribute_loads_it():
    import subprocess

    probe = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'mirai_magics')\n"
        "before = 'mirai_magics.sandbox' in sys.modules\n"
        "import mirai_magics\n"
        "print(before, mirai_magics.sandbox.run.__module__)\n"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert shown.stdout.split() == ["False", "mirai_magics.sandbox"], shown.stderr


def test_what_comes_out_of_the_sandbox_is_not_trusted():
    from mirai_magics.sandbox.frames import HEADER, FrameReader

    def frame(kind: bytes, payload: bytes) -> bytes:
        return HEADER.pack(kind, len(payload)) + payload

    stream = frame(b"o", b"0123456789abc") + frame(b"f", b'{"path": "../escape"}')
    stream += frame(b"d", b"x") + frame(b"f", b'{"path": "/etc/passwd"}') + frame(b"d", b"y")
    stream += frame(b"f", b'{"path": "ok.txt"}') + frame(b"d", b"123456")
    reader = FrameReader(max_output=10, max_file_bytes=4)
    for start in range(0, len(stream), 3):  # frames split anywhere by the pipe
        reader.feed(stream[start : start + 3])
    decoded = reader.decoded
    assert decoded.stdout == b"0123456789" and decoded.truncated
    assert decoded.files == {"ok.txt": bytearray(b"1234")}  # no path leaves the work dir
    reader.feed(HEADER.pack(b"o", 50_000_000))
    assert decoded.garbled == "frame of 50000000 bytes"
