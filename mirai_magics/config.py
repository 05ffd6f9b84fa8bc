"""Configuration: YAML layers → validated pydantic models, env overrides, one-line errors.

Layers, lowest first: the packaged default, the file named by ``MIRAI_CONFIG``, an explicit
path; then the environment (``MIRAI_BASE_URL`` / ``OPENAI_BASE_URL`` → ``endpoint.base_url``).
Mappings merge key by key and lists replace, except a mapping tagged ``!replace``
(``models: !replace``), which replaces what the lower layers wrote there. ``origins()``
says which layer set each effective value (``mirai check-config`` prints it). Each layer is
checked for secrets on its own first (``config_secrets.py``), so a key, or a credential
header's value, is refused at the line of the file that wrote it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from . import config_yaml
from .config_errors import Layer, dotted, first_error, locate
from .config_secrets import secret_in
from .errors import ConfigError, UsageError
from .redact import REDACTED
from .schema import (
    DEFAULT_ENDPOINT,
    ENDPOINT_NAME,
    UI,
    Alert,
    Breaker,
    CallLog,
    Chaos,
    Concurrency,
    Context,
    Defaults,
    Degradation,
    Endpoint,
    ErrorRateRule,
    LatencyRule,
    Limits,
    Logging,
    Metrics,
    NamedEndpoint,
    Observability,
    Price,
    Profile,
    Queue,
    Rag,
    RateLimitRule,
    RedisSettings,
    Routing,
    Security,
    Strict,
    Testing,
    Tracing,
)

__all__ = [
    "UI",
    "Alert",
    "Breaker",
    "CallLog",
    "Chaos",
    "Concurrency",
    "Config",
    "Context",
    "Defaults",
    "Degradation",
    "Endpoint",
    "ErrorRateRule",
    "LatencyRule",
    "Limits",
    "Logging",
    "Metrics",
    "NamedEndpoint",
    "Observability",
    "Profile",
    "Queue",
    "Rag",
    "RateLimitRule",
    "RedisSettings",
    "Security",
    "Testing",
    "Tracing",
    "home_dir",
    "load_config",
    "parse_config",
]

ENV_CONFIG = "MIRAI_CONFIG"
ENV_BASE_URLS = ("MIRAI_BASE_URL", "OPENAI_BASE_URL")
PACKAGED, BUILT_IN = "packaged", "built-in"  # labels of origins(): also ENV_CONFIG, "path"
Origins = dict[tuple[str, ...], str]  # path of a value in the YAML → the label of its layer


class KeyPathError(ValueError):
    """A validator's complaint about the key at ``loc`` (so the error names its line)."""

    def __init__(self, loc: tuple[Any, ...], message: str):
        super().__init__(message)
        self.loc = loc


