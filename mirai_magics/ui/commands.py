"""Every `%mirai` subcommand, declared once: name, arguments, summary (docstring) and handler.

A handler gets the magics object and the parsed arguments; it imports what it needs when it
runs, so `%load_ext` stays light. Add one with `@subcommand("name")` plus `@magic_arguments()`
and `@argument(...)` lines (as on any IPython magic): dispatch, `-h` and the help pages follow.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments

from .argtypes import cell_number_or_all, count, hits, port, tokens, variable
from .registry import Registry
from .sandbox_cmd import sandbox_options

COMMANDS = Registry("mirai", "The line commands of mirai_magics (`%%mirai?` shows the cell magic).")
subcommand = COMMANDS.register
Args = argparse.Namespace


@subcommand("status")
def status(magics: Any, args: Args) -> Any:
    """Calls, errors, retries, latency, breakers, budgets and memory of this session.

    ``s = %mirai status`` keeps it as a dict (label → value).
    """
    from .metrics_cmd import endpoint_notice
    from .status import status_report

    report = status_report(magics.session, magics.defaults)
    notice = endpoint_notice(magics.session)
    if notice is not None:
        magics.noticed.add(notice)  # the table has it as its metrics row: no extra line
    return report


@subcommand("use")
@magic_arguments()
@argument("profile", metavar="PROFILE", help="a chat profile of the config (e.g. heavy), or auto")
def use(magics: Any, args: Args) -> None:
    """Make PROFILE the default of the next `%%mirai` cells; ``auto`` picks per cell.

    The picker's temperature and max-tokens choices are dropped with the old profile.

    Example::

        %mirai use heavy
        %mirai use auto
    """
    from .cell import check_profile
    from .render import show_note

    config = magics.session.config
    check_profile(config, args.profile)
    magics.defaults.use(args.profile)
    magics.default_profile = args.profile  # `%config MiraiMagics.default_profile` agrees
    show_note(f"default profile: {args.profile} ({_use_note(config, args.profile)})")


def _use_note(config: Any, profile: str) -> str:
    """What `%mirai use` says about the profile: its model, or how auto decides."""
    from ..client.routing import AUTO

    if profile != AUTO:
        return config.chat_profile(profile).model
    return f"routing picks main, heavy or fast per cell; classifier {config.routing.classifier}"


@subcommand("config")
def show_config(magics: Any, args: Args) -> None:
    """The effective configuration as JSON, secrets redacted."""
    import json

    from ..redact import redact_all

    print(redact_all(json.dumps(magics.session.config.redacted(), indent=2)))


@subcommand("models")
@magic_arguments()
@argument("endpoint", nargs="?", default=None, metavar="ENDPOINT", help="e.g. local (default: all)")
def models(magics: Any, args: Args) -> None:
    """The models each endpoint serves (GET /v1/models); * marks the ones profiles use.

    An endpoint that offers no list (404, 405) or cannot be reached gets one line saying so.

    Example::

        %mirai models
        %mirai models local
    """
    from .models_cmd import models_command

    models_command(magics.session, args.endpoint)


@subcommand("fix")
def fix(magics: Any, args: Args) -> None:
    """Ask `heavy` to explain the last error and correct the cell that raised it."""
    from .fix import fix_request, keep_out_of_memory

    failed = magics.failed_cell
    request = fix_request(failed)
    keep_out_of_memory(magics.session, failed)
    magics.run_request(request)


@subcommand("picker")
def picker(magics: Any, args: Args) -> None:
    """A panel (profile, temperature, max tokens) that sets the next cells' defaults."""
    from IPython.display import display

    from .widgets import model_picker

    panel = model_picker(magics.session.config, magics.defaults)

    def chosen(_change: Any = None) -> None:  # `%config MiraiMagics.default_profile` agrees
        magics.default_profile = magics.defaults.profile

    chosen()
    panel.children[0].observe(chosen, names="value")  # after the panel's own observer
    display(panel)  # displayed, not returned: no Out[] entry
    magics.shell.user_ns["_mirai_picker"] = panel


@subcommand("history")
def history(magics: Any, args: Args) -> Any:
    """The conversation history the next cell sends (``h = %mirai history``: the messages)."""
    from .status import history_listing

    return history_listing(magics.session.history.window())


