"""Badges: a CallRecord → one line of HTML and text/plain (pure formatting, no I/O).

The latency on a cell's badge is the whole wait, from the cell's start to the answer; when
the time outside the model call matters (first-call setup, memory retrieval), its parts
follow: ``10.0 s (5.0 s model · 5.0 s memory)``. Colours are JupyterLab's theme variables
(``--jp-ui-font-color2``, ``--jp-layout-color2``, ``--jp-warn-color1``, ``--jp-error-color1``)
with fallbacks for other frontends, so badges and error lines stay readable in the dark theme.

The cost part is the call's cost from its usage (``pricing.py``: the config's ``pricing:``,
0 on a keyless local endpoint, else genai-prices): ``≈ $0.000029``, ``$0 (local)``, or
``cost unknown`` (no usage reported, or a model no price rule knows). The offline server of a
keyless session (the default endpoint) and a replayed call show none: their flag says it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ..client.records import CallRecord
from ..pricing import Prices, as_prices, usd
from ..redact import redact
from ..text import clip

_MONO = "var(--jp-code-font-family,ui-monospace,SFMono-Regular,Menlo,monospace)"
_STYLE = (
    f"font:12px/1.6 {_MONO};color:var(--jp-ui-font-color2,#555);"
    "border-top:1px solid var(--jp-border-color2,#ddd);margin-top:4px;padding-top:2px"
)
_ERROR_STYLE = f"font:13px/1.5 {_MONO};color:var(--jp-error-color1,#b00020)"
_FLAG_STYLE = (
    "background:var(--jp-layout-color2,#eee);color:var(--jp-ui-font-color1,#222);"
    "border-left:3px solid var(--jp-warn-color1,#f57c00);border-radius:3px;"
    "padding:0 4px;margin-left:4px"
)
WAITING_STYLE = f"font:12px/1.6 {_MONO};color:var(--jp-ui-font-color2,#555)"
PARTS_MIN_MS = 100.0  # time outside the model call worth a breakdown: at least this,
PARTS_MIN_SHARE = 0.2  # and this share of the whole wait
PART_MIN_SHARE = 0.05  # a part below this share of the wait is not listed


PricesLike = Prices | Mapping[str, Any] | None  # a bare ``pricing:`` table knows no endpoints


def badge_parts(record: CallRecord, prices: PricesLike = None) -> list[str]:
    """The badge's main facts: profile/model[@endpoint, when not the default] · tokens in →
    out · latency · attempts [· cost]."""
    tokens_in = "?" if record.tokens_in is None else f"{record.tokens_in:,}"
    tokens_out = "?" if record.tokens_out is None else f"{record.tokens_out:,}"
    attempts = f"{record.attempts} attempt" + ("s" if record.attempts != 1 else "")
    parts = [
        f"{record.profile}/{record.model}" + (f"@{record.endpoint}" if record.endpoint else ""),
        f"{tokens_in} → {tokens_out} tokens",
        latency_text(record),
        attempts,
    ]
    cost = cost_text(record, as_prices(prices))
    return [*parts, cost] if cost else parts


def cost_text(record: CallRecord, prices: Prices) -> str | None:
    """``≈ $0.000029``, ``$0 (local)``, ``$0``, ``cost unknown``; None: the badge shows none."""
    if record.replayed or (record.offline and record.endpoint is None and prices.free(record)):
        return None  # the keyless offline demo (the default endpoint) or a recording
    cost = prices.cost(record)
    if cost is None:
        return "cost unknown"
    if cost == 0:
        return "$0" if prices.listed(record.model) or not prices.free(record) else "$0 (local)"
    return f"≈ {usd(cost)}"


def duration(ms: float) -> str:
    """``850 ms`` below a second, ``5.0 s`` from one second on."""
    return f"{ms:,.0f} ms" if ms < 999.5 else f"{ms / 1000:,.1f} s"


def whole_wait_ms(record: CallRecord) -> float:
    """The wait a cell's user saw (``wait_ms``), else the call's own latency (API calls)."""
    return record.latency_ms if record.wait_ms is None else max(record.wait_ms, record.latency_ms)


def wait_parts(record: CallRecord) -> list[tuple[str, float]]:
    """(part, ms) of a cell's wait — model, memory, setup — when the time outside the model
    call matters (≥ PARTS_MIN_MS and ≥ PARTS_MIN_SHARE of the wait); else none."""
    total = whole_wait_ms(record)
    outside = total - record.latency_ms
    if record.wait_ms is None or outside < max(PARTS_MIN_MS, PARTS_MIN_SHARE * total):
        return []
    memory = min(record.memory_ms, outside)
    parts = [("model", record.latency_ms), ("memory", memory), ("setup", outside - memory)]
    return [(name, ms) for name, ms in parts if name == "model" or ms >= PART_MIN_SHARE * total]


def latency_text(record: CallRecord) -> str:
    """``38 ms``, or a cell's whole wait with its parts: ``10.0 s (5.0 s model · 5.0 s memory)``."""
    parts = " · ".join(f"{duration(ms)} {name}" for name, ms in wait_parts(record))
    return duration(whole_wait_ms(record)) + (f" ({parts})" if parts else "")


