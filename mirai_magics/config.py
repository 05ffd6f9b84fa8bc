"""Configuration: YAML layers → validated pydantic models, env overrides, one-line errors."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ConfigError, UsageError
from .redact import REDACTED, looks_like_key

KEY_NAMES = {"api_key", "apikey", "api-key", "secret", "secret_key", "password", "token"}
ENV_CONFIG = "MIRAI_CONFIG"
ENV_BASE_URLS = ("MIRAI_BASE_URL", "OPENAI_BASE_URL")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Endpoint(Strict):
    base_url: str | None = None
    organization: str | None = None


class Backoff(Strict):
    initial_ms: float = Field(200, gt=0)
    max_ms: float = Field(8000, gt=0)
    jitter: Literal["full", "none"] = "full"

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max_ms < self.initial_ms:
            raise ValueError("max_ms must be ≥ initial_ms")
        return self


class Defaults(Strict):
    timeout_s: float = Field(90, gt=0)
    embeddings_timeout_s: float = Field(30, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)
    backoff: Backoff = Backoff()
    retry_after_cap_s: float = Field(60, ge=0)
    deadline_s: float = Field(240, gt=0)
    stream: bool = True


class Profile(Strict):
    model: str = Field(min_length=1)
    kind: Literal["chat", "embedding", "reasoning"] = "chat"
    temperature: float | None = Field(None, ge=0, le=2)
    max_temperature: float = Field(2.0, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    dimensions: int | None = Field(None, ge=1, le=8192)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _kind_rules(self) -> Profile:
        if self.kind == "reasoning" and (self.temperature is not None or self.top_p is not None):
            raise ValueError("a reasoning profile sends no temperature/top_p; remove them")
        if self.kind == "reasoning" and self.max_tokens is not None:
            raise ValueError("a reasoning profile uses max_completion_tokens, not max_tokens")
        if self.temperature is not None and self.temperature > self.max_temperature:
            raise ValueError(
                f"temperature {self.temperature} is above max_temperature {self.max_temperature}"
            )
        return self

    @property
    def output_cap(self) -> int:
        """The most output tokens a call with this profile may produce."""
        return self.max_completion_tokens or self.max_tokens or 0


class Concurrency(Strict):
    chat: int = Field(16, ge=1)
    embeddings: int = Field(64, ge=1)
    background: int = Field(4, ge=1)


class RequestsPerSecond(Strict):
    chat: float = Field(10, gt=0)
    embeddings: float = Field(50, gt=0)


class TokenLimits(Strict):
    global_per_minute: int = Field(150_000, ge=1)
    per_user_per_minute: int = Field(10_000, ge=1)
    per_request_max: int = Field(4096, ge=1)


class Limits(Strict):
    concurrency: Concurrency = Concurrency()
    requests_per_second: RequestsPerSecond = RequestsPerSecond()
    max_wait_s: float = Field(10, ge=0)
    tokens: TokenLimits = TokenLimits()
    user: str | None = None


class Breaker(Strict):
    failure_threshold: int = Field(5, ge=1)
    open_s: float = Field(60, gt=0)
    probe_interval_s: float = Field(30, gt=0)
    success_threshold: int = Field(2, ge=1)


class RateLimitRule(Strict):
    enabled: bool = True
    engage_after: int = Field(3, ge=1)
    window_s: float = Field(60, gt=0)
    recover_after_s: float = Field(120, gt=0)


class LatencyRule(Strict):
    enabled: bool = True
    p95_threshold_s: float = Field(20, gt=0)
    recover_below_s: float = Field(15, gt=0)
    window_calls: int = Field(50, ge=1)
    min_calls: int = Field(10, ge=1)
    max_tokens_factor: float = Field(0.7, gt=0, le=1)


class ErrorRateRule(Strict):
    enabled: bool = True
    threshold: float = Field(0.05, gt=0, le=1)
    recover_below: float = Field(0.02, ge=0, le=1)
    window_calls: int = Field(100, ge=1)
    min_calls: int = Field(20, ge=1)
    history_messages: int = Field(6, ge=0)


class Rules(Strict):
    rate_limit_429: RateLimitRule = RateLimitRule()
    latency_high: LatencyRule = LatencyRule()
    error_rate_5percent: ErrorRateRule = ErrorRateRule()


class Degradation(Strict):
    fallback_chain: list[str] = ["heavy", "main", "fast"]
    rules: Rules = Rules()


class Context(Strict):
    max_history_messages: int = Field(12, ge=0)
    system_prompt_max_tokens: int = Field(1500, ge=1)
    system_prompt: str = "You are a concise assistant inside a Jupyter notebook."


class Memory(Strict):
    enabled: bool = True
    dir: str = ".mirai"
    embedder: Literal["auto", "local", "openai"] = "auto"
    local_dims: int = Field(256, ge=8, le=4096)
    top_k: int = Field(4, ge=0, le=100)
    min_score: float = Field(0.25, ge=-1, le=1)
    max_tokens: int = Field(1200, ge=0)
    max_output_chars: int = Field(500, ge=0)
    exact_search_below: int = Field(50_000, ge=0)


class Logging(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    include_prompts: bool = False


class Metrics(Strict):
    port: int = Field(9090, ge=0, le=65535)
    latency_buckets_s: list[float] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60]


class Tracing(Strict):
    enabled: bool = False
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "mirai_magics"


class CallLog(Strict):
    enabled: bool = True
    include_prompts: bool = True


class Observability(Strict):
    logging: Logging = Logging()
    metrics: Metrics = Metrics()
    tracing: Tracing = Tracing()
    call_log: CallLog = CallLog()


class Security(Strict):
    api_key_env_var: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    redact_env_names: list[str] = ["KEY", "TOKEN", "SECRET", "PASSWORD"]


class UI(Strict):
    stream_throttle_ms: float = Field(50, ge=0)
    default_format: Literal["markdown", "code", "text", "json"] = "markdown"


class Price(Strict):
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class OfflineServerSettings(Strict):
    seed: int = 0


class LoadTests(Strict):
    dialogs: int = Field(50, ge=1)
    turns_per_dialog: int = Field(6, ge=1)
    duration_s: float = Field(600, gt=0)
    p95_latency_s: float = Field(15, gt=0)
    max_error_rate: float = Field(0.03, ge=0, le=1)


class Chaos(Strict):
    fail_429: float = Field(0.1, ge=0, le=1)
    fail_5xx: float = Field(0.1, ge=0, le=1)


class Testing(Strict):
    offline_server: OfflineServerSettings = OfflineServerSettings()
    load_tests: LoadTests = LoadTests()
    chaos: Chaos = Chaos()


class Config(Strict):
    version: Literal[1] = 1
    endpoint: Endpoint = Endpoint()
    defaults: Defaults = Defaults()
    profiles: dict[str, Profile]
    limits: Limits = Limits()
    circuit_breaker: Breaker = Breaker()
    degradation: Degradation = Degradation()
    context: Context = Context()
    memory: Memory = Memory()
    observability: Observability = Observability()
    security: Security = Security()
    ui: UI = UI()
    pricing: dict[str, Price] = {}
    testing: Testing = Testing()
    _source: str = PrivateAttr("<defaults>")

    @model_validator(mode="after")
    def _profiles_known(self) -> Config:
        for i, name in enumerate(self.degradation.fallback_chain):
            if name not in self.profiles:
                raise ValueError(
                    f"degradation.fallback_chain[{i}]: unknown profile {name!r} "
                    f"(known: {', '.join(self.profiles)})"
                )
        if "main" not in self.profiles:
            raise ValueError("profiles: a 'main' profile is required (it is the default)")
        return self

    @property
    def source(self) -> str:
        """The file the last layer came from."""
        return self._source

    def profile(self, name: str) -> Profile:
        """The named profile, or a ConfigError listing the valid names."""
        try:
            return self.profiles[name]
        except KeyError:
            raise ConfigError(*self._unknown_profile(name)) from None

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
        """Per-attempt timeout: the profile's own, else the default for its kind."""
        if profile.timeout_s is not None:
            return profile.timeout_s
        if profile.kind == "embedding":
            return self.defaults.embeddings_timeout_s
        return self.defaults.timeout_s

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets redacted, ready to print."""
        data = self.model_dump(mode="json")
        data["security"]["api_key"] = (
            REDACTED if os.environ.get(self.security.api_key_env_var) else "(not set)"
        )
        return data


def home_dir(config: Config) -> Path:
    """Where memory and the call log live: $MIRAI_HOME, else memory.dir under the cwd."""
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
    layers = [default_config_path()]
    if os.environ.get(ENV_CONFIG):
        layers.append(Path(os.environ[ENV_CONFIG]))
    if path is not None:
        layers.append(Path(path))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, _read_yaml(layer))
    source = str(layers[-1])
    config = _validate(merged, source)
    return apply_env(config)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate one YAML document on top of the packaged defaults (used by tests and `%mirai`)."""
    merged = _deep_merge(_read_yaml(default_config_path()), _parse_yaml(text, source))
    return apply_env(_validate(merged, source))


