"""`%mirai status` and `%mirai history`: tables from the session's records.

A line command's result is a ``Table``: shown as a titled table (``text/html`` and
``text/plain``) when it ends a cell, plain data in Python (``x = %mirai status``): a
``Report`` is a dict (label → value), a ``Listing`` a list (of dicts, messages, …).

Cost rows: the session's spend per model (settled real costs, ``client/spend.py``) next to
the notebook's (every call of this notebook identity in the call log, earlier kernels'
too), then ``limits.budget_usd``'s caps with what is spent against them; shown once a call
cost something (or its cost is unknown) or a cap is set.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from IPython.display import display

from ..client.routing import AUTO
from ..pricing import ModelSpend, usd
from ..quantiles import percentile
from ..schema import BudgetUsd
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
    rows += cost_rows(session.policy.spend, notebook_costs(session))
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


def notebook_costs(session: Any) -> dict[str, ModelSpend] | None:
    """This notebook's calls per model from the call log (None: the call log is off)."""
    from ..calllog import cost_totals

    log = next((log for log in session.call_logs if not log.cassette), None)
    if log is None:
        return None
    log.flush()  # rows are written in the background: the last call counts too
    return cost_totals(log.path, notebook=log.notebook)


def cost_rows(spend: Any, notebook: dict[str, ModelSpend] | None) -> list[tuple[str, str]]:
    """``cost`` (session · notebook totals), ``cost <model>`` for each model either used, and
    each ``limits.budget_usd`` cap with what is spent against it. None while every call cost
    $0 (the offline server, local models) and no cap is set: nothing to show yet."""
    mine, theirs, caps = spend.totals(), notebook or {}, spend.budget
    paid = any(s.cost or s.unpriced for s in [*mine.values(), *theirs.values()])
    if not paid and caps == BudgetUsd():
        return []
    shown = "notebook: call log off" if notebook is None else f"notebook {_total(theirs)}"
    rows = [("cost", f"session {_total(mine)} · {shown}")]
    for model in dict.fromkeys([*mine, *theirs]):
        parts = [spent_text("session", mine.get(model, ModelSpend()))]
        if notebook is not None:
            parts.append(spent_text("notebook", theirs.get(model, ModelSpend())))
        rows.append((f"cost {model}", " · ".join(parts)))
    if caps.per_session is not None:
        spent = f"{usd(spend.session_total)} of {usd(caps.per_session)}"
        rows.append(("budget this session", f"{spent} (limits.budget_usd.per_session)"))
    if caps.per_day is not None:
        spent = f"{usd(spend.today())} of {usd(caps.per_day)}"
        rows.append(("budget today", f"{spent} (limits.budget_usd.per_day)"))
    return rows


def spent_text(where: str, spent: ModelSpend) -> str:
    """``session $0.000100 (3 calls)``, ``notebook $0.0019 (40 calls, 2 cost unknown)``."""
    calls = f"{spent.calls:,} call" + ("s" if spent.calls != 1 else "")
    unknown = f", {spent.unpriced:,} cost unknown" if spent.unpriced else ""
    return f"{where} {usd(spent.cost)} ({calls}{unknown})"


def _total(spent: dict[str, ModelSpend]) -> str:
    return usd(sum(s.cost for s in spent.values()))


def status_report(session: Any, defaults: CellDefaults) -> Report:
    """`%mirai status`: the rows above as a Report."""
    return Report("mirai status", status_rows(session, defaults))


def show_status(session: Any, defaults: CellDefaults) -> None:
    display(status_report(session, defaults))


def history_listing(messages: list[dict[str, Any]]) -> Listing:
    """`%mirai history`: the messages (plain dicts); an empty history is one line."""
    rows = [(m["role"], clip(m.get("content", ""), 120)) for m in messages]
    empty = "history: empty (the next %%mirai cell sends no earlier turns)"
    return Listing(f"history: {len(messages)} messages", None, rows, messages, empty)


def show_history(messages: list[dict[str, Any]]) -> None:
    display(history_listing(messages))


class Table:
    """A line command's result as a titled table: label/value rows when ``header`` is None,
    else a grid; ``empty`` is the one line shown when there are no rows."""

    title: str
    header: tuple[str, ...] | None
    rows: list[tuple[str, ...]]
    empty: str = ""

    def text(self) -> str:
        if not self.rows and self.empty:
            return self.empty
        if self.header is None:
            return label_text(self.title, self.rows)
        return "\n".join([self.title, *text_grid(self.header, self.rows)])

    def _repr_html_(self) -> str:
        if not self.rows and self.empty:
            return f"<em class='mirai-note'>{html.escape(self.empty)}</em>"
        if self.header is None:
            return label_html(self.title, self.rows)
        return grid_html(self.title, self.header, self.rows)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())


class Report(Table, dict):
    """Label → value (a repeated label keeps every value, as a list), shown as a table."""

    def __init__(self, title: str, rows: list[tuple[str, str]]):
        values: dict[str, Any] = {}
        for label, value in rows:
            if label not in values:
                values[label] = value
            elif isinstance(values[label], list):
                values[label].append(value)
            else:
                values[label] = [values[label], value]
        super().__init__(values)
        self.title, self.header, self.rows = title, None, list(rows)


class Listing(Table, list):
    """A list of plain items (dicts, messages, …), shown as a titled table of ``rows``."""

    def __init__(
        self,
        title: str,
        header: tuple[str, ...] | None,
        rows: list[tuple[str, ...]],
        items: list[Any],
        empty: str = "",
    ):
        super().__init__(items)
        self.title, self.header, self.rows, self.empty = title, header, list(rows), empty


def label_text(title: str, rows: list[tuple[str, ...]]) -> str:
    """A title and label/value rows as aligned text (pure)."""
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join([title, *(f"{label.ljust(width)}  {value}" for label, value in rows)])


def label_html(title: str, rows: list[tuple[str, ...]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(label)}</th>"
        f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
        for label, value in rows
    )
    return f"<table class='mirai-status'><caption>{html.escape(title)}</caption>{cells}</table>"


def show_table(title: str, rows: list[tuple[str, str]]) -> None:
    display({"text/html": label_html(title, rows), "text/plain": label_text(title, rows)}, raw=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def text_grid(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A header and rows as left-aligned text columns (pure)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def grid_html(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cell = "<{0} style='text-align:left'>{1}</{0}>"
    head = "".join(cell.format("th", html.escape(c)) for c in header)
    body = "".join(
        "<tr>" + "".join(cell.format("td", html.escape(c)) for c in r) + "</tr>" for r in rows
    )
    return (
        f"<table class='mirai-table'><caption>{html.escape(title)}</caption>"
        f"<tr>{head}</tr>{body}</table>"
    )


def show_grid(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Display a titled table with a header row: HTML, and text/plain for nbval and consoles."""
    text = "\n".join([title, *text_grid(header, rows)])
    display({"text/html": grid_html(title, header, rows), "text/plain": text}, raw=True)
