"""A table of subcommands, each declared once with a magic_arguments parser.

Dispatch, `-h`, `%mirai help NAME`, the unknown-command line and the listing in `%%mirai?`
all read the same table, so they cannot drift apart. A group nests a second table
(`%mirai memory search …`). A usage error names the problem in the user's words
(``-n needs a whole number, got 'abc'``) and suggests the nearest command, option or choice
(``unknown command 'stauts' (did you mean status?)``).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic_arguments import MagicHelpFormatter, magic_arguments

from ..errors import UsageError
from ..text import clip

HELP_FLAGS = ("-h", "--help")
Handler = Callable[[Any, argparse.Namespace], Any]
_ARGUMENT = re.compile(r"argument (?P<name>[^:]+): (?P<problem>.*)", re.DOTALL)
_CHOICE = re.compile(r"invalid choice: (?P<value>.*?) \(choose from (?P<choices>.*)\)")
_BUILTIN_TYPE = re.compile(r"invalid (?P<type>int|float) value: (?P<value>.*)")


class _Formatter(MagicHelpFormatter):
    """IPython's layout for magic help, with a plain ``usage: %mirai NAME …`` line."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str = "usage: %") -> None:
        super().add_usage(usage, actions, groups, prefix)


@dataclass(frozen=True)
class Subcommand:
    """One `%PROG NAME …`: a handler ``(target, args)`` and the parser its decorators built."""

    name: str
    handler: Handler
    parser: argparse.ArgumentParser

    @property
    def summary(self) -> str:
        return _first_line(self.parser.description)

    def usage(self) -> str:
        return clip(self.parser.format_usage())

    def help(self) -> str:
        return self.parser.format_help().rstrip()

    def parse(self, words: list[str]) -> argparse.Namespace:
        """The parsed arguments; a bad one is a UsageError carrying the usage line."""
        try:
            return self.parser.parse_intermixed_args(words)
        except IPythonUsageError as exc:  # MagicArgumentParser raises instead of exiting
            problem = explain(str(exc).strip(), option_strings(self.parser))
            raise UsageError(problem, hint=self.usage()) from None

    def run(self, target: Any, words: list[str]) -> Any:
        if any(word in HELP_FLAGS for word in words):
            return print(self.help())
        return self.handler(target, self.parse(words))


class Registry:
    """Subcommands by name in declaration order; a group is a nested Registry."""

    def __init__(self, prog: str, description: str, noun: str = "command") -> None:
        self.prog, self.description, self.noun = prog, description, noun
        self.entries: dict[str, Subcommand | Registry] = {}

    def register(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: declare `%PROG NAME`; the docstring's first line is its summary."""

        def decorate(handler: Handler) -> Handler:
            if not hasattr(handler, "parser"):  # no arguments: an empty parser still rejects extras
                handler = magic_arguments()(handler)
            parser = handler.parser  # type: ignore[attr-defined]
            parser.prog, parser.formatter_class = f"{self.prog} {name}", _Formatter
            self._add(name, Subcommand(name, handler, parser))
            return handler

        return decorate

    def group(self, name: str, description: str) -> Registry:
        """Declare `%PROG NAME SUB …`: a nested table whose entries are registered on it."""
        group = Registry(f"{self.prog} {name}", description, noun=f"{name} command")
        self._add(name, group)
        return group

    def _add(self, name: str, entry: Subcommand | Registry) -> None:
        if name in self.entries:
            raise ValueError(f"subcommand {name!r} is declared twice")
        self.entries[name] = entry

    @property
    def summary(self) -> str:
        return _first_line(self.description)

    def listing(self, title: str = "subcommands") -> str:
        """``title:`` then one line per entry: name and summary."""
        width = max(map(len, self.entries))
        rows = [f"  {name.ljust(width)}  {entry.summary}" for name, entry in self.entries.items()]
        return "\n".join([f"{title}:", *rows])

    def usage(self) -> str:
        return f"usage: %{self.prog} {'|'.join(self.entries)}"

    def help(self) -> str:
        return f"{self.usage()} …\n\n{self.description}\n\n{self.listing()}"

    def find(self, name: str) -> Subcommand | Registry:
        entry = self.entries.get(name)
        if entry is None:
            raise UsageError(
                f"unknown {self.noun} {name!r}{did_you_mean(name, self.entries)}",
                hint=f"{self.usage()} (`%{self.prog} NAME -h` for details)",
            )
        return entry

    def help_for(self, names: Iterable[str]) -> str:
        """The help of a (nested) entry, e.g. ``["memory", "search"]``."""
        entry: Subcommand | Registry = self
        for name in names:
            if not isinstance(entry, Registry):
                raise UsageError(f"{entry.name} has no subcommands", hint=entry.usage())
            entry = entry.find(name)
        return entry.help()

    def run(self, target: Any, words: list[str]) -> Any:
        """Dispatch ``NAME ARGS…`` to its entry; no words or ``-h`` prints this table."""
        if not words or words[0] in HELP_FLAGS:
            return print(self.help())
        return self.find(words[0]).run(target, words[1:])


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean status?)`` for the closest known spelling, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option spelling the parser accepts (``-n``, ``--limit``, …)."""
    return [s for action in parser._actions for s in action.option_strings]  # no public list


def explain(message: str, options: Iterable[str] = ()) -> str:
    """argparse's complaint in the user's words: ``-n needs a whole number, got 'abc'``,
    ``-f: 'jsn' is not one of text, json (did you mean json?)``, and for an option nobody
    declared the nearest one (``unrecognized arguments: --jsno (did you mean --json?)``)."""
    if message.startswith("unrecognized arguments: "):
        first = message.split(": ", 1)[1].split()[0]
        return message + (did_you_mean(first, options) if first.startswith("-") else "")
    matched = _ARGUMENT.fullmatch(message)
    if matched is None:
        return message
    name, problem = min(matched["name"].split("/"), key=len), matched["problem"]
    if choice := _CHOICE.fullmatch(problem):
        value = choice["value"].strip("'\"")
        choices = [c.strip().strip("'\"") for c in choice["choices"].split(",")]
        known = ", ".join(choices)
        return f"{name}: {value!r} is not one of {known}{did_you_mean(value, choices)}"
    if builtin := _BUILTIN_TYPE.fullmatch(problem):
        kind = "a whole number" if builtin["type"] == "int" else "a number"
        return f"{name} needs {kind}, got {builtin['value']}"
    if problem.startswith("expected one argument"):
        return f"{name} needs a value"
    return f"{name} {problem}"


def as_cell_magic(func: Any) -> None:
    """A line-cell magic's page with ``%%NAME …`` as its usage line (magic_arguments writes
    ``%NAME``): the cell form is the one these options belong to."""
    func.parser.prog = "%" + func.parser.prog.lstrip("%")
    func.__doc__ = func.parser.format_help()


def with_profiles(page: str, config: Any, auto: str = "") -> str:
    """``page`` with the config's chat profiles (name and model) before its line commands."""
    rows = [(name, config.chat_profile(name).model) for name in config.chat_profiles()]
    if auto:
        rows.append(("auto", auto))
    width = max(len(name) for name, _ in rows)
    table = "\n".join(
        [f"profiles ({config.source}):", *(f"  {n.ljust(width)}  {what}" for n, what in rows)]
    )
    head, sep, tail = page.partition("\nline commands (")
    return f"{head}\n{table}\n{sep}{tail}" if sep else f"{page.rstrip()}\n\n{table}\n"


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]
