"""`%mirai status` and `%mirai history`: tables from the session's records."""

from __future__ import annotations

import html
from typing import Any

from IPython.display import display

from ..quantiles import percentile
from ..text import clip
from .defaults import CellDefaults


def status_rows(session: Any, defaults: CellDefaults) -> list[tuple[str, str]]:
    """(label, value) rows: calls, errors, retries, latency, breakers, then budgets and memory."""
    records = list(session.records)
    latencies = [r.latency_ms for r in records if r.ok]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    rows = [
        (
            "endpoint",
            "offline server"
            if session.endpoint.offline
            else (session.endpoint.base_url or "api.openai.com"),
        ),
        ("default profile", defaults.profile),
        ("calls", str(len(records))),
        ("errors", str(sum(1 for r in records if not r.ok))),
        ("retries", str(sum(len(r.retry_reasons) for r in records))),
        ("latency p50 / p95", _ms(p50) + " / " + _ms(p95)),
        (
            "history",
            f"{len(session.history)} / {session.config.context.max_history_messages} messages",
        ),
    ]
    rows += profile_rows(session.config)
    rows += [(f"breaker {model}", state) for model, state in session.breaker_states().items()]
    rows += [(label, value) for label, value in session.extra_status()]
    return rows


def profile_rows(config: Any) -> list[tuple[str, str]]:
    """One row per profile: its model and the seed's ``use_cases`` (what it is meant for)."""
    return [
        (f"profile {name}", " · ".join(filter(None, [p.name, ", ".join(p.use_cases)])))
        for name, p in config.models.items()
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
