"""Background cells (`%%mirai --bg`), `%mirai jobs …` and `%mirai batch …`.

A background cell shows one line at once (job id, profile, queued) in a display it keeps;
when the job ends, the answer and its badge replace that line in the same output area,
even after the cell finished and while other cells run (``late.LateDisplay``). The history
gets the answer when it completes, in completion order, and the badge says so.
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict
from typing import Any

from ..errors import JobError, UsageError
from ..jobs.items import ItemResult, payload
from ..text import clip
from .late import LateDisplay
from .render import answer_bundle, error_bundle
from .status import Listing

STATE_MARK = {"queued": "…", "running": "…", "done": "✓", "failed": "✗", "cancelled": "⊘"}


def start_background(request: Any, session: Any, namespace: dict[str, Any]) -> str:
    """Queue one cell; its display updates when the answer arrives. Returns the job id."""
    from .cell import interpolated

    text = interpolated(request, namespace)
    prepared = session.prepare(text, request)
    request.flags.extend(prepared.flags)
    item = payload(
        prepared.messages,
        prepared.profile,
        request.fmt,
        dict(prepared.overrides),
        prepared.prompt_tokens,
        session.user,
    )
    options = {"format": request.fmt, "out": request.out}
    flags = list(request.flags)

    def listen(live: Any) -> None:  # before the job starts: a fast answer is not missed
        line = f"job {live.id} · {prepared.profile} · queued (background)"
        answer, badge = LateDisplay(_line_bundle(line)), LateDisplay({"text/plain": ""})

        def done(index: int, result: ItemResult) -> None:
            _show_background(
                session, answer, badge, live.id, request, prepared, result, flags, namespace
            )

        live.on_result.append(done)
        live.on_done.append(lambda job: _ended_without_result(job, answer))

    live = session.jobs.submit(
        "cell", prepared.profile, [item], label=clip(text, 60), options=options, listen=listen
    )
    return live.id


def _show_background(
    session: Any,
    answer: LateDisplay,
    badge: LateDisplay,
    job_id: str,
    request: Any,
    prepared: Any,
    result: ItemResult,
    flags: list[str],
    namespace: dict[str, Any],
) -> None:
    """The answer in the cell's own output area (notifier thread)."""
    from .badges import badge_html, badge_text

    if not result.ok:
        answer.update(error_bundle(result.error or "failed"))
    else:
        answer.update(answer_bundle(result.text, request.fmt, result.data))
        flags = [*flags, f"background {job_id}"]
        if prepared.keep_history:
            session.history.append_turn(prepared.user_text, result.text)
            flags.append("history: appended on completion")
        if request.fmt == "code":
            flags.append("code not inserted (background): %mirai jobs result " + job_id)
        if request.out:  # as a cell's --out: parsed JSON (``null`` is None), else the text
            namespace[request.out] = result.data if request.fmt == "json" else result.text
    if result.record is not None:
        badge.update(
            {
                "text/html": badge_html(result.record, flags, session.policy.prices),
                "text/plain": badge_text(result.record, flags, session.policy.prices),
            }
        )


def _ended_without_result(job: Any, answer: LateDisplay) -> None:
    if job.done + job.failed == 0 and job.already == 0:
        answer.update(error_bundle(f"job {job.id}: {job.error or 'cancelled'}"))


def _line_bundle(line: str) -> dict[str, str]:
    return {
        "text/plain": line,
        "text/html": f'<span style="opacity:.75;font-family:monospace">{html.escape(line)}</span>',
    }


# --- %mirai jobs ------------------------------------------------------------------------


_JOB_COLUMNS = ("id", "state", "kind", "profile", "age", "items", "attempts", "tokens in/out")
NO_JOBS = "no jobs yet — `%%mirai --bg` or mirai_magics.batch(...) start one"


