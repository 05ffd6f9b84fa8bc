"""The `%%mirai` cell magic and `%mirai` line magics (one @magics_class, IPython style)."""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
import time
from typing import Any, NoReturn

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring
from traitlets import Bool, Enum, Unicode, default, observe

from ..errors import MiraiError
from .argtypes import hits, model_name, temperature, tokens
from .commands import COMMANDS
from .defaults import CellDefaults
from .fix import FailedCell, failed_cell
from .registry import as_cell_magic, with_profiles
from .sandbox_cmd import sandbox_options

FORMATS = ("markdown", "code", "text", "json")
WARM_UP_WAIT_S = 30.0
STRICT_ENV = "MIRAI_STRICT"


class _Strict(Exception):
    """Strict mode: ``error`` is on screen as a red line; the magic re-raises it as itself."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@magics_class
class MiraiMagics(Magics):
    """LLM calls from notebook cells through a resilient, observable session."""

    # the settings a notebook changes often; each applies from the next cell on (`%config`)
    config_path = Unicode(
        None,
        allow_none=True,
        help="YAML config layered over the packaged defaults; a change re-reads it at once "
        "(as `%mirai reload`).",
    ).tag(config=True)
    memory_enabled = Bool(True, help="Index executed cells and retrieve them into prompts.").tag(
        config=True
    )
    default_profile = Unicode(
        None,
        allow_none=True,
        help="Profile of a %%mirai cell that names none, as `%mirai use` sets it (a profile or "
        "auto); None: the config's ui.default_profile.",
    ).tag(config=True)
    default_format = Enum(
        FORMATS,
        None,
        allow_none=True,
        help="Format of a %%mirai cell without --format; None: the config's ui.default_format.",
    ).tag(config=True)
    stream = Bool(
        None,
        allow_none=True,
        help="Stream answers into the cell (a cell's --stream/--no-stream wins); None: "
        "MIRAI_STREAM, else the config's defaults.stream.",
    ).tag(config=True)
    raise_on_error = Bool(
        help="Strict mode: a failed %%mirai or %mirai raises after its red line, so Run All and "
        "`jupyter nbconvert --execute` stop (non-zero exit); default: MIRAI_STRICT=1 turns it on.",
    ).tag(config=True)
    warm_up = Bool(
        True,
        help="After %load_ext, prepare the first call in a background thread (imports, SDK "
        "client, offline server, memory files); MIRAI_WARM=0 turns it off too.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        # set before the traitlets load their config: their observers read these
        self._session: Any = None
        self._session_lock = threading.Lock()  # the warm-up thread and a cell may both ask
        self._warming: threading.Thread | None = None
        self.errors: dict[int, str] = {}  # Err[n]: traceback text of cell n
        self.failed_cell: FailedCell | None = None  # the last cell that raised (`%mirai fix`)
        self.defaults = CellDefaults()  # `%mirai use` and the picker: UI state, not the session's
        self.generated_code: str | None = None  # the last `--format code` answer's code
        self.noticed: set[str] = set()  # notices already shown once in this notebook
        self.cell_started: float | None = None  # the running cell's start: its wait counts
        super().__init__(shell=shell, **kwargs)
        from .displays import attach

        self.displays = attach(self.shell)  # Disp[n]: the image cell n displayed

    @property
    def session(self) -> Any:
        """The notebook's Session, built on first use from ``config_path``/``memory_enabled``."""
        if self._session is None and self.__dict__.pop("_start_interrupted", False):
            # see pre_run_cell
            raise MiraiError("interrupted (Ctrl-C) while the session started", hint="run again")
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

    @observe("config_path")
    def _config_switched(self, change: Any) -> None:
        """A new config file applies at once; a session not built yet reads it when it is."""
        if self._session is None:
            return
        try:
            new = change["new"]
            self.session.reload(new, memory=self.memory_enabled, default=new is None)
        except MiraiError as exc:  # the old config stays in force, and so does its path
            self.config_path = change["old"]
            _fail(exc)  # one red line (an observer has no cell frame to stop in strict mode)

    @observe("default_profile")
    def _profile_switched(self, change: Any) -> None:
        """The next cells' profile; an unknown one is one red line and changes nothing
        (checked once a config is loaded; before that, the first cell reports it)."""
        name = change["new"] or ""
        if name == self.defaults.profile:  # `%mirai use` and the picker set both
            return
        if name and self._session is not None:
            from .cell import check_profile

            try:
                check_profile(self._session.config, name)
            except MiraiError as exc:
                _fail(exc)
                self.default_profile = self.defaults.profile or None  # back: nothing changed
                return
        self.defaults.use(name)

    @default("raise_on_error")
    def _strict_from_env(self) -> bool:
        return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")

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
        metavar="PROFILE",
        help="a profile below, or auto (routing picks main/heavy/fast); default: `%%mirai use`",
    )
    @argument("--model", type=model_name, default=None, help="override the profile's model")
    @argument("-t", "--temperature", type=temperature, default=None, help="sampling temperature")
    @argument("--max-tokens", type=tokens, default=None, dest="max_tokens", help="output cap")
    @argument("-f", "--format", choices=FORMATS, default=None, help="how to render the answer")
    @argument("--system", default=None, help="extra system instruction for this cell")
    @argument("--no-history", action="store_true", help="send no history and store none")
    @argument("--no-memory", action="store_true", help="do not retrieve earlier cells")
    @argument("-k", type=hits, default=None, help="how many memory hits to add (default 4)")
    @argument(
        "--stream", dest="stream", action="store_true", default=None, help="stream the answer"
    )
    @argument("--no-stream", dest="stream", action="store_false", help="show the answer once")
    @argument("--out", default=None, help="store the answer in this variable (JSON: parsed)")
    @argument(
        "--schema",
        default=None,
        metavar="NAME",
        help="a pydantic model or JSON-schema dict: the answer becomes that type (strict JSON)",
    )
    @argument(
        "--retry-invalid",
        action="store_true",
        dest="retry_invalid",
        help="with --schema: re-ask once, with the error, when the answer does not match",
    )
    @argument("--no-interp", action="store_true", help="send {braces} literally")
    @argument(
        "--image", action="append", default=None, metavar="PATH", help="attach a PNG/JPEG file"
    )
    @argument("--detail", choices=("low", "high", "auto"), default=None, help="image detail level")
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

            %%mirai --schema Person --out p --retry-invalid
            Invent a person who lives in {city}.

            %%mirai --format code --run
            Print the first ten primes.

            %%mirai --detail low
            What trend does {fig} show?

        `{name}`, `{obj.attr}`, `{seq[0]}`, `{In[n]}`, `{Out[n]}` and `{Err[n]}` are filled in
        from the notebook; a figure, an image or `{Disp[n]}` (the plot cell n showed) is sent
        as an image. Other braces stay as they are (`{{` escapes). The last reply is in
        `_mirai`. Without a cell body, `%mirai NAME …` runs one of the line commands below.
        """
        try:
            value = self._line(line) if cell is None else self._cell(line, cell)
        except _Strict as failure:
            _reraise(failure.error)
        self.show_notices()
        return value

    def _cell(self, line: str, cell: str) -> Any:
        try:
            args = _parse(self.mirai, line, self.session.config)
            from .cell import request_from_args

            if args.schema is None:  # a typed answer is JSON whatever `%config` says
                args.format = args.format or self.default_format  # under the cell's own
            args.stream = self.stream if args.stream is None else args.stream
            config, namespace = self.session.config, self.namespace()
            request = request_from_args(args, cell, config, self.defaults, namespace)
            if args.run:
                from .sandbox_cmd import check_run

                check_run(args, request.fmt)
            if args.background:
                from .jobs_cmd import start_background

                start_background(request, self.session, self.namespace())
                return None
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line; bugs: traceback
            return self._show_failure(exc)
        reply = self.run_request(request)
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
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line (strict: raises)
            self._show_failure(exc)

    def _line(self, line: str) -> Any:
        """`%mirai NAME ARGS…` through the subcommand table (commands.py); no words: help.
        What a command returns is the magic's value (``x = %mirai status``)."""
        try:
            return COMMANDS.run(self, shlex.split(line) or ["help"])
        except (MiraiError, ValueError, OSError) as exc:  # bad input: one line; bugs: traceback
            return self._show_failure(exc)

    def run_request(self, request: Any) -> Any:
        """Run one cell request (a `%%mirai` cell, `%mirai fix`); its reply, or None when it
        failed (shown as a red line; in strict mode it then raises)."""
        from .cell import run_cell

        request.strict = self.raise_on_error
        # the cell's first call counts its setup too; a second call in a loop starts afresh
        request.started, self.cell_started = self.cell_started or request.started, None
        try:
            return run_cell(request, self.session, self.shell, self.namespace())
        except MiraiError as exc:  # strict mode: raised after its red line
            if not request.strict:
                raise
            raise _Strict(exc) from None

    def _show_failure(self, exc: BaseException) -> None:
        """Render an error raised before the call as one red line (the kernel keeps going);
        in strict mode it then raises."""
        _fail(exc)
        if self.raise_on_error:
            raise _Strict(exc) from None

    def show_notices(self) -> None:
        """Once per notebook, one line on what keeps a configured service off (e.g. a busy
        metrics port); `%mirai status` keeps showing it."""
        from .metrics_cmd import endpoint_notice
        from .render import show_note

        notice = endpoint_notice(self._session)
        if notice is not None and notice not in self.noticed:
            self.noticed.add(notice)
            show_note(notice)

    # --- hooks and lifecycle ---------------------------------------------------------

    def pre_run_cell(self, info: Any) -> None:
        """Note the running cell: memory never retrieves a cell as its own context."""
        from .memory_cmd import cell_started

        self.cell_started = time.monotonic()
        try:
            cell_started(self, info)  # may start the session: load the config, open memory
        except KeyboardInterrupt:
            # IPython catches an interrupt raised in this hook and runs the cell anyway: its
            # magic then says so in one line instead of starting the session all over again
            self._start_interrupted = self._session is None

    def post_run_cell(self, result: Any) -> None:
        """Remember tracebacks for {Err[n]} and `%mirai fix` (cheap: no I/O, no engine)."""
        self.__dict__.pop("_start_interrupted", None)  # it was meant for this cell only
        self.cell_started = None
        failed = failed_cell(result, self.shell)
        if failed is not None:
            self.errors[failed.count] = failed.traceback
            self.failed_cell = failed
        from .memory_cmd import cell_finished

        cell_finished(self, result)  # an enqueue: embedding runs on the engine thread

    def namespace(self) -> dict[str, Any]:
        """The user namespace with Err[n] and Disp[n] on top, as `{…}` interpolation and
        `--out` see it."""
        ns = self.shell.user_ns
        return _LayeredNamespace(ns, {"Err": self.errors, "Disp": self.displays})

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


