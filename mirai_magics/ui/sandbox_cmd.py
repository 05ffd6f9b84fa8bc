"""`%mirai run`, `%%mirai --format code --run` and `%%mirai_sandbox`: code goes to the sandbox
(never this kernel) and its result is shown under the cell.

The options shared by `%mirai run` and `%%mirai_sandbox` are declared once here; importing
this module costs nothing (the sandbox itself loads when code runs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic_arguments import argument, parse_argstring

from ..errors import MiraiError, UsageError
from .argtypes import bounded

MAX_TIMEOUT_S = 24 * 3600.0


def seconds(text: str) -> float:
    """argparse type: a number of seconds above 0, at most a day."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"needs seconds above 0, at most 86400, got {text!r}")
    return value


megabytes = bounded(16, 1024 * 1024)  # MB: 16 MB to 1 TB


SANDBOX_OPTIONS = (
    argument("--timeout", type=seconds, default=None, metavar="S", help="wall clock in seconds"),
    argument("--mem", type=megabytes, default=None, metavar="MB", help="memory limit in MB"),
    argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="copy a file into the work dir, read-only (repeatable)",
    ),
    argument("--net", action="store_true", help="network (needs sandbox.allow_network: true)"),
)


def sandbox_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the sandbox options, in this order, below ``@magic_arguments()``."""
    for option in reversed(SANDBOX_OPTIONS):
        func = option(func)
    return func


def run_command(magics: Any, args: argparse.Namespace) -> None:
    """`%mirai run [N]`: In[N], or the code the last `--format code` answer generated."""
    show_run(source_of(magics, args.cell), magics.session.config, args)


def run_cell_body(magics: Any, line: str, cell: str) -> None:
    """`%%mirai_sandbox [options]`: the cell body runs in the sandbox."""
    try:
        args = parse_argstring(magics.mirai_sandbox, line)
    except IPythonUsageError as exc:
        raise UsageError(str(exc).strip(), hint="`%%mirai_sandbox?` lists the options") from None
    if not cell.strip():
        raise UsageError("the cell is empty", hint="write Python below %%mirai_sandbox")
    show_run(cell, magics.session.config, args)


def check_run(args: argparse.Namespace, fmt: str) -> None:
    """`%%mirai --run` needs code to run, and a cell that waits for it."""
    if fmt != "code":
        raise UsageError("--run needs --format code", hint="%%mirai --format code --run")
    if args.background:
        raise UsageError("--run cannot be combined with --background")


def run_generated(code: str | None, config: Any) -> None:
    """`%%mirai --format code --run`: the generated code's sandboxed result, under the answer."""
    if code is None:
        from .render import show_error

        show_error("--run: the answer has no code block, so nothing ran")
        return
    show_run(code, config, None)


def source_of(magics: Any, number: int | None) -> str:
    """The code `%mirai run` means: In[N] as typed, or the last generated code."""
    if number is None:
        if magics.generated_code is None:
            raise UsageError(
                "no generated code to run yet",
                hint="answer a `%%mirai --format code` cell first, or `%mirai run N` for In[N]",
            )
        return magics.generated_code
    typed = magics.shell.history_manager.input_hist_raw
    if not 0 < number < len(typed):
        raise UsageError(f"no cell In[{number}]", hint=f"cells run so far: 1–{len(typed) - 1}")
    return python_of(typed[number])


def python_of(source: str) -> str:
    """A `%%mirai_sandbox` cell's body; any other cell as typed (magics do not run there)."""
    first, _, body = source.partition("\n")
    return body if first.startswith("%%mirai_sandbox") else source


def show_run(code: str, config: Any, args: argparse.Namespace | None) -> None:
    """Run in the sandbox and display the result block; a refusal is one red line."""
    from IPython.display import display

    from ..sandbox import run
    from .render import show_error

    options: dict[str, Any] = {}
    if args is not None:
        options = {"timeout_s": args.timeout, "memory_mb": args.mem, "network": args.net}
        options["files"] = args.file
    try:
        result = run(code, config=config, **options)
    except (MiraiError, OSError) as exc:
        show_error(str(exc))
        return
    display(result)
