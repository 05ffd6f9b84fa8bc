"""`%mirai status` and `%mirai history`: tables from the session's records."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from IPython.display import display

from ..client.routing import AUTO
from ..quantiles import percentile
from ..text import clip
from .defaults import CellDefaults


def status_rows(session: Any, defaults: CellDefaults) -> list[tuple[str, str]]:
    """(label, value) rows: calls, errors, retries, latency, breakers, then budgets and memory."""
    records = list(session.records)
    latencies = [r.latency_ms for r in records if r.ok]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    default = defaults.profile_in(session.config)
    rows = [
        (
            "endpoint",
            "offline server"
            if session.endpoint.offline
            else (session.endpoint.base_url or "api.openai.com"),
        ),
        ("default profile", default),
        ("calls", str(len(records))),
        ("errors", str(sum(1 for r in records if not r.ok))),
        ("retries", str(sum(len(r.retry_reasons) for r in records))),
        ("latency p50 / p95", _ms(p50) + " / " + _ms(p95)),
        (
            "history",
            f"{len(session.history)} / {session.config.context.max_history_messages} messages",
        ),
    ]
    if default == AUTO or any(r.route is not None for r in records):  # once auto is in use
        rows.append(routing_row(records, session.config.routing.target))
    rows += profile_rows(session.config)
    rows += answered_rows(records)
    rows += [(f"breaker {model}", state) for model, state in session.breaker_states().items()]
    rows += [(label, value) for label, value in session.extra_status()]
    return rows


def profile_rows(config: Any) -> list[tuple[str, str]]:
    """One row per profile: its model and the seed's ``use_cases`` (what it is meant for)."""
    return [
        (f"profile {name}", " · ".join(filter(None, [p.name, ", ".join(p.use_cases)])))
        for name, p in config.models.items()
    ]


def routing_row(records: list[Any], target: dict[str, float]) -> tuple[str, str]:
    """``main 66% · heavy 28% · fast 6% (target 70/25/5) over 32 auto calls``: where this
    session's ``auto`` calls were routed, next to ``routing.target``."""
    goal = "target " + "/".join(f"{share:g}" for share in target.values())
    chosen = Counter(r.route.profile for r in records if r.route is not None)
    total = sum(chosen.values())
    if not total:
        return ("routing", f"no auto calls yet ({goal})")
    names = [*target, *(name for name in chosen if name not in target)]
    split = " · ".join(f"{name} {100 * chosen[name] / total:.0f}%" for name in names)
    return ("routing", f"{split} ({goal}) over {total} auto call{'s' if total != 1 else ''}")


def answered_rows(records: list[Any]) -> list[tuple[str, str]]:
    """``answered by heavy  gpt-4o-2024-08-06 (asked gpt-4o)``: per profile, the model the API
    last reported, when it is not the one asked for."""
    latest: dict[str, Any] = {}
    for record in records:
        if record.ok and record.response_model:
            latest[record.profile] = record
    return [
        (f"answered by {profile}", f"{r.response_model} (asked {r.model})")
        for profile, r in latest.items()
        if r.response_model != r.model
    ]


def show_status(session: Any, defaults: CellDefaults) -> None:
    rows = status_rows(session, defaults)
    show_table("mirai status", rows)


def show_history(messages: list[dict[str, Any]]) -> None:
    rows = [(m["role"], clip(m.get("content", ""), 120)) for m in messages]
    show_table(f"history: {len(messages)} messages", rows or [("(empty)", "")])


def show_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    text = "\n".join([title, *(f"{label.ljust(width)}  {value}" for label, value in rows)])
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    markup = f"<table class='mirai-status'><caption>{html.escape(title)}</caption>{cells}</table>"
    display({"text/html": markup, "text/plain": text}, raw=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def text_grid(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A header and rows as left-aligned text columns (pure)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def show_grid(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Display a titled table with a header row: HTML, and text/plain for nbval and consoles."""
    cell = "<{0} style='text-align:left'>{1}</{0}>"
    head = "".join(cell.format("th", html.escape(c)) for c in header)
    body = "".join(
        "<tr>" + "".join(cell.format("td", html.escape(c)) for c in r) + "</tr>" for r in rows
    )
    markup = (
        f"<table class='mirai-table'><caption>{html.escape(title)}</caption>"
        f"<tr>{head}</tr>{body}</table>"
    )
    text = "\n".join([title, *text_grid(header, rows)])
    display({"text/html": markup, "text/plain": text}, raw=True)