class JobListing(Listing):
    """`%mirai jobs`: the job rows as dicts; text/plain keeps the fixed-width table."""

    def text(self) -> str:
        if not self:
            return NO_JOBS
        head = "{:<8} {:<12} {:<5} {:<8} {:>6} {:>9} {:>8} {:>14}  prompt".format(*_JOB_COLUMNS)
        lines = [head]
        for r in self.rows:
            lines.append("{:<8} {:<12} {:<5} {:<8} {:>6} {:>9} {:>8} {:>14}  {}".format(*r))
        return "\n".join(lines)


def job_cells(row: Any, now: float) -> tuple[str, ...]:
    """One job as table cells (pure): id, state, kind, profile, age, items, attempts, tokens,
    prompt."""
    state = "interrupted" if row.orphaned else row.state
    items = f"{row.settled}/{row.total}" + (f" ✗{row.failed}" if row.failed else "")
    tokens = f"{row.tokens_in:,}/{row.tokens_out:,}"
    return (
        row.id,
        state,
        row.kind,
        row.profile,
        _age(now - row.created),
        items,
        str(row.attempts),
        tokens,
        clip(row.label, 40),
    )


def jobs_listing(session: Any, limit: int = 20) -> JobListing:
    """Newest first; ``x = %mirai jobs`` is a list of dicts (one per job, as stored)."""
    rows = session.jobs.rows(limit)
    now = time.time()
    cells = [job_cells(r, now) for r in rows]
    items = [{**asdict(r), "orphaned": r.orphaned} for r in rows]
    return JobListing("mirai jobs", (*_JOB_COLUMNS, "prompt"), cells, items, NO_JOBS)


def jobs_table(session: Any, limit: int = 20) -> str:
    """id, state, profile, age, items, attempts, tokens — newest first."""
    return jobs_listing(session, limit).text()


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def job_id_or_latest(session: Any, job_id: str | None, kind: str | None = None) -> str:
    if job_id:
        return job_id
    row = session.jobs.store.latest(kind)
    if row is None:
        raise JobError("there are no jobs yet")
    return row.id


def job_result(session: Any, job_id: str) -> Any:
    """A cell job: its ItemResult; a batch: its results (list or Series)."""
    from ..api import shaped

    row = session.jobs.store.job(job_id)
    results = session.jobs.results(job_id)
    if row.kind == "cell":
        return results[0]
    return shaped(session, results, job_id)


def run_batch_command(magics: Any, args: Any) -> Any:
    """`%mirai batch VAR …` or `%mirai batch resume ID`."""
    from ..api import batch, collect, shaped, typed_rows

    session = magics.session
    namespace = magics.shell.user_ns
    schema = None
    if args.schema is not None:
        from ..answer_schema import resolve_schema

        schema = resolve_schema(args.schema, namespace)  # one line naming NAME if wrong
    if args.target == "resume":
        if not args.id:
            raise UsageError("batch resume needs a job id", hint="`%mirai jobs` lists them")
        row = session.jobs.store.job(args.id)
        if row.kind != "batch":
            raise JobError(f"job {args.id} is a {row.kind}, not a batch")
        if schema is not None:  # typed rows again after a restart (the requests kept theirs)
            typed_rows(args.id, schema)
        if not session.jobs.store.pending(args.id):
            return shaped(session, session.jobs.results(args.id), args.id)
        session.jobs.resume(args.id)
        return collect(session, args.id)
    if args.id:
        raise UsageError(f"unexpected {args.id!r}", hint="%mirai batch VAR -t 'template {item}'")
    if args.target not in namespace:
        raise UsageError(
            f"no variable {args.target!r} in the notebook",
            hint="%mirai batch VAR: VAR names a list or pandas Series defined earlier",
        )
    return batch(
        namespace[args.target],
        profile=args.profile or magics.defaults.profile_in(session.config),
        template=args.template,
        format=args.format,
        out=args.out,
        max_tokens=args.max_tokens,
        session=session,
        schema=schema,
    )
