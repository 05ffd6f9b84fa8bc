"""The plain-Python API: ``ask()`` and ``batch()`` (and the session they run on).

Inside a notebook with `%load_ext mirai_magics`, they use the notebook's session (same
history, quotas, call log and jobs store as the cells); elsewhere, one Session per process,
created on first use and closed at exit. IPython is never imported here: a script that does
not use it does not load it.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .answer_schema import AnswerSchema, schema_of
from .client.records import Reply
from .errors import UsageError
from .jobs.batch import payloads, rows_of
from .jobs.items import Results
from .text import clip
from .ui.out_name import check_out_name

_default: Any = None
_lock = threading.Lock()
_schemas: dict[str, AnswerSchema] = {}  # job id → the schema its rows are checked against


def current_session() -> Any:
    """The loaded extension's session in IPython, else this process's own Session."""
    global _default
    magics = _notebook_magics()
    if magics is not None:  # `%load_ext mirai_magics` ran: the notebook's own session
        return magics.session
    with _lock:
        if _default is None:
            from .session import Session

            _default = Session()
            atexit.register(_default.close)
        return _default


def _shell() -> Any:
    """The running IPython shell, or None (there is none when IPython was never imported)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _notebook_magics() -> Any:
    """The running shell's MiraiMagics, or None."""
    shell = _shell()
    return shell.magics_manager.registry.get("MiraiMagics") if shell is not None else None


@dataclass(frozen=True)
class _Asked:
    """What ``Session.prepare`` reads of a request (a cell's ``CellRequest`` has the same)."""

    profile: str
    overrides: dict[str, Any]
    system: str | None
    history: bool
    memory: bool
    fmt: str = "markdown"  # no format instruction: the answer comes back as the model wrote it
    top_k: int | None = None


def ask(
    prompt: str,
    profile: str = "main",
    *,
    system: str | None = None,
    history: bool = False,
    memory: bool = False,
    session: Any = None,
    **params: Any,
) -> Reply:
    """Ask one question through the resilient client; returns a ``Reply`` or raises.

    Same engine as a ``%%mirai`` cell (retries, breaker, fallback, quotas, call log),
    without the display. ``profile`` names a chat profile of the config (or ``auto``);
    ``params`` override its model parameters (``temperature``, ``max_tokens``, ``model``,
    ``top_p``, ``seed``, ``stop``, ``response_format`` …). ``system`` adds to the configured
    system prompt. ``history=True`` sends the session's conversation and adds this turn to
    it; ``memory=True`` retrieves notebook memory into the prompt. ``session`` defaults to
    the notebook's (with the extension loaded) or this process's own. A failure raises a
    ``MiraiError`` subclass whose ``str()`` is one line saying what to do.

    >>> from mirai_magics import ask
    >>> reply = ask("Name one prime number.", profile="fast", max_tokens=50)
    >>> str(reply) == reply.text, reply.record.profile, reply.record.attempts
    (True, 'fast', 1)
    """
    if not isinstance(prompt, str) or not prompt.strip():
        got = "an empty prompt" if isinstance(prompt, str) else type(prompt).__name__
        raise UsageError(
            f"ask() needs a prompt string, got {got}",
            hint="for a list of messages use Session.chat(messages)",
        )
    session = session or current_session()
    if profile != "auto":  # auto: routing picks the profile
        session.config.chat_profile(profile)  # unknown: one line listing the known ones
    request = _Asked(profile, params, system, history, memory)
    prepared = session.prepare(prompt.strip(), request)
    kwargs = prepared.send_kwargs()
    if profile == "auto":  # routing classifies the prompt as written
        kwargs["route_text"] = prepared.user_text
    reply = session.chat(prepared.messages, profile, **kwargs)
    if history:
        session.history.append_turn(prepared.user_text, reply.text)
    return reply


