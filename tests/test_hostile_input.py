"""Hostile input (issue 16, items 1–7): each bad value is one short line, nothing stored is lost.

A lone surrogate in a prompt, a value whose ``str()`` raises, ``--out get_ipython``, 30-digit
numbers, a directory to replay, a YAML alias bomb, ``-k -3`` and ``--model ''``: each is
refused (or carried through) with one line, the kernel and every later magic keep working,
and the calls logged around a bad one stay in ``calls.sqlite``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kernelutil import Kernel, server_kernel_env

from mirai_magics.calllog import CallLog, read_calls
from mirai_magics.client.records import CallRecord
from mirai_magics.config import load_config, parse_config
from mirai_magics.errors import ClientRequestError, ConfigError, UsageError
from mirai_magics.replay import Replay
from mirai_magics.server import OfflineServer
from mirai_magics.ui.cell import CellRequest, interpolated, request_from_args
from mirai_magics.ui.commands import COMMANDS
from mirai_magics.ui.interpolate import interpolate
from mirai_magics.ui.magics import MiraiMagics, _parse
from mirai_magics.ui.registry import Registry

KEY = "sk-test-hostile-0123456789abcdef"
QUIET = "context: {rag: {enabled: false}}\n"
CONFIG = parse_config(QUIET, "test.yaml")
SURROGATE = "abc\ud800def"
HUGE = "9" * 30


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


# --- 1. a lone surrogate in a prompt; a bad row in a batch ------------------------------


def test_a_lone_surrogate_in_a_prompt_loses_no_call_of_its_batch(make_session, caplog):
    session = make_session(QUIET)
    session.chat([{"role": "user", "content": "before"}], "main")
    with pytest.raises(ClientRequestError) as refused:  # the SDK cannot encode it either
        session.chat([{"role": "user", "content": SURROGATE}], "main")
    session.chat([{"role": "user", "content": "after"}], "main")
    session.flush_logs()

    rows = read_calls(session.call_logs[0].path, 10)
    assert [r["messages"][-1]["content"] for r in rows] == ["before", "abc\ufffddef", "after"]
    assert rows[1]["error_code"] == "client_error" and rows[0]["error"] is None
    assert one_line(refused.value)
    writers = ("mirai_magics.calllog", "mirai_magics.background")
    assert not [r for r in caplog.records if r.exc_info or r.name in writers]


def test_a_row_sqlite_refuses_is_dropped_alone_with_one_line(tmp_path, caplog):
    log = CallLog(tmp_path / "calls.sqlite")
    good = [CallRecord("main", "gpt-4o-mini", tokens_in=3) for _ in range(2)]
    bad = CallRecord("main", "gpt-4o-mini", tokens_in=2**70)  # over SQLite's 64 bits
    messages = [{"role": "user", "content": "hi"}]
    log.write_many([(good[0], messages, "a", None), (bad, messages, "b", None)])
    log.write_many([(good[1], messages, "c", None)])
    log.close()

    assert [r["id"] for r in read_calls(log.path, 10)] == [good[0].id, good[1].id]
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        f"mirai: call {bad.id} not logged: Python int too large to convert to SQLite INTEGER"
    ]
    assert not [r for r in caplog.records if r.exc_info]


# --- 2. {value} whose str() fails --------------------------------------------------------


class Loud:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class NotText:
    def __str__(self):
        return 42


class Tricky:
    @property
    def boom(self) -> str:
        raise RuntimeError("property failed")

    def __getitem__(self, key):
        raise RuntimeError("getitem failed")


def test_a_value_without_text_stays_literal_and_is_listed_on_the_badge():
    ns = {"bad": Loud(), "odd": NotText(), "obj": Tricky(), "big": 10**5000, "ok": "fine"}
    text = "{ok} {bad} {odd} {obj.boom} {obj[0]} {big}"
    result = interpolate(text, ns)
    assert result.text == "fine {bad} {odd} {obj.boom} {obj[0]} {big}"
    assert result.undefined == ["bad", "odd", "obj.boom", "obj[0]", "big"]

    request = CellRequest(text=text, profile="main", fmt="text", overrides={})
    assert interpolated(request, ns) == result.text
    assert request.flags == ["undefined: {bad}, {odd}, {obj.boom}, {obj[0]}, {big}"]


# --- 3. --out names the shell needs ------------------------------------------------------


def cell_args(**given) -> SimpleNamespace:
    names = ("profile", "model", "temperature", "max_tokens", "format", "system", "out", "k")
    flags = dict.fromkeys(("no_history", "no_memory", "no_interp"), False)
    return SimpleNamespace(**{**dict.fromkeys(names), "stream": None, **flags, **given})


SHELL_NAMES = "get_ipython In Out exit quit _ __ ___ _i _ii _iii _i7 _ih _oh _o _dh _7"
OTHER_TAKEN = "print len open class None a-b 1x"


@pytest.mark.parametrize("name", (SHELL_NAMES + " " + OTHER_TAKEN).split())
def test_out_refuses_names_the_shell_needs(name):
    with pytest.raises(UsageError) as refused:
        request_from_args(cell_args(out=name), "hi", CONFIG)
    assert f"--out {name}" in one_line(refused.value) or repr(name) in str(refused.value)


def test_batch_out_refuses_them_too():
    with pytest.raises(UsageError) as refused:
        parse("batch", "xs", "--out", "get_ipython")
    assert "--out get_ipython would replace a name the notebook needs" in one_line(refused.value)


@pytest.mark.parametrize("name", ["answer", "facts_2", "df_summary", "_private", "Output"])
def test_out_takes_ordinary_names(name):
    assert request_from_args(cell_args(out=name), "hi", CONFIG).out == name


# --- 4 and 7. numeric and name arguments -------------------------------------------------


def parse(*words: str) -> dict:
    entry = COMMANDS
    while isinstance(entry, Registry):
        entry, words = entry.find(words[0]), words[1:]
    return vars(entry.parse(list(words)))


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["log", "-n", HUGE],
            f"needs a whole number up to 1,000,000, got '{HUGE}'",
        ),
        (
            ["memory", "forget", HUGE],
            f"needs a cell number (0–1,000,000) or all, got '{HUGE}'",
        ),
        (["memory", "forget", "-3"], "needs a cell number (0–1,000,000) or all"),
        (
            ["memory", "search", "x", "-k", "101"],
            "needs a whole number 0–100, got '101'",
        ),
        (
            ["memory", "search", "x", "-k", "-3"],
            "needs a whole number 0–100, got '-3'",
        ),
        (["jobs", "-n", HUGE], "needs a whole number up to 1,000,000"),
        (["run", HUGE], "needs a whole number up to 1,000,000"),
        (["metrics", "--port", "9" * 5000], "needs a number 0–65535"),
        (["log", "-n", "²"], "needs a whole number, got '²'"),
        (
            ["batch", "xs", "--max-tokens", "0"],
            "needs a whole number 1–10,000,000",
        ),
    ],
)
def test_line_command_numbers_are_bounded(words, message):
    with pytest.raises(UsageError) as refused:
        parse(*words)
    assert message in one_line(refused.value)


def test_bounded_numbers_still_parse():
    assert parse("log", "-n", "1000000")["limit"] == 1_000_000
    assert parse("memory", "forget", "0012")["what"] == "0012"
    assert parse("memory", "forget", "all")["what"] == "all"
    assert parse("memory", "search", "q", "-k", "0")["k"] == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-k -3", "needs a whole number 0–100, got '-3'"),
        (f"-k {HUGE}", "needs a whole number 0–100"),
        ("--model ''", "needs a model name (e.g. gpt-4o-mini), got \"''\""),
        ("--model=", "needs a model name (e.g. gpt-4o-mini), got ''"),
        ("--model '  '", "needs a model name"),
        (f"--max-tokens {HUGE}", "needs a whole number 1–10,000,000"),
        ("--max-tokens -1", "needs a whole number 1–10,000,000"),
        ("-t nan", "needs a number 0–2, got 'nan'"),
        ("-t 1e999", "needs a number 0–2"),
        ("-t -0.5", "needs a number 0–2"),
    ],
)
def test_cell_magic_numbers_and_model_are_refused_in_one_line(line, message):
    with pytest.raises(ValueError) as refused:
        _parse(MiraiMagics.mirai, line, CONFIG)
    assert message in one_line(refused.value)


def test_cell_magic_takes_sane_values():
    args = _parse(MiraiMagics.mirai, "-k 0 -t 2 --max-tokens 50 --model llama3:8b", CONFIG)
    assert (args.k, args.temperature, args.max_tokens, args.model) == (0, 2.0, 50, "llama3:8b")
    assert _parse(MiraiMagics.mirai, "--model 'org/model-v1'", CONFIG).model == "org/model-v1"


def _parsers():
    yield "%%mirai", MiraiMagics.mirai.parser
    stack = [("%mirai", COMMANDS)]
    while stack:
        prefix, table = stack.pop()
        for name, entry in table.entries.items():
            if isinstance(entry, Registry):
                stack.append((f"{prefix} {name}", entry))
            else:
                yield f"{prefix} {name}", entry.parser


def test_no_argument_is_an_unbounded_int_or_float():
    unbounded = [
        (where, action.dest)
        for where, parser in _parsers()
        for action in parser._actions
        if action.type in (int, float)
    ]
    assert unbounded == []


# --- 5. replay from a directory ----------------------------------------------------------


def test_replay_from_a_directory_says_it_is_a_directory(tmp_path):
    (tmp_path / "calls.sqlite").write_bytes(b"")
    with pytest.raises(ConfigError) as refused:
        Replay(tmp_path).count()
    assert one_line(refused.value) == (
        f"replay path {tmp_path} is a directory — name the recording file in it "
        f"(e.g. {tmp_path / 'calls.sqlite'})"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        Replay(tmp_path / "missing.sqlite").count()


# --- 6. config files of any size and shape -----------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nine anchors, each a list of nine aliases of the one before: 9^9 values, ~0.5 KB."""
    rows = ['l0: &l0 ["lol"]']
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(rows) + "\n"


