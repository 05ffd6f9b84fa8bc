"""Badges: a CallRecord → one line of HTML and text/plain (pure formatting, no I/O)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ..client.records import CallRecord
from ..pricing import cost, price_for
from ..redact import redact
from ..text import clip

_STYLE = (
    "font:12px/1.6 ui-monospace,SFMono-Regular,Menlo,monospace;color:#555;"
    "border-top:1px solid #ddd;margin-top:4px;padding-top:2px"
)
_ERROR_STYLE = "font:13px/1.5 ui-monospace,Menlo,monospace;color:#b00020"
_FLAG_STYLE = "background:#fff3cd;color:#7a5b00;border-radius:3px;padding:0 4px;margin-left:4px"


def badge_parts(record: CallRecord, prices: Mapping[str, Any] | None = None) -> list[str]:
    """The badge's main facts: profile/model · tokens in → out · latency · attempts [· cost]."""
    tokens_in = "?" if record.tokens_in is None else f"{record.tokens_in:,}"
    tokens_out = "?" if record.tokens_out is None else f"{record.tokens_out:,}"
    attempts = f"{record.attempts} attempt" + ("s" if record.attempts != 1 else "")
    parts = [
        f"{record.profile}/{record.model}",
        f"{tokens_in} → {tokens_out} tokens",
        f"{record.latency_ms:,.0f} ms",
        attempts,
    ]
    cost = estimated_cost(record, prices or {})
    if cost is not None:
        parts.append(f"≈ ${cost:.4f}")
    return parts


def badge_flags(record: CallRecord, extra: Sequence[str] = ()) -> list[str]:
    """Flags that apply: offline, replayed, retried ×N, degraded, breaker, plus caller's extras."""
    flags = route_flags(record)
    if record.offline:
        flags.append("offline")
    if record.replayed:
        flags.append("replayed")
    if record.retry_reasons:
        flags.append(f"retried ×{len(record.retry_reasons)} ({', '.join(record.retry_reasons)})")
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


def badge_text(
    record: CallRecord, extra: Sequence[str] = (), prices: Mapping[str, Any] | None = None
) -> str:
    """The text/plain badge: one line, stable enough for nbval with the sanitizer."""
    line = " · ".join(badge_parts(record, prices))
    flags = badge_flags(record, extra)
    return f"[mirai] {line}" + (f" · {' · '.join(flags)}" if flags else "")


def badge_html(
    record: CallRecord, extra: Sequence[str] = (), prices: Mapping[str, Any] | None = None
) -> str:
    """The HTML badge shown under an answer."""
    line = " · ".join(html.escape(p) for p in badge_parts(record, prices))
    flags = "".join(
        f' <span style="{_FLAG_STYLE}">{html.escape(f)}</span>' for f in badge_flags(record, extra)
    )
    return f'<div class="mirai-badge" style="{_STYLE}">⚡ {line}{flags}</div>'


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


def estimated_cost(record: CallRecord, prices: Mapping[str, Any]) -> float | None:
    """USD estimate from the per-model price table (per million tokens; a dated model is
    priced as its undated name unless listed); none offline/replayed."""
    price = price_for(record.model, prices)
    if (
        record.offline
        or record.replayed
        or price is None
        or record.tokens_in is None
        or record.tokens_out is None
    ):
        return None
    return cost(record.tokens_in, record.tokens_out, price)
