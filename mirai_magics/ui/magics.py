"""The `%%mirai` cell magic and `%mirai` line magics (one @magics_class, IPython style)."""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
import traceback
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring
from traitlets import Bool, Unicode, observe

from ..errors import MiraiError
from .commands import COMMANDS
from .defaults import CellDefaults
from .sandbox_cmd import sandbox_options

FORMATS = ("markdown", "code", "text", "json")
WARM_UP_WAIT_S = 30.0


@magics_class
class MiraiMagics(Magics):
    """LLM calls from notebook cells through a resilient, observable session."""

    config_path = Unicode(
        None, allow_none=True, help="YAML config layered over the packaged defaults."
    ).tag(config=True)
    memory_enabled = Bool(True, help="Index executed cells and retrieve them into prompts.").tag(
        config=True
    )
    warm_up = Bool(
        True,
        help="After %load_ext, prepare the first call in a background thread (imports, SDK "
        "client, offline server, memory files); MIRAI_WARM=0 turns it off too.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._session: Any = None
        self._session_lock = threading.Lock()  # the warm-up thread and a cell may both ask
        self._warming: threading.Thread | None = None
        self.errors: dict[int, str] = {}  # Err[n]: traceback text of cell n
        self.defaults = CellDefaults()  # `%mirai use` and the picker: UI state, not the session's
        self.generated_code: str | None = None  # the last `--format code` answer's code

    @property
    def session(self) -> Any:
        """The notebook's Session, built on first use from ``config_path``/``memory_enabled``."""
        warming = self._warming
        if warming is not None and warming is not threading.current_thread():
            warming.join(WARM_UP_WAIT_S)  # finish the warm-up rather than race it for the GIL
            self._warming = None
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    from ..session import Session

                    self._session = Session(
                        config_path=self.config_path, memory=self.memory_enabled
                    )
        return self._session

    @observe("memory_enabled")
    def _memory_switched(self, change: Any) -> None:
        """`%config MiraiMagics.memory_enabled = False` stops retrieval at once, not at reload."""
        if self._session is not None:
            self._session.memory_switch = change["new"]

    def start_warm_up(self, *_: Any) -> threading.Thread | None:
        """Warm the first call in a daemon thread; ``load_ipython_extension`` has this run
        once, after the `%load_ext` cell finished (so that cell is not slowed down)."""
        with contextlib.suppress(ValueError):  # registered once by load_ipython_extension
            self.shell.events.unregister("post_run_cell", self.start_warm_up)
        if not self.warm_up or os.environ.get("MIRAI_WARM", "").strip() in ("0", "false", "off"):
            return None
        if self._session is not None:
            return None  # a %mirai in the same cell already started it
        thread = threading.Thread(target=self._warm, name="mirai-warm-up", daemon=True)
        self._warming = thread
        thread.start()
        return thread

    def _warm(self) -> None:
        try:
            from . import cell, render, stream  # noqa: F401  (the first cell's own imports)

            self.session.warm()
            _parse(self.mirai, "", self.session.config)  # builds the argument parser's caches
        except Exception:  # e.g. a config error: the first %%mirai cell reports it, with a hint
            pass

    @magic_arguments()
    # the leading newline keeps the rows indented: IPython's dedent skips a first line only
    @kwds(epilog="\n" + COMMANDS.listing("line commands (`%mirai help NAME` or `%mirai NAME -h`)"))
    @argument(
        "profile",
        nargs="?",
        default=None,
        help="profile name, or auto (routing picks main/heavy/fast); default: `%%mirai use`",
    )
    @argument("--model", default=None, help="override the profile's model")
    @argument("-t", "--temperature", type=float, default=None, help="sampling temperature")
    @argument("--max-tokens", type=int, default=None, dest="max_tokens", help="output cap")
    @argument("-f", "--format", choices=FORMATS, default=None, help="how to render the answer")
    @argument("--system", default=None, help="extra system instruction for this cell")
    @argument("--no-history", action="store_true", help="send no history and store none")
    @argument("--no-memory", action="store_true", help="do not retrieve earlier cells")
    @argument("-k", type=int, default=None, help="how many memory hits to add (default 4)")
    @argument(
        "--stream", dest="stream", action="store_true", default=None, help="stream the answer"
    )
    @argument("--no-stream", dest="stream", action="store_false", help="show the answer once")
    @argument("--out", default=None, help="store the answer text in this variable")
    @argument("--no-interp", action="store_true", help="send {braces} literally")
    @argument(
        "--background",
        "--bg",
        action="store_true",
        help="return at once; the answer appears here when done (`%%mirai jobs`)",
    )
    @argument("--run", action="store_true", help="with --format code: run it in the sandbox too")
    @no_var_expand  # `%mirai batch xs -t "{item}"`: braces are ours, not IPython's
    @line_cell_magic
    def mirai(self, line: str, cell: str | None = None) -> Any:
        """Ask an LLM from a cell: `%%mirai [PROFILE] [options]`, the cell body is the prompt.

        Examples::

            %%mirai
            Explain what {df_name} contains and suggest three plots.

            %%mirai heavy --format code
            Refactor the function in {In[12]} to be vectorised.

            %%mirai --format json --out facts --no-history
            List three facts about {city} as JSON.

            %%mirai --format code --run
            Print the first ten primes.

        `{name}`, `{obj.attr}`, `{seq[0]}`, `{In[n]}`, `{Out[n]}` and `{Err[n]}` are filled in
        from the notebook; other braces stay as they are (`{{` escapes). The last reply is in
        `_mirai`. Without a cell body, `%mirai NAME …` runs one of the line commands below.
        """
        if cell is None:
            return self._line(line)
        try:
            args = _parse(self.mirai, line, self.session.config)
            from .cell import request_from_args, run_cell

            request = request_from_args(args, cell, self.session.config, self.defaults)
            if args.run:
                from .sandbox_cmd import check_run

                check_run(args, request.fmt)
            if args.background:
                from .jobs_cmd import start_background

                start_background(request, self.session, self.namespace())
                return None
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line; bugs: traceback
            return _fail(exc)
        reply = run_cell(request, self.session, self.shell, self.namespace())
        if request.code is not None:
            self.generated_code = request.code
        if args.run and reply is not None:
            from .sandbox_cmd import run_generated

            run_generated(request.code, self.session.config)
        return None  # the reply is in `_mirai`; returning it would add an Out[] entry

    @magic_arguments()
    @sandbox_options
    @no_var_expand
    @cell_magic
    def mirai_sandbox(self, line: str, cell: str) -> None:
        """Run the cell in the sandbox (docker or bubblewrap), never in this kernel.

        The code sees no secrets, no network, no notebook folder and no $HOME; it has a
        fresh work dir, a wall clock, and memory, process and output limits
        (`security.sandbox`). The result shows exit code, duration, output and files.

        Example::

            %%mirai_sandbox --timeout 5
            import os
            print(os.environ.get("OPENAI_API_KEY"))  # None
        """
        from .sandbox_cmd import run_cell_body

        try:
            run_cell_body(self, line, cell)
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line
            _fail(exc)

    def _line(self, line: str) -> Any:
        """`%mirai NAME ARGS…` through the subcommand table (commands.py); no words: help.
        What a command returns is the magic's value (``x = %mirai jobs result ID``)."""
        try:
            return COMMANDS.run(self, shlex.split(line) or ["help"])
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line; bugs: traceback
            return _fail(exc)

    # --- hooks and lifecycle ---------------------------------------------------------

    def pre_run_cell(self, info: Any) -> None:
        """Note the running cell: memory never retrieves a cell as its own context."""
        from .memory_cmd import cell_started

        cell_started(self, info)

    def post_run_cell(self, result: Any) -> None:
        """Remember tracebacks for {Err[n]} and `%mirai fix` (cheap: no I/O, no engine)."""
        error = result.error_in_exec or result.error_before_exec
        count = result.execution_count
        if error is not None and count is not None:
            self.errors[count] = format_error(error)
        from .memory_cmd import cell_finished

        cell_finished(self, result)  # an enqueue: embedding runs on the engine thread

    def namespace(self) -> dict[str, Any]:
        """The user namespace with Err[n] on top, as `{…}` interpolation and `--out` see it."""
        ns = self.shell.user_ns
        return _LayeredNamespace(ns, {"Err": self.errors})

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class _LayeredNamespace(dict):
    """The user namespace with Err on top; writes go to the user namespace."""

    def __init__(self, user_ns: dict[str, Any], extra: dict[str, Any]):
        super().__init__(extra)
        self.user_ns = user_ns

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.user_ns

    def __getitem__(self, key: str) -> Any:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self.user_ns[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.user_ns[key] = value


def format_error(error: BaseException) -> str:
    """The traceback of a cell's error without IPython's own frames, capped in size."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if "IPython/core" not in f.filename
    ]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)[-8000:]


def _parse(func: Any, line: str, config: Any) -> Any:
    """parse_argstring, with errors that list the valid options and profiles."""
    try:
        return parse_argstring(func, line)
    except IPythonUsageError as exc:
        raise ValueError(
            f"{str(exc).strip()} — valid options: {_options(func.parser)}; profiles: "
            f"{', '.join(config.chat_profiles())}, auto"
        ) from None


def _options(parser: Any) -> str:
    """The cell magic's options as the parser knows them, e.g. ``-f/--format {markdown,…}``."""
    names = []
    for action in parser._actions:  # argparse keeps no public list of its options
        if not action.option_strings or action.dest == "help":
            continue
        flag = "/".join(action.option_strings)
        names.append(f"{flag} {{{','.join(action.choices)}}}" if action.choices else flag)
    return ", ".join(names)


def _fail(exc: BaseException) -> None:
    """Render any error raised before the call as one red line (the kernel keeps going)."""
    from .render import show_error

    show_error(str(exc) or type(exc).__name__)