@subcommand("reset")
def reset(magics: Any, args: Args) -> None:
    """Clear the conversation history."""
    from .render import show_note

    magics.session.history.clear()
    show_note("history cleared")


@subcommand("reload")
def reload(magics: Any, args: Args) -> None:
    """Re-read the config file and the API key (e.g. after rotating the key)."""
    from .render import show_note

    session = magics.session
    session.reload(magics.config_path, memory=magics.memory_enabled)
    source = session.config.source
    show_note(f"config and API key re-read from {source}; calls go to {_endpoint_note(session)}")


def _endpoint_note(session: Any) -> str:
    """Where calls go after a reload, and which setting says so."""
    from ..client.failures import url_setting

    endpoint = session.endpoint
    if endpoint.offline:
        return "the offline server on 127.0.0.1 (no API key and no base URL set)"
    if endpoint.base_url is None:
        return "api.openai.com (the SDK's default; MIRAI_BASE_URL or endpoint.base_url changes it)"
    return f"{endpoint.base_url} ({url_setting()})"


memory = COMMANDS.group("memory", "Search, inspect and feed the notebook memory.")


@memory.register("search")
@magic_arguments()
@argument("query", nargs="*", metavar="QUERY", help="e.g. how did we load the data")
@argument("-k", type=hits, default=None, metavar="N", help="hits (default: context.rag.top_k)")
@argument("--all", action="store_true", help="every notebook's cells, not only this one's")
def memory_search(magics: Any, args: Args) -> None:
    """The cells and learned files closest in meaning to QUERY, best first.

    Example::

        %mirai memory search "how did we load the data" -k 3
        %mirai memory search --all "the sales table"
    """
    from . import memory_cmd

    memory = memory_cmd.open_memory(magics)
    memory_cmd.search(memory, " ".join(args.query), args.k, everywhere=args.all)


@memory.register("stats")
def memory_stats(magics: Any, args: Args) -> None:
    """Entries, embedder, index and files of the memory."""
    from . import memory_cmd

    memory_cmd.stats(memory_cmd.open_memory(magics))


@memory.register("forget")
@magic_arguments()
@argument(
    "what",
    type=cell_number_or_all,
    metavar="N|all",
    help="the cell In[N], or all (a copy of the file is kept)",
)
def memory_forget(magics: Any, args: Args) -> None:
    """Drop one cell from the memory, or everything."""
    from . import memory_cmd

    memory_cmd.forget(memory_cmd.open_memory(magics), args.what)


@memory.register("rebuild")
def memory_rebuild(magics: Any, args: Args) -> None:
    """Rebuild the vector index from the stored entries."""
    from . import memory_cmd

    memory_cmd.rebuild(memory_cmd.open_memory(magics))


@memory.register("learn")
@magic_arguments()
@argument("pattern", nargs="*", metavar="PATH_OR_GLOB", help="files to index, e.g. 'docs/**/*.md'")
def memory_learn(magics: Any, args: Args) -> None:
    """Index text files (unchanged ones are skipped) so cells can retrieve them.

    Example::

        %mirai memory learn 'docs/**/*.md'
    """
    from . import memory_cmd

    memory_cmd.learn(memory_cmd.open_memory(magics), " ".join(args.pattern))


@subcommand("metrics")
@magic_arguments()
@argument("--port", type=port, default=None, metavar="N", help="0 picks a free port")
@argument("--stop", action="store_true", help="stop the endpoint")
def metrics(magics: Any, args: Args) -> None:
    """Serve this session's Prometheus metrics on 127.0.0.1 (idempotent), or stop them."""
    from .metrics_cmd import metrics_command

    metrics_command(magics.session, args.port, args.stop)


@subcommand("log")
@magic_arguments()
@argument("-n", "--limit", type=count, default=10, metavar="N", help="how many (default 10)")
@argument("--json", action="store_true", help="print the calls as JSON")
def log(magics: Any, args: Args) -> Any:
    """The last calls in the call log: time, cell, model, tokens, latency, outcome.

    ``calls = %mirai log -n 50`` keeps them as a list of dicts (one per call, oldest first).
    """
    from .log_cmd import show_log

    return show_log(magics.session, args.limit, args.json)


