"""The plain-Python API: ``batch()`` (and the session it runs on).

Inside a notebook with `%load_ext mirai_magics`, it uses the notebook's session (same
quotas, call log and jobs store as the cells); elsewhere, one Session per process, closed
at exit.
"""

from __future__ import annotations

import atexit
import json
import threading
from typing import Any

from .errors import UsageError
from .jobs.batch import payloads, rows_of
from .jobs.items import Results
from .text import clip

_default: Any = None
_lock = threading.Lock()


def current_session() -> Any:
    """The loaded extension's session in IPython, else this process's own Session."""
    global _default
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("MiraiMagics") if shell is not None else None
    if magics is not None:  # `%load_ext mirai_magics` ran: the notebook's own session
        return magics.session
    with _lock:
        if _default is None:
            from .session import Session

            _default = Session()
            atexit.register(_default.close)
        return _default


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
    ``wait=False`` returns the job id at once.
    """
    session = session or current_session()
    if out is not None and not out.isidentifier():
        raise UsageError(f"out needs a Python identifier, got {out!r}")
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
    )
    options = {"format": format, "series": _plain(index), "out": out}
    label = clip(template or str(rows[0]), 60)
    live = session.jobs.submit("batch", profile, items, label=label, options=options)
    if not wait:
        return live.id
    return collect(session, live.id)


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
    """A Series with the input's index when the batch came from one; stored in ``out``."""
    options = session.jobs.store.job(job_id).options
    index, out = options.get("series"), options.get("out")
    value: Any = results
    if index is not None:
        import pandas as pd

        labels = index if isinstance(index, list) else None
        value = pd.Series(list(results), index=labels, dtype=object)
    if out:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.user_ns[out] = value
    return value