as_cell_magic(MiraiMagics.mirai)  # the page's usage line reads `%%mirai …`, not `%mirai …`


def _help_page() -> str:
    """`%%mirai?`: IPython's inspector asks the magic for ``getdoc()``; the page then lists
    the profiles of this notebook's config (the file is read if no session exists yet)."""
    from IPython import get_ipython

    page = MiraiMagics.mirai.__doc__ or ""
    shell = get_ipython()
    magics = shell.magics_manager.registry.get("MiraiMagics") if shell is not None else None
    try:
        if magics is not None and magics._session is not None:
            config = magics._session.config
        else:
            from ..config import load_config

            config = load_config(magics.config_path if magics is not None else None)
        return with_profiles(page, config, auto="routing picks main, heavy or fast per cell")
    except Exception:  # a broken config: the plain page (the first cell names the problem)
        return page


MiraiMagics.mirai.getdoc = _help_page  # type: ignore[attr-defined]


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


def _reraise(error: BaseException) -> NoReturn:
    """Strict mode: raise the shown error as itself. IPython shows one line for it (through
    its ``_render_traceback_`` hook), not mirai's frames; the red line above has the details."""
    line = f"{type(error).__name__}: {error} (strict mode: the notebook stops here)"
    setattr(error, "_render_traceback_", lambda: [line])  # noqa: B010 (an instance hook)
    raise error.with_traceback(None) from None


def _parse(func: Any, line: str, config: Any) -> Any:
    """parse_argstring, with errors that list the valid options and profiles."""
    try:
        return parse_argstring(func, line)
    except IPythonUsageError as exc:
        from .registry import explain, option_strings

        problem = explain(str(exc).strip(), option_strings(func.parser))  # did you mean …?
        raise ValueError(
            f"{problem} — valid options: {_options(func.parser)}; profiles: "
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