class Config(Strict):
    """The whole file, in the seed's order; ``endpoint(s)``, ``ui``, ``pricing`` are ours."""

    defaults: Defaults = Defaults()
    models: dict[str, Profile]
    limits: Limits = Limits()
    circuit_breaker: Breaker = Breaker()
    degradation: Degradation = Degradation()
    context: Context = Context()
    observability: Observability = Observability()
    security: Security = Security()
    testing: Testing = Testing()
    endpoint: Endpoint = Endpoint()
    endpoints: dict[Annotated[str, Field(pattern=ENDPOINT_NAME)], NamedEndpoint] = Field(
        default_factory=dict
    )
    ui: UI = UI()
    routing: Routing = Routing()
    redis: RedisSettings = RedisSettings()
    queue: Queue = Queue()
    pricing: dict[str, Price] = Field(default_factory=dict)
    _source: str = PrivateAttr("<defaults>")
    _layers: list[tuple[str, str, dict[str, Any]]] = PrivateAttr(default_factory=list)
    _env: Origins = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _profiles_known(self) -> Config:
        for i, name in enumerate(self.degradation.fallback_chain):
            if name not in self.models:
                raise KeyPathError(
                    ("degradation", "fallback_chain", i),
                    f"unknown profile {name!r} (known: {', '.join(self.models)}); "
                    "the chain lists profiles of models:",
                )
        if "main" not in self.models:
            raise KeyPathError(("models",), "a 'main' profile is required (it is the default)")
        self._endpoints_known()
        self._routing_known()
        return self

    def _endpoints_known(self) -> None:
        """Each profile's ``endpoint`` is a name of ``endpoints:`` (``default`` is reserved)."""
        if DEFAULT_ENDPOINT in self.endpoints:
            raise KeyPathError(
                ("endpoints", DEFAULT_ENDPOINT),
                "the name is reserved for the endpoint: block (give this one another name)",
            )
        known = ", ".join(self.endpoints) or "none"
        for name, profile in self.models.items():
            if profile.endpoint is not None and profile.endpoint not in self.endpoints:
                raise KeyPathError(
                    ("models", name, "endpoint"),
                    f"unknown endpoint {profile.endpoint!r} (endpoints: {known}; "
                    "leave endpoint out for the default one)",
                )

    def _routing_known(self) -> None:
        """``routing`` and ``ui.default_profile`` name real profiles; rules are regexes."""
        chat = [n for n, p in self.models.items() if p.kind != "embedding"]
        known = f"(known: {', '.join(chat)})"
        if self.ui.default_profile not in (*chat, "auto"):
            raise KeyPathError(
                ("ui", "default_profile"), f"unknown profile {self.ui.default_profile!r} {known}"
            )
        for name in self.routing.target:
            if name not in chat:
                raise KeyPathError(
                    ("routing", "target", name),
                    f"unknown profile {known}; with models: !replace, write target: !replace",
                )
        for name, patterns in self.routing.rules.items():
            if name not in chat:
                raise KeyPathError(("routing", "rules", name), f"unknown profile {known}")
            for i, pattern in enumerate(patterns):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise KeyPathError(
                        ("routing", "rules", name, i), f"not a regular expression ({exc})"
                    ) from None

    @property
    def profiles(self) -> dict[str, Profile]:
        """The ``models:`` section: profile name → its settings."""
        return self.models

    @property
    def memory(self) -> Rag:
        """``context.rag``: the notebook memory's settings."""
        return self.context.rag

    @property
    def source(self) -> str:
        """The file the last layer came from."""
        return self._source

    @property
    def layers(self) -> list[tuple[str, str]]:
        """(label, source) of each layer, lowest first (``("packaged", "/…/x.yaml")``)."""
        return [(label, source) for label, source, _ in self._layers]

    def origins(self) -> Origins:
        """Which layer set each value (a path not in it: the model's built-in default)."""
        out: Origins = {}
        for label, _, data in self._layers:
            _note_origins(out, data, (), label)
        return {**out, **self._env}

    def profile(self, name: str) -> Profile:
        """The named profile, or a ConfigError listing the valid names."""
        try:
            return self.profiles[name]
        except KeyError:
            message, hint = self._unknown_profile(name)
            raise ConfigError(message, hint=hint) from None

    def chat_profile(self, name: str) -> Profile:
        """The named chat profile (what a cell or `%mirai use` may ask for), or a UsageError."""
        if name not in self.chat_profiles():
            message, hint = self._unknown_profile(name)
            raise UsageError(message, hint=hint)
        return self.profiles[name]

    def _unknown_profile(self, name: str) -> tuple[str, str]:
        return f"unknown profile {name!r}", f"use one of: {', '.join(self.chat_profiles())}"

    def chat_profiles(self) -> list[str]:
        """Profiles that answer chat requests (not embeddings)."""
        return [n for n, p in self.profiles.items() if p.kind != "embedding"]

    def fallback_for(self, name: str) -> str | None:
        """The next profile along the fallback chain, or None at its end."""
        chain = self.degradation.fallback_chain
        if name in chain and chain.index(name) + 1 < len(chain):
            return chain[chain.index(name) + 1]
        return None

    def timeout_for(self, profile: Profile) -> float:
        """Per-attempt timeout: the profile's own ``timeout_s``, else ``defaults.timeout_s``."""
        return profile.timeout_s if profile.timeout_s is not None else self.defaults.timeout_s

    def attempts_for(self, profile: Profile) -> int:
        """Attempts in total: the profile's own ``max_retries``, else ``defaults.max_retries``."""
        return profile.max_retries if profile.max_retries is not None else self.defaults.max_retries

    def notices(self) -> list[str]:
        """Seed values this product reads differently or replaces, one line each."""
        out = [line for name, p in self.models.items() for line in p.notes(name)]
        rag = self.context.rag
        if rag.vector_store.lower() not in ("usearch",):
            out.append(
                f"context.rag.vector_store: {rag.vector_store!r} is not bundled; the notebook "
                "memory uses usearch + SQLite"
            )
        if not rag.cache_embeddings:
            out.append(
                "context.rag.cache_embeddings: false; embeddings are still cached by SHA-256 "
                "of the content (an unchanged text is never sent twice)"
            )
        if rag.update_strategy != "diff":
            out.append(
                f"context.rag.update_strategy: {rag.update_strategy!r}; cells are re-embedded "
                "only when they change (diff)"
            )
        metrics, tracing = self.observability.metrics, self.observability.tracing
        if metrics.provider.lower() != "prometheus":
            out.append(f"observability.metrics.provider: {metrics.provider!r}; Prometheus is used")
        if tracing.provider.lower() != "opentelemetry":
            out.append(
                f"observability.tracing.provider: {tracing.provider!r}; OpenTelemetry is used"
            )
        sandbox = self.security.sandbox
        if sandbox.enabled and sandbox.executor == "docker":
            out.append(
                "security.sandbox.executor: docker when a daemon answers, else bubblewrap "
                "(bwrap); generated code runs only there, when asked (`%mirai run`, --run)"
            )
        return out

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets redacted, ready to print."""
        data = self.model_dump(mode="json")
        data["security"]["api_key"] = (
            REDACTED if os.environ.get(self.security.api_key_env_var) else "(not set)"
        )
        return data


def redis_url(config: Config) -> str:
    """The Redis of the job queue and shared limits: $MIRAI_REDIS_URL, else ``redis.url``."""
    return os.environ.get("MIRAI_REDIS_URL", "").strip() or config.redis.url


def job_timeout_s(config: Config) -> float:
    """How long one queued item may run before another worker takes it over."""
    return config.queue.job_timeout_s or config.defaults.deadline_s + 15


def home_dir(config: Config) -> Path:
    """Where memory and the call log live: $MIRAI_HOME, else context.rag.dir under the cwd."""
    return Path(os.environ.get("MIRAI_HOME") or config.memory.dir).expanduser().resolve()


# --- loading -----------------------------------------------------------------


def default_config_path() -> Path:
    """The packaged default config (or the repo's configs/ file in a source checkout)."""
    packaged = resources.files("mirai_magics").joinpath("default_config.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "configs" / "openai_config.yaml"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Packaged default → file named by $MIRAI_CONFIG → explicit ``path``; then env overrides."""
    paths = [(PACKAGED, default_config_path())]
    if os.environ.get(ENV_CONFIG):
        paths.append((ENV_CONFIG, Path(os.environ[ENV_CONFIG])))
    if path is not None:
        paths.append(("path", Path(path)))
    layers = [(str(p), config_yaml.read_text(p)) for _, p in paths]
    return apply_env(_judged(layers, [label for label, _ in paths]))


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate one YAML document on top of the packaged defaults (used by tests and `%mirai`)."""
    default = default_config_path()
    layers = [(str(default), config_yaml.read_text(default)), (source, text)]
    return apply_env(_judged(layers, [PACKAGED, source]))


def apply_env(config: Config) -> Config:
    """MIRAI_BASE_URL, then OPENAI_BASE_URL, override the endpoint."""
    for name in ENV_BASE_URLS:
        if os.environ.get(name):
            endpoint = config.endpoint.model_copy(update={"base_url": os.environ[name]})
            config = config.model_copy(update={"endpoint": endpoint})
            config._env = {("endpoint", "base_url"): f"env {name}"}
            return config
    return config


def _note_origins(out: Origins, node: dict[str, Any], path: tuple[str, ...], label: str) -> None:
    """Label each value under ``node`` with ``label``; a ``!replace`` mapping first forgets
    what lower layers wrote under it."""
    for key, value in node.items():
        where = (*path, str(key))
        if isinstance(value, config_yaml.Replace):
            for old in [p for p in out if p[: len(where)] == where]:
                del out[old]
        if isinstance(value, dict) and value:
            _note_origins(out, value, where, label)
        else:
            out[where] = label


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    data = config_yaml.load(text, source)  # bounded: size, depth, alias expansion
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    secret = secret_in(data)  # per layer: the error names this file's line
    if secret is not None:
        where, problem, hint = secret
        located = locate([(source, text)], where)
        raise ConfigError(f"{located}: {dotted(where)}: {problem}", hint=hint)
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge, except a ``!replace`` one; the rest replaces."""
    out = dict(base)
    for key, value in override.items():
        merges = not isinstance(value, config_yaml.Replace)
        if merges and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# Layers refused before (digest of their sources and texts → message, hint): the
# pre_run_cell hook, the magic and every later cell ask for the same broken file, and
# each gets the verdict without a second parse. A changed file is a new digest.
_REFUSED: OrderedDict[str, tuple[str, str]] = OrderedDict()
MAX_REMEMBERED_REFUSALS = 16


def _judged(layers: list[Layer], labels: list[str]) -> Config:
    """:func:`_validate`, or the remembered ConfigError of the same layers."""
    digest = hashlib.sha256()
    for source, text in layers:
        digest.update(f"{len(source)}:{source}{len(text)}:{text}".encode("utf-8", "surrogatepass"))
    key = digest.hexdigest()
    if key in _REFUSED:
        message, hint = _REFUSED[key]
        raise ConfigError(message, hint=hint)
    try:
        return _validate(layers, labels)
    except ConfigError as exc:
        _REFUSED[key] = (exc.message, exc.hint)
        while len(_REFUSED) > MAX_REMEMBERED_REFUSALS:
            _REFUSED.popitem(last=False)
        raise


def _validate(layers: list[Layer], labels: list[str]) -> Config:
    """Merge the layers in order and validate; the source of the config is the last one."""
    merged: dict[str, Any] = {}
    parsed = []
    for (source, text), label in zip(layers, labels, strict=True):
        data = _parse_yaml(text, source)
        parsed.append((label, source, data))
        merged = _deep_merge(merged, data)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(first_error(exc, layers, Config)) from None
    config._source, config._layers = layers[-1][0], parsed
    return config
