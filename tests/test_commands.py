"""The `%mirai` subcommand table: parsers, `-h`, help pages, errors; the cells' UI defaults."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from IPython.core.magic_arguments import argument, magic_arguments

from mirai_magics.config import parse_config
from mirai_magics.errors import UsageError
from mirai_magics.ui.cell import request_from_args
from mirai_magics.ui.commands import COMMANDS
from mirai_magics.ui.defaults import CellDefaults
from mirai_magics.ui.magics import MiraiMagics
from mirai_magics.ui.registry import Registry
from mirai_magics.ui.status import status_rows
from mirai_magics.ui.widgets import model_picker, picker_state

CONFIG = parse_config("", "test.yaml")


def parse(*words: str) -> dict:
    """The arguments `%mirai WORDS…` would hand its handler."""
    entry = COMMANDS
    while isinstance(entry, Registry):
        entry, words = entry.find(words[0]), words[1:]
    return vars(entry.parse(list(words)))


def cell_args(**given) -> SimpleNamespace:
    """What the cell magic's parser returns when only ``given`` is on the line."""
    names = ("profile", "model", "temperature", "max_tokens", "format", "system", "out", "k")
    flags = dict.fromkeys(("no_history", "no_memory", "no_interp"), False)
    return SimpleNamespace(**{**dict.fromkeys(names), "stream": None, **flags, **given})


def test_the_cell_magic_help_lists_every_line_command():
    page = MiraiMagics.mirai.__doc__
    listed = page.split("line commands (")[1].splitlines()[1:]
    assert [row.split()[0] for row in listed] == list(COMMANDS.entries)
    assert "  memory   Search, inspect and feed the notebook memory." in listed
    assert "Examples::" in page and "--no-history" in page


def test_every_subcommand_has_a_usage_page():
    for name in COMMANDS.entries:
        assert COMMANDS.help_for([name]).startswith(f"usage: %mirai {name}")
    for name in ("search", "stats", "forget", "rebuild", "learn"):
        assert COMMANDS.help_for(["memory", name]).startswith(f"usage: %mirai memory {name}")


@pytest.mark.parametrize(
    ("words", "shown"),
    [
        (["log", "-h"], "usage: %mirai log [-n N] [--json]\n\nThe last calls in the call log"),
        (["memory", "--help"], "usage: %mirai memory search|stats|forget|rebuild|learn …"),
        (["memory", "search", "x", "-h"], "usage: %mirai memory search [-k N] [--all] [QUERY ...]"),
        (["metrics", "-h"], "  --port N  0 picks a free port"),
        (["help", "replay"], "usage: %mirai replay [--fallthrough] PATH|off|status"),
        (["-h"], "  status   Calls, errors, retries, latency, breakers, budgets"),
    ],
)
def test_dash_h_and_help_print_usage_and_run_nothing(words, shown, capsys):
    COMMANDS.run(None, words)  # None: a handler that ran would fail on it
    out = capsys.readouterr()
    assert shown in out.out and out.err == ""