def batch(
    prompts: Any,
    profile: str = "main",
    template: str | None = None,
    format: str = "text",
    out: str | None = None,
    *,
    system: str | None = None,
    history: bool = False,
    memory: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
    schema: Any = None,
    wait: bool = True,
    session: Any = None,
) -> Any:
    """Run one prompt per item in the background; results aligned with ``prompts``.

    ``prompts`` is a list or a pandas Series; ``template`` a string over ``{item}``,
    ``{item.field}`` or ``{item[0]}``. Each result is an ``ItemResult`` (``.text``,
    ``.data`` for ``format="json"``, ``.error``, ``.record``; ``str()`` is the text); a
    failed item carries its reason and never raises. Returns a ``Results`` list (a Series
    with the input's index for a Series). ``out`` also stores the results in that notebook
    variable. Ctrl-C stops waiting; the batch goes on (`%mirai jobs`).
    ``wait=False`` returns the job id at once. ``schema`` (a pydantic model class or a
    JSON-schema dict) asks for typed answers: ``.data`` is the model instance (or dict), and
    a row that does not match is an error value naming the field. Rows are checked in this
    process when collected (after a kernel restart ``.data`` is the parsed JSON).
    """
    session = session or current_session()
    if out is not None:
        check_out_name(out)  # not a name the shell needs (get_ipython, In, _ …)
    typed = _batch_schema(schema, format)
    format = "json" if typed is not None else format
    rows, index = rows_of(prompts)
    if not rows:
        raise UsageError("batch() got no prompts", hint="pass a non-empty list or Series")
    overrides = {
        k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None
    }
    items = payloads(
        session,
        rows,
        profile,
        template=template,
        fmt=format,
        system=system,
        history=history,
        memory=memory,
        overrides=overrides,
        schema=typed,
    )
    options = {"format": format, "series": _plain(index), "out": out}
    label = clip(template or str(rows[0]), 60)
    live = session.jobs.submit("batch", profile, items, label=label, options=options)
    if typed is not None:
        _schemas[live.id] = typed
    if not wait:
        return live.id
    return collect(session, live.id)


def typed_rows(job_id: str, schema: AnswerSchema) -> None:
    """Check the rows of batch ``job_id`` against ``schema`` when they are collected
    (`%mirai batch resume ID --schema NAME` after a restart: the kernel forgot it)."""
    _schemas[job_id] = schema


def _batch_schema(schema: Any, fmt: str) -> AnswerSchema | None:
    """``batch(schema=...)`` as an AnswerSchema (None without); typed answers are JSON."""
    if schema is None:
        return None
    if fmt not in ("text", "json"):
        raise UsageError(
            f"schema= answers are JSON, not format={fmt!r}", hint="drop format (or use json)"
        )
    return schema if isinstance(schema, AnswerSchema) else schema_of(schema, "schema")


def _plain(index: Any) -> list[Any] | bool | None:
    """A Series index as stored with the job: its labels when they are JSON, else True."""
    if index is None:
        return None
    labels = index.tolist()
    try:
        json.dumps(labels)
    except (TypeError, ValueError):
        return True  # a Series again, with a fresh RangeIndex
    return labels


def collect(session: Any, job_id: str) -> Any:
    """Wait for a batch with a progress line, then its results (list or Series)."""
    from .ui.progress import Progress

    jobs = session.jobs
    live = jobs.live.get(job_id)
    row = jobs.store.job(job_id)
    progress = Progress(job_id, row.total)
    try:
        row = jobs.wait(job_id, tick=progress.update)
    except KeyboardInterrupt:
        print(
            f"batch {job_id} goes on in the background: `%mirai jobs wait {job_id}` or "
            f"`%mirai jobs cancel {job_id}`"
        )
        raise
    progress.final(row, live)
    return shaped(session, jobs.results(job_id), job_id)


def shaped(session: Any, results: Results, job_id: str) -> Any:
    """Typed rows for a batch with a schema; a Series with the input's index when the batch
    came from one; stored in ``out``."""
    options = session.jobs.store.job(job_id).options
    index, out = options.get("series"), options.get("out")
    if job_id in _schemas:
        results = results.typed(_schemas[job_id])
    value: Any = results
    if index is not None:
        import pandas as pd

        labels = index if isinstance(index, list) else None
        value = pd.Series(list(results), index=labels, dtype=object)
    if out:
        shell = _shell()
        if shell is not None:
            shell.user_ns[out] = value
    return value