HOSTILE = {
    "alias bomb": (alias_bomb(), "YAML aliases expand to more than 10,000 values"),
    "alias cycle": ("models: &m {main: {name: x, use_cases: [*m]}}\n", "refers to its own anchor"),
    "deep flow": ("x: " + "[" * 900 + "]" * 900 + "\n", "nested deeper than 32 levels"),
    "deeper flow": (
        "x: " + "[" * 5000 + "]" * 5000 + "\n",
        "invalid YAML: exceeded maximum nesting",
    ),
    "bad YAML": ("x: [1, 2\n", "invalid YAML"),
    "deep block": (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(40)),
        "nested deeper than 32 levels",
    ),
    "many values": ("xs: [" + "1," * 400_000 + "1]\n", "more than 20,000 values"),
    "too large": ("# padding\n" * 110_000, "config file is over 1 MB"),
    "not a mapping": ("- 1\n- 2\n", "the top level must be a mapping, got list"),
    "5000 digits": ("x: " + "9" * 5000 + "\n", "a value YAML cannot read (Exceeds the limit"),
    "month 13": ("x: 2001-13-45\n", "a value YAML cannot read (month must be in 1..12)"),
    "bad timestamp": ("x: !!timestamp 'abc'\n", "a value YAML cannot read"),
    "unsafe tag": ("x: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", list(HOSTILE))