def badge_flags(record: CallRecord, extra: Sequence[str] = ()) -> list[str]:
    """Flags that apply: offline, replayed, retried ×N, degraded, breaker, plus caller's extras."""
    flags = route_flags(record)
    if record.offline:
        flags.append("offline")
    if record.replayed:
        flags.append("replayed")
    if record.retry_reasons:
        flags.append(f"retried ×{len(record.retry_reasons)} ({', '.join(record.retry_reasons)})")
    if record.cut_tokens_in or record.cut_tokens_out:
        cut = f"~{record.cut_tokens_in:,}→{record.cut_tokens_out:,}"
        flags.append(f"cut stream: {cut} tokens counted")  # in the budgets (and the cost)
    flags.extend(degradation_flags(record))
    flags.extend(version_flags(record))
    if record.breaker and record.breaker != "closed":
        flags.append(f"breaker {record.breaker}")
    flags.extend(extra)
    return flags


def route_flags(record: CallRecord) -> list[str]:
    """``auto → heavy (code generation)``, then what the router spent or why it fell back:
    ``router 41→9 tokens``, ``router: fast (cached)``, ``router: local (fast failed: 5xx)``."""
    route = record.route
    if route is None:
        return []
    flags = [f"auto → {route.profile} ({route.reason})"]
    if route.classifier == "fast":
        flags.append(f"router {route.tokens_in:,}→{route.tokens_out:,} tokens")
    elif route.classifier != "local":
        flags.append(f"router: {route.classifier}")
    return flags


def degradation_flags(record: CallRecord) -> list[str]:
    """``degraded heavy→main (rate_limit_429)`` for a reroute, ``degraded: rule (what)``
    for each rule that changed the call; each degradation is said once."""
    flags = []
    if record.degraded_from:
        why = dict.fromkeys(d.reason for d in record.degradations if d.reroutes)
        flags.append(f"degraded {record.degraded_from}→{record.profile} ({', '.join(why)})")
    for d in record.degradations:
        if not d.reroutes:
            flags.append(f"degraded: {d.rule}" + (f" ({d.detail})" if d.detail else ""))
    return flags


def version_flags(record: CallRecord) -> list[str]:
    """``canary <model>`` when the canary answered, ``canary suspended: <why>``, and
    ``answered by <model>`` when the API reports another model than the one asked for."""
    flags = []
    if record.canary and record.canary == record.model:
        flags.append(f"canary {record.canary}")
    if record.canary_suspended:
        flags.append(f"canary suspended: {record.canary_suspended}")
    if record.response_model and record.response_model != record.model:
        flags.append(f"answered by {record.response_model}")
    return flags


def badge_text(record: CallRecord, extra: Sequence[str] = (), prices: PricesLike = None) -> str:
    """The text/plain badge: one line, stable enough for nbval with the sanitizer."""
    line = " · ".join(badge_parts(record, prices))
    flags = badge_flags(record, extra)
    return f"[mirai] {line}" + (f" · {' · '.join(flags)}" if flags else "")


def badge_html(record: CallRecord, extra: Sequence[str] = (), prices: PricesLike = None) -> str:
    """The HTML badge shown under an answer."""
    line = " · ".join(html.escape(p) for p in badge_parts(record, prices))
    flags = "".join(
        f' <span style="{_FLAG_STYLE}">{html.escape(f)}</span>' for f in badge_flags(record, extra)
    )
    return f'<div class="mirai-badge" style="{_STYLE}">⚡ {line}{flags}</div>'


def waiting_line(label: str, seconds: float, attempt: int = 1) -> str:
    """``waiting for main/gpt-4o-mini · 3 s · attempt 2`` (the attempt from the second on)."""
    line = f"waiting for {label} · {max(int(seconds), 0)} s"
    return line + (f" · attempt {attempt}" if attempt > 1 else "")


def waiting_bundle(line: str) -> dict[str, str]:
    """The waiting line as HTML (theme colours) with its text/plain twin."""
    shown = html.escape(line)
    return {
        "text/html": f'<div class="mirai-waiting" style="{WAITING_STYLE}">{shown}</div>',
        "text/plain": f"[mirai] {line}",
    }


def error_text(message: str) -> str:
    """The text/plain form of a failed call: one line."""
    return f"[mirai] ✗ {one_line(message)}"


def error_html(message: str) -> str:
    """One red line with the cause and what to do."""
    return (
        f'<div class="mirai-error" style="{_ERROR_STYLE}">✗ {html.escape(one_line(message))}</div>'
    )


def one_line(message: str, limit: int = 400) -> str:
    """Collapse whitespace, redact secrets, cut to ``limit`` characters."""
    return clip(redact(clip(message)), limit)


def estimated_cost(record: CallRecord, prices: PricesLike) -> float | None:
    """The USD the badge shows (None: unknown, or none shown: replayed, offline server)."""
    prices = as_prices(prices)
    return None if cost_text(record, prices) is None else prices.cost(record)
