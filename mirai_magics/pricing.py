"""What a call costs in USD: the config's ``pricing:``, local endpoints, then genai-prices.

A call's price, first match wins:

1. ``pricing:`` in the config (USD per million tokens) by model id, else by its undated name
   (``gpt-4o-2024-08-06`` → ``gpt-4o``): Azure deployment names, self-hosted models,
   negotiated prices;
2. ``0`` when its endpoint sends no API key: a local server (an ``endpoints:`` entry with
   ``api_key_env_var: null``, or the default endpoint with its key variable unset, which is
   also the bundled offline server);
3. genai-prices, an offline price database (imported on first use), as OpenAI's model first,
   then as any provider's; a model no rule prices is tried again as the model the API said
   answered (``response.model``: an Azure deployment reports the model behind it);
4. else unknown (None): the badge says ``cost unknown``.

A replayed call costs nothing (a recording answered it). Everything here is pure except
``Prices.from_config``, which reads which key variables are set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .schema import DEFAULT_ENDPOINT

if TYPE_CHECKING:
    from .client.records import CallRecord
    from .config import Config

# gpt-4o-2024-08-06, claude-3-5-sonnet-20241022, gpt-4-0613, gpt-35-turbo-0125 → undated
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
CATALOG_PROVIDERS = ("openai", None)  # genai-prices: OpenAI's model first, then anyone's


def undated(model: str) -> str:
    """The model id without its date suffix (``gpt-4o-2024-11-20`` → ``gpt-4o``)."""
    return _DATED.sub("", model)


def price_for(model: str, prices: Mapping[str, Any]) -> Any:
    """The price of a model id, else of its undated name (a pinned version), else None."""
    return prices.get(model) or prices.get(undated(model))


def cost(tokens_in: int, tokens_out: int, price: Any) -> float:
    """USD for the tokens at ``price`` (``input``/``output`` per million tokens)."""
    return (tokens_in * price.input + tokens_out * price.output) / 1_000_000


def catalog_cost(
    model: str, tokens_in: int, tokens_out: int, at: float | None = None
) -> float | None:
    """USD from genai-prices for the tokens (prices in force at ``at``, epoch seconds);
    None when it does not know the model (or is not installed: it needs Python 3.11)."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # Python 3.10: the dependency's marker leaves it out
        return None

    usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    when = datetime.fromtimestamp(at, timezone.utc) if at else None
    for provider in CATALOG_PROVIDERS:
        try:
            found = calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)
        except LookupError:
            continue
        return float(found.total_price)
    return None


def usd(amount: float) -> str:
    """``$0``, ``$0.000029``, ``$0.0123``, ``$12.50``: enough digits to see a small call."""
    if amount == 0:
        return "$0"
    if amount < 0.0000005:
        return "<$0.000001"
    if amount >= 1:
        return f"${amount:,.2f}"
    digits = f"{amount:.4f}" if amount >= 0.01 else f"{amount:.6f}"
    return "$" + digits.rstrip("0")


@dataclass
class ModelSpend:
    """One model's calls and what they cost (``unpriced``: calls whose cost is unknown)."""

    calls: int = 0
    cost: float = 0.0
    unpriced: int = 0

    def add(self, cost: float | None) -> None:
        self.calls += 1
        if cost is None:
            self.unpriced += 1
        else:
            self.cost += cost


@dataclass(frozen=True)
class Prices:
    """The price rules of one config: its ``pricing:`` table, the named endpoints that send no
    key (``keyless``; None when unknown: then an offline-server answer counts as keyless), and
    the default endpoint's key variable, looked up when a call is priced (a key set in a cell
    after `%load_ext` makes the calls paid from then on)."""

    table: Mapping[str, Any] = field(default_factory=dict)
    keyless: frozenset[str] | None = None
    default_key_var: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None = None) -> Prices:
        keyless = {name for name, e in config.endpoints.items() if e.api_key_env_var is None}
        env = os.environ if env is None else env
        return cls(dict(config.pricing), frozenset(keyless), config.security.api_key_env_var, env)

    def free(self, record: CallRecord) -> bool:
        """True when the record's endpoint sends no API key (a local server)."""
        if self.keyless is None:
            return record.offline
        endpoint = record.endpoint or DEFAULT_ENDPOINT
        if endpoint == DEFAULT_ENDPOINT and self.default_key_var is not None:
            return not self.env.get(self.default_key_var)
        return endpoint in self.keyless

    def listed(self, model: str) -> bool:
        """True when ``pricing:`` names the model (or its undated name)."""
        return price_for(model, self.table) is not None

    def tokens_cost(
        self, record: CallRecord, tokens_in: int, tokens_out: int, at: float | None = None
    ) -> float | None:
        """USD for these tokens of the record's model on its endpoint, else of the model the
        API said answered (an Azure deployment reports its model); None: unknown."""
        free = self.free(record)
        found = self.model_cost(record.model, tokens_in, tokens_out, free, at)
        answered = record.response_model
        if found is None and answered and answered != record.model:
            found = self.model_cost(answered, tokens_in, tokens_out, free, at)
        return found

    def model_cost(
        self,
        model: str,
        tokens_in: int,
        tokens_out: int,
        free: bool = False,
        at: float | None = None,
    ) -> float | None:
        """USD for tokens of ``model`` (``free``: on a keyless endpoint); None: unknown."""
        price = price_for(model, self.table)
        if price is not None:
            return cost(tokens_in, tokens_out, price)
        return 0.0 if free else catalog_cost(model, tokens_in, tokens_out, at)

    def cost(self, record: CallRecord, since: int = 0) -> float | None:
        """What the call cost: the usage it reported plus its streams cut before their usage
        (``record.cuts[since:]``: one hop's, for its settlement), each at its hop's model.
        None: neither, or no price."""
        if record.replayed:
            return 0.0
        cuts = record.cuts[since:]
        reported = record.tokens_in is not None and record.tokens_out is not None
        if not (reported or cuts):
            return None
        parts = [(record, record.tokens_in, record.tokens_out)] if reported else []
        for cut in cuts:
            hop = replace(record, model=cut.model, endpoint=cut.endpoint, response_model=None)
            parts.append((hop, cut.tokens_in, cut.tokens_out))
        costs = [self.tokens_cost(r, i or 0, o or 0, record.started_at) for r, i, o in parts]
        return None if None in costs else sum(c for c in costs if c is not None)


def as_prices(prices: Prices | Mapping[str, Any] | None) -> Prices:
    """A ``Prices``; a bare ``pricing:`` table (or None) knows no endpoints."""
    if isinstance(prices, Prices):
        return prices
    return Prices(dict(prices or {}))