def test_any_config_file_gets_a_one_line_verdict_quickly(shape, tmp_path, monkeypatch):
    text, verdict = HOSTILE[shape]
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("MIRAI_CONFIG", str(path))
    with pytest.raises(ConfigError) as refused:
        load_config()
    assert verdict in one_line(refused.value)
    assert one_line(refused.value).startswith(str(path))


@pytest.mark.timeout(30)
def test_a_config_that_is_not_a_regular_utf8_file_is_refused(tmp_path, monkeypatch):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("ui: {default_format: caf\xe9}\n".encode("latin-1"))
    for path, verdict in [
        (fifo, "cannot read config file (not a regular file)"),
        (Path("/dev/zero"), "cannot read config file (not a regular file)"),
        (tmp_path, "cannot read config file (Is a directory)"),
        (latin, "not UTF-8 text (byte 24)"),
    ]:
        monkeypatch.setenv("MIRAI_CONFIG", str(path))
        with pytest.raises(ConfigError) as refused:
            load_config()
        assert one_line(refused.value).startswith(f"{path}: {verdict}")


@pytest.mark.timeout(60)
def test_check_config_judges_the_alias_bomb_in_one_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    env = {**os.environ, "MIRAI_CONFIG": str(bomb)}
    done = subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "alias bomb" in done.stderr