@subcommand("replay")
@magic_arguments()
@argument("target", metavar="PATH|off|status", help="a recording to answer from, off, or status")
@argument("--fallthrough", action="store_true", help="send calls not in the recording live")
def replay(magics: Any, args: Args) -> None:
    """Answer calls from a recording (strict unless --fallthrough), stop, or show it."""
    from .log_cmd import replay_command

    replay_command(magics.session, args.target, args.fallthrough)


@subcommand("jobs")
@magic_arguments()
@argument(
    "action",
    nargs="?",
    default="list",
    choices=["list", "wait", "cancel", "result"],
    help="list (default), wait [ID], cancel ID, result [ID]",
)
@argument("id", nargs="?", default=None, metavar="ID", help="a job id (default: the latest)")
@argument("-n", "--limit", type=count, default=20, metavar="N", help="jobs listed (default 20)")
def jobs(magics: Any, args: Args) -> Any:
    """Background cells and batches: list, wait for, cancel, or get the result of one.

    ``x = %mirai jobs result ID`` gives the result as a Python object (a batch: its list or
    Series of results; a cell: its ItemResult); ``x = %mirai jobs`` the jobs as dicts.

    Example::

        %mirai jobs
        %mirai jobs wait
        answers = %mirai jobs result b1f2c3d
    """
    from .jobs_cmd import job_id_or_latest, job_result, jobs_listing
    from .render import show_note

    session = magics.session
    if args.action == "list":
        return jobs_listing(session, args.limit)
    if args.action == "cancel" and not args.id:
        from ..errors import UsageError

        raise UsageError("jobs cancel needs a job id", hint="`%mirai jobs` lists them")
    job_id = job_id_or_latest(session, args.id)
    if args.action == "wait":
        row = session.jobs.wait(job_id)
        return show_note(
            f"job {job_id}: {row.state}, {row.settled}/{row.total} done, {row.failed} failed"
        )
    if args.action == "cancel":
        row = session.jobs.cancel(job_id)
        return show_note(f"job {job_id}: {row.state} ({row.settled}/{row.total} had finished)")
    return job_result(session, job_id)


@subcommand("batch")
@magic_arguments()
@argument("target", metavar="VAR|resume", help="a list or Series variable, or resume")
@argument("id", nargs="?", default=None, metavar="ID", help="with resume: the batch's job id")
@argument("-p", "--profile", default=None, help="profile (default: the cells' default)")
@argument("-t", "--template", default=None, help="prompt template over {item} / {item.field}")
@argument("-f", "--format", default="text", choices=["text", "json", "markdown", "code"])
@argument("--max-tokens", type=tokens, default=None, dest="max_tokens", help="output cap per item")
@argument("--out", type=variable, default=None, help="also store the results in this variable")
@argument(
    "--schema",
    default=None,
    metavar="NAME",
    help="typed rows: a pydantic model class or JSON-schema dict of the notebook",
)
def batch_command(magics: Any, args: Args) -> Any:
    """One prompt per item of VAR in the background, with a progress bar; the results.

    ``%mirai batch resume ID`` finishes a batch's unfinished items (after a restart) and
    waits, like ``batch()``. ``--schema NAME`` makes each row's ``.data`` an instance of
    that model (as ``batch(..., schema=Model)``).

    Example::

        answers = %mirai batch cities -t "One fact about {item}" -p main
        people = %mirai batch names -t "Invent {item}" --schema Person
        %mirai batch resume b1f2c3d
    """
    from .jobs_cmd import run_batch_command

    return run_batch_command(magics, args)


@subcommand("run")
@magic_arguments()
@argument(
    "cell",
    nargs="?",
    type=count,
    default=None,
    metavar="N",
    help="run In[N] (default: the code the last `--format code` answer put into the next cell)",
)
@sandbox_options
def run_code(magics: Any, args: Args) -> None:
    """Run generated code (or In[N]) in the sandbox, never in this kernel; show the result.

    Example::

        %mirai run
        %mirai run 12 --timeout 5 --file data.csv
    """
    from .sandbox_cmd import run_command

    run_command(magics, args)


@subcommand("help")
@magic_arguments()
@argument("names", nargs="*", metavar="SUBCOMMAND", help="e.g. log, or memory search")
def help_page(magics: Any, args: Args) -> None:
    """This page, or the usage of one subcommand (`%mirai help log`)."""
    print(COMMANDS.help_for(args.names) if args.names else magics.mirai.__doc__)