def apply_env(config: Config) -> Config:
    """MIRAI_BASE_URL, then OPENAI_BASE_URL, override the endpoint."""
    for name in ENV_BASE_URLS:
        if os.environ.get(name):
            endpoint = config.endpoint.model_copy(update={"base_url": os.environ[name]})
            return config.model_copy(update={"endpoint": endpoint})
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    _refuse_secrets(data, source, ())
    return data


def _refuse_secrets(node: Any, source: str, path: tuple[str, ...]) -> None:
    """Refuse any key-named field or key-shaped value anywhere in the YAML."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = (*path, str(key))
            if str(key).lower() in KEY_NAMES:
                raise ConfigError(
                    f"{source}: {_dotted(where)}: API keys must not be in the config file",
                    hint="set the environment variable named by security.api_key_env_var instead",
                )
            _refuse_secrets(value, source, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_secrets(value, source, (*path, i))
    elif isinstance(node, str) and looks_like_key(node):
        raise ConfigError(
            f"{source}: {_dotted(path)}: value looks like an API key; keys must not be in the "
            "config file",
            hint="set the environment variable named by security.api_key_env_var instead",
        )


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, source)) from None
    config._source = source
    return config


def _first_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = _dotted(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown key (valid: {', '.join(_valid_keys(first['loc'][:-1]))})"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif first["type"] != "value_error" and not isinstance(first.get("input"), dict | list):
        msg = f"{msg.replace('Input should be', 'must be')} (got {first.get('input')!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{more}"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` inside Config (for 'unknown key' errors)."""
    model: Any = Config
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            model = model[1] if isinstance(model, tuple) else model  # dict[str, X] entry
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if get_origin(annotation) is dict:
            model = ("dict", get_args(annotation)[1])
        elif annotation is not None:
            model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
