"""`mirai canary-report`: per model version in the call log — calls, errors, latency, cost.

A call counts for every model version it was sent to: the one that answered it (or failed
last) and, when it fell back after a failure, the version it left — the canary it was sent
to (the ``canary`` column), else the stable model of the profile it left (``degraded_from``,
looked up in the config). So a canary that keeps failing over to another profile shows its
failures. Replayed calls and calls that were never sent (quota, usage errors) are left out.
Costs are what the call log stored per call (``pricing.py``: the config's ``pricing:``, 0 on
a keyless endpoint, else genai-prices); rows older than the cost column are priced from
their tokens by the same rules (as on a keyed endpoint).
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calllog import BUSY_TIMEOUT_MS, main_log_path
from .client.degrade import NOT_SENT, TRIGGERS
from .errors import ConfigError
from .pricing import Prices, usd
from .quantiles import percentile

COLUMNS = (
    "model",
    "canary",
    "error",
    "error_code",
    "latency_ms",
    "tokens_in",
    "tokens_out",
    "degraded_from",
    "degraded_reason",
    "cost",
)
HEADER = ("model version", "calls", "errors", "p50", "p95", "tokens in → out", "est. cost")


@dataclass
class Version:
    """What one model version did: calls sent to it, failures, latency of its answers."""

    model: str
    canary: bool = False
    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0  # of the answers whose row holds a cost
    unlogged: tuple[int, int] = (0, 0)  # tokens in, out of answers without one (older rows)

    def price(self, prices: Prices) -> float | None:
        """USD of its answers: the logged costs, the rest priced now; None: unknown."""
        if self.unlogged == (0, 0):
            return self.cost
        rest = prices.model_cost(self.model, *self.unlogged)
        return None if rest is None else self.cost + rest

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The live chat calls of a call log (older files may lack the newer columns)."""
    if not path.is_file():
        raise ConfigError(
            f"no call log at {path}", hint="pass --log PATH, or make some calls first"
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
            picked = ", ".join(c if c in have else f"NULL AS {c}" for c in COLUMNS)
            query = f"SELECT {picked} FROM calls WHERE kind = 'chat' AND replayed = 0 ORDER BY seq"
            rows = conn.execute(query).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"call log {path} cannot be read ({exc})") from None
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def versions_sent(row: Mapping[str, Any], stable_of: Callable[[str], str | None]) -> list[str]:
    """The model versions one call was sent to, in order (the last one answered or failed)."""
    left = None
    if row["canary"] and row["canary"] != row["model"]:
        left = row["canary"]
    elif row["degraded_from"] and row["degraded_reason"] not in TRIGGERS:  # not a rule
        left = stable_of(row["degraded_from"])
    return [left, row["model"]] if left and left != row["model"] else [row["model"]]


def summarize(
    rows: Iterable[Mapping[str, Any]], stable_of: Callable[[str], str | None]
) -> list[Version]:
    """Per model version, in order of first use (pure)."""
    seen: dict[str, Version] = {}
    for row in rows:
        if row["error_code"] in NOT_SENT:
            continue
        *left, last = versions_sent(row, stable_of)
        for model in left:
            version = seen.setdefault(model, Version(model))
            version.calls, version.errors = version.calls + 1, version.errors + 1
        version = seen.setdefault(last, Version(last))
        version.calls += 1
        if row["error"] is not None:
            version.errors += 1
        else:
            version.latencies_ms.append(row["latency_ms"] or 0.0)
            version.tokens_in += row["tokens_in"] or 0
            version.tokens_out += row["tokens_out"] or 0
            if row["cost"] is not None:
                version.cost += row["cost"]
            else:
                tokens_in, tokens_out = version.unlogged
                version.unlogged = (
                    tokens_in + (row["tokens_in"] or 0),
                    tokens_out + (row["tokens_out"] or 0),
                )
        if row["canary"]:
            seen.setdefault(row["canary"], Version(row["canary"])).canary = True
    return list(seen.values())


def format_report(versions: list[Version], prices: Prices) -> str:
    """One line per model version under a header, as aligned text columns (pure)."""
    table = [HEADER, *(_cells(v, prices) for v in versions)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def _cells(v: Version, prices: Prices) -> tuple[str, ...]:
    price = v.price(prices)
    shown = "–" if price is None else usd(price)
    return (
        v.model + (" (canary)" if v.canary else ""),
        f"{v.calls:,}",
        f"{v.errors:,} ({v.error_rate:.1%})",
        _ms(percentile(v.latencies_ms, 50)),
        _ms(percentile(v.latencies_ms, 95)),
        f"{v.tokens_in:,} → {v.tokens_out:,}",
        shown,
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


# --- the subcommand ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", metavar="PATH", help="call log (default: calls.sqlite in home)")
    parser.add_argument("--config", metavar="PATH", help="YAML with pricing and profiles")


def run(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config)
    path = Path(args.log).expanduser() if args.log else main_log_path(config)
    profiles = config.models

    def stable_of(profile: str) -> str | None:
        return profiles[profile].name if profile in profiles else None

    versions = summarize(read_rows(path), stable_of)
    print(f"call log: {path}")
    prices = Prices(dict(config.pricing))
    print(format_report(versions, prices) if versions else "no live chat calls yet")
    return 0