def test_a_refused_config_is_judged_again_once_it_changed(tmp_path, monkeypatch):
    path = tmp_path / "mirai.yaml"
    path.write_text("ui: {default_format: htmx}\n")
    monkeypatch.setenv("MIRAI_CONFIG", str(path))
    for _ in range(2):  # the second verdict is the remembered one, word for word
        with pytest.raises(ConfigError, match=r"ui\.default_format: must be 'markdown'"):
            load_config()
    stat = path.stat()
    path.write_text("ui: {default_format: json}\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert path.stat().st_size == stat.st_size
    assert load_config().ui.default_format == "json"


def test_an_interrupt_in_the_pre_run_cell_hook_is_not_followed_by_a_second_start(
    tmp_path, monkeypatch, capsys
):
    """IPython catches a Ctrl-C raised in pre_run_cell and runs the cell anyway; the cell's
    magic must not start the session (load the config) all over again."""
    from IPython.core.interactiveshell import InteractiveShell

    import mirai_magics

    path = tmp_path / "mirai.yaml"
    path.write_text("ui: {default_format: htm}\n")
    monkeypatch.setenv("MIRAI_CONFIG", str(path))
    monkeypatch.setenv("MIRAI_WARM", "0")
    shell = InteractiveShell.instance()
    mirai_magics.load_ipython_extension(shell)
    magics = mirai_magics._loaded[id(shell)]
    main = threading.main_thread().ident

    def slow_start() -> None:  # a warm-up still running: the hook waits for it, then Ctrl-C
        while not {"pre_run_cell", "session"} <= {
            frame.f_code.co_name for frame in _stack(sys._current_frames().get(main))
        }:
            time.sleep(0.001)  # polls the main thread's stack; no timer is waited for
        os.kill(os.getpid(), signal.SIGINT)

    try:
        magics._warming = threading.Thread(target=slow_start, daemon=True)
        magics._warming.start()
        shell.run_cell("%%mirai\nhello", store_history=False)
        first = capsys.readouterr().out
        shell.run_cell("%%mirai\nhello again", store_history=False)
        second = capsys.readouterr().out
    finally:
        mirai_magics.unload_ipython_extension(shell)
    assert first.strip().endswith("interrupted (Ctrl-C) while the session started — run again")
    assert "Traceback" not in first and "Error in callback" not in first
    assert "ui.default_format: must be" in second and "interrupted" not in second


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


# --- all of it in a real kernel ----------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with OfflineServer().start() as srv:
        yield srv


@pytest.mark.kernel
def test_hostile_cells_in_a_kernel_are_one_line_each_and_later_cells_work(server, tmp_path):
    env = server_kernel_env(server.url, tmp_path, QUIET, KEY)
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        k.run(f"s = {SURROGATE!r}")
        k.run(
            "ip = get_ipython()\n"
            "for body in ['first call', 'bad {s}', 'third call']:\n"
            "    ip.run_cell_magic('mirai', '--no-history', body)"
        )
        later = k.run(
            "get_ipython().magics_manager.registry['MiraiMagics'].session.flush_logs()\n"
            "print('later cell')"
        )
        refused = [
            k.run("%%mirai --out get_ipython\nhi"),
            k.run("%mirai log -n 99999999999999999999"),
            k.run("%mirai memory forget 99999999999999999999999999"),
            k.run(f"%mirai replay {tmp_path}"),
            k.run("%%mirai -k -3\nhi"),
            k.run("%%mirai --model ''\nhi"),
        ]
        after = k.run("%%mirai --no-history\nstill fine?")

    assert later.text == "later cell\n"
    rows = read_calls(tmp_path / ".mirai" / "calls.sqlite", 10)
    assert [r["messages"][-1]["content"] for r in rows] == [
        "first call",
        "bad abc\ufffddef",
        "third call",
    ]
    for execution in refused:
        assert execution.status == "ok" and "Traceback" not in execution.text
        assert execution.text.count("\n") == 1, execution.text
    assert "would replace a name the notebook needs" in refused[0].text
    assert "is a directory" in refused[3].text
    assert "Offline answer" in after.text


@pytest.mark.kernel
def test_an_alias_bomb_as_mirai_config_does_not_hang_the_first_cell(server, tmp_path):
    env = server_kernel_env(server.url, tmp_path, alias_bomb(), KEY)
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        first = k.run("%%mirai\nhello", timeout=30)
        second = k.run("%mirai status", timeout=30)
    for execution in (first, second):
        assert execution.text.count("\n") == 1 and "alias bomb" in execution.text
        assert "Traceback" not in execution.text