def test_parsed_arguments_keep_the_old_spellings():
    assert parse("log") == {"limit": 10, "json": False}
    assert parse("log", "-n5") == {"limit": 5, "json": False}
    assert parse("log", "--json", "--limit", "3") == {"limit": 3, "json": True}
    assert parse("metrics", "--port=9464") == {"port": 9464, "stop": False}
    assert parse("metrics", "--stop") == {"port": None, "stop": True}
    assert parse("memory", "search", "sales", "-k", "3", "per region") == {
        "query": ["sales", "per region"],
        "k": 3,
        "all": False,
    }
    assert parse("replay", "off", "--fallthrough") == {"target": "off", "fallthrough": True}


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate' — usage: %mirai status|use|config|"),
        (["memory", "nope"], "unknown memory command 'nope' — usage: %mirai memory search|"),
        (["log", "--bogus"], "unrecognized arguments: --bogus — usage: %mirai log [-n N] [--json]"),
        (["log", "-n", "-3"], "-n needs a whole number, got '-3'"),
        (["metrics", "--port", "x"], "--port needs a number 0–65535, got 'x' — usage"),
        (["use"], "the following arguments are required: PROFILE — usage: %mirai use PROFILE"),
        (["status", "extra"], "unrecognized arguments: extra — usage: %mirai status"),
        (["help", "log", "more"], "log has no subcommands — usage: %mirai log"),
    ],
)
def test_bad_arguments_are_one_usage_error(words, message):
    with pytest.raises(UsageError) as error:
        COMMANDS.run(None, words)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_declared_subcommand_is_parsed_dispatched_and_listed(capsys):
    table = Registry("demo", "A demo table.")

    @table.register("greet")
    @magic_arguments()
    @argument("name", help="who to greet")
    @argument("--loud", action="store_true", help="shout")
    def greet(target, args):
        """Say hello to NAME."""
        target.append(args.name.upper() if args.loud else args.name)

    tools = table.group("tools", "Nested commands.")

    @tools.register("ping")
    def ping(target, args):
        """Answer pong."""
        target.append("pong")

    seen: list[str] = []
    table.run(seen, ["greet", "ada", "--loud"])
    table.run(seen, ["tools", "ping"])
    assert seen == ["ADA", "pong"]
    assert table.listing().splitlines() == [
        "subcommands:",
        "  greet  Say hello to NAME.",
        "  tools  Nested commands.",
    ]
    table.run(seen, ["greet", "-h"])
    assert capsys.readouterr().out.startswith("usage: %demo greet [--loud] name\n")
    with pytest.raises(ValueError, match="declared twice"):
        table.register("greet")(ping)


def test_loading_the_magics_imports_nothing_heavy():
    code = (
        "import sys, mirai_magics.ui.magics\n"
        "heavy = ('openai', 'usearch', 'ipywidgets', 'prometheus_client', 'numpy')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_cell_defaults_apply_to_their_profile_only():
    defaults = CellDefaults()
    picker_state(CONFIG, defaults, "creative", 0.9, 300)  # creative caps temperature at 0.4
    assert defaults == CellDefaults("creative", {"temperature": 0.4, "max_tokens": 300})
    request = request_from_args(cell_args(), "hi", CONFIG, defaults)
    assert (request.profile, request.overrides) == ("creative", defaults.overrides)
    request = request_from_args(cell_args(profile="fast", max_tokens=20), "hi", CONFIG, defaults)
    assert (request.profile, request.overrides) == ("fast", {"max_tokens": 20})
    picker_state(CONFIG, defaults, "reasoning", 0.5, None)  # reasoning takes no temperature
    assert defaults == CellDefaults("reasoning", {})
    assert request_from_args(cell_args(), "hi", CONFIG).profile == "main"  # no defaults: main


@pytest.mark.parametrize(
    ("profile", "summary"),
    [  # each profile's own seed values, whatever the previous choice was
        ("heavy", "heavy/gpt-4o, T=0.25, max_tokens=2500"),
        ("creative", "creative/gpt-4o, T=0.40, max_tokens=2000"),
        ("reasoning", "reasoning/o1-preview, T=–, max_tokens=4096"),
        ("fast", "fast/gpt-3.5-turbo, T=0.20, max_tokens=1200"),
    ],
)
def test_the_picker_loads_the_chosen_profiles_values(profile, summary):
    defaults = CellDefaults()
    dropdown, *_, shown = model_picker(CONFIG, defaults).children
    assert "next %%mirai → main/gpt-4o-mini, T=0.25, max_tokens=2000" in shown.value
    dropdown.value = profile
    assert f"next %%mirai → {summary}</code>" in shown.value
    assert defaults.profile == profile


def test_use_switches_the_shared_defaults_in_place(make_session, capsys):
    magics = SimpleNamespace(session=make_session(), defaults=CellDefaults())
    shared = magics.defaults  # as a displayed picker holds it
    picker_state(magics.session.config, shared, "heavy", 0.3, None)
    COMMANDS.run(magics, ["use", "fast"])
    assert shared == CellDefaults("fast", {})
    assert ("default profile", "fast") in status_rows(magics.session, shared)


def test_the_readme_lists_every_subcommand():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [name for name in COMMANDS.entries if f"`%mirai {name}" not in readme]
    assert not missing, f"README's command table lacks: {missing}"
