"""The configuration's sections as pydantic models, in the seed's layout (`openai_config.yaml`).

Every key of the seed's file is a field here under its own name; the project's own knobs are
optional fields of the same sections (documented in `configs/openai_config.yaml`). Models
are strict: an unknown key, a wrong type or a value out of range is refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .redact import DEFAULT_ASSIGNMENT_NAMES

REASONING_PREFIXES = ("o1", "o3", "o4")
EMBEDDING_PREFIXES = ("text-embedding", "embedding")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- defaults and models -------------------------------------------------------------------


class Backoff(Strict):
    base_ms: float = Field(200, gt=0)
    max_ms: float = Field(8000, gt=0)
    jitter: bool = True  # full jitter: uniform(0, min(max, base · 2^n))

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max_ms < self.base_ms:
            raise ValueError("max_ms must be ≥ base_ms")
        return self


class Defaults(Strict):
    timeout_s: float = Field(90, gt=0)  # per attempt
    max_retries: int = Field(4, ge=1, le=20)  # attempts in total (the seed's stop_after_attempt)
    backoff: Backoff = Backoff()
    retry_after_cap_s: float = Field(60, ge=0)
    deadline_s: float = Field(240, gt=0)
    stream: bool = True


class Canary(Strict):
    """``models.<profile>.canary``: a share of sessions tries another (dated) model version."""

    name: str = Field(min_length=1)
    percent: float = Field(ge=0, le=100)
    window_calls: int = Field(100, ge=1)  # recent calls of each version compared
    min_calls: int = Field(20, ge=1)  # of the canary, before it can be judged
    max_error_rate_delta: float = Field(0.05, ge=0, le=1)  # +5 points over the stable's
    max_p95_factor: float = Field(1.5, ge=1)  # or 1.5 × the stable's p95 latency


class Profile(Strict):
    """One entry of ``models:``; ``name`` is the model id sent to the API."""

    name: str = Field(min_length=1)
    kind: Literal["chat", "embedding", "reasoning"] | None = None  # None: from the name
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_temperature: float = Field(2.0, ge=0, le=2)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    dimensions: int | None = Field(None, ge=1, le=8192)
    timeout_s: float | None = Field(None, gt=0)
    max_retries: int | None = Field(None, ge=1, le=20)
    use_cases: list[str] = []
    canary: Canary | None = None
    endpoint: str | None = None  # a name of ``endpoints:``; None: the default ``endpoint:``
    vision: bool = True  # false: the model takes no image parts (a cell with one is refused)

    @model_validator(mode="after")
    def _limits(self) -> Profile:
        if self.kind is None:
            object.__setattr__(self, "kind", kind_of(self.name, self.dimensions))
        if (
            self.kind != "reasoning"
            and self.temperature is not None
            and self.temperature > self.max_temperature
        ):
            raise ValueError(
                f"temperature {self.temperature} is above max_temperature {self.max_temperature}"
            )
        return self

    @property
    def output_cap(self) -> int:
        """The most output tokens a call with this profile may produce."""
        return self.max_tokens or 0

    @property
    def model(self) -> str:
        """The model id (``name``), under the word the API uses."""
        return self.name

    def notes(self, profile: str) -> list[str]:
        """What is sent differently from what is written, in one line each."""
        if self.kind != "reasoning":
            return []
        dropped = [k for k in ("temperature", "top_p") if getattr(self, k) is not None]
        out = [f"models.{profile}: max_tokens is sent as max_completion_tokens ({self.name})"]
        if dropped:
            out.append(
                f"models.{profile}: {'/'.join(dropped)} not sent: o1-class models reject them"
            )
        return out


def kind_of(name: str, dimensions: int | None) -> str:
    """chat, embedding or reasoning, from the model id (``kind:`` in the YAML overrides)."""
    if dimensions is not None or name.startswith(EMBEDDING_PREFIXES):
        return "embedding"
    if name.startswith(REASONING_PREFIXES):
        return "reasoning"
    return "chat"


# --- limits and breaker --------------------------------------------------------------------


class Concurrency(Strict):
    chat: int = Field(16, ge=1)
    embeddings: int = Field(64, ge=1)
    background: int = Field(4, ge=1)


class Rps(Strict):
    chat: float = Field(10, gt=0)
    embeddings: float = Field(50, gt=0)


class TokenLimits(Strict):
    per_minute: int = Field(150_000, ge=1)
    per_user_minute: int = Field(10_000, ge=1)
    per_request_max: int = Field(4096, ge=1)  # output tokens one request may ask for


class BudgetUsd(Strict):
    """``limits.budget_usd``: USD caps checked before a call is sent (null: no cap); see
    ``client/spend.py``. ``per_day`` is this machine's calendar day, from the call log."""

    per_session: float | None = Field(None, ge=0)
    per_day: float | None = Field(None, ge=0)


class Limits(Strict):
    concurrency: Concurrency = Concurrency()
    tokens: TokenLimits = TokenLimits()
    rps: Rps = Rps()
    budget_usd: BudgetUsd = BudgetUsd()
    max_wait_s: float = Field(10, ge=0)
    # local: budgets, RPS windows and breakers per process; redis: shared by every kernel
    # and worker of ``redis.url`` (evenly spaced sends in Lua, keys namespaced and expiring)
    backend: Literal["local", "redis"] = "local"
    # redis unreachable: error (one line, no call) or local (in-process limits, with a notice)
    on_redis_down: Literal["error", "local"] = "error"
    user: str | None = None
    context_windows: dict[str, int] = {}  # model id (or prefix) → tokens, over the built-ins


class RedisSettings(Strict):
    """``redis``: one Redis for the job queue and the shared limits (MIRAI_REDIS_URL wins)."""

    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = Field("mirai", min_length=1)  # key prefix: mirai:rps:chat, mirai:jobs:…
    connect_timeout_s: float = Field(2, gt=0)


class Queue(Strict):
    """``queue``: where `%%mirai --background` cells and ``batch()`` items run."""

    backend: Literal["inprocess", "arq"] = "inprocess"  # arq: `mirai worker` processes
    name: str = Field("mirai:queue", min_length=1)  # the Arq queue
    job_timeout_s: float | None = Field(None, gt=0)  # None: defaults.deadline_s + 15 s
    poll_s: float = Field(0.2, gt=0)  # how often the kernel collects Arq results


class Breaker(Strict):
    failure_threshold: int = Field(5, ge=1)
    timeout_s: float = Field(60, gt=0)  # how long it stays open
    half_open_interval_s: float = Field(30, gt=0)  # probe interval after a failed probe
    success_threshold: int = Field(2, ge=1)


# --- degradation: a list of {trigger, action} ------------------------------------------------

Action = Literal["switch_to_fast", "reduce_max_tokens", "trim_context"]


class RuleBase(Strict):
    action: Action
    enabled: bool = True
    max_tokens_factor: float = Field(0.7, gt=0, le=1)  # reduce_max_tokens: −30%
    history_messages: int = Field(6, ge=0)  # trim_context: 12 → 6


class RateLimitRule(RuleBase):
    """Sustained rate limiting of a model: most of its attempts, or its calls, end in 429."""

    trigger: Literal["rate_limit_429"] = "rate_limit_429"
    action: Action = "switch_to_fast"
    window_s: float = Field(60, gt=0)
    attempt_share: float = Field(0.5, gt=0, le=1)  # share of 429 among attempts in the window
    min_attempts: int = Field(50, ge=1)
    exhausted_share: float = Field(0.5, gt=0, le=1)  # share of calls whose retries ended in 429
    min_calls: int = Field(5, ge=1)


class LatencyRule(RuleBase):
    trigger: Literal["latency_high"] = "latency_high"
    action: Action = "reduce_max_tokens"
    p95_threshold_s: float = Field(20, gt=0)
    recover_below_s: float = Field(15, gt=0)
    window_calls: int = Field(50, ge=1)
    min_calls: int = Field(10, ge=1)


class ErrorRateRule(RuleBase):
    trigger: Literal["error_rate_5percent"] = "error_rate_5percent"
    action: Action = "trim_context"
    threshold: float = Field(0.05, gt=0, le=1)
    recover_below: float = Field(0.02, ge=0, le=1)
    window_calls: int = Field(100, ge=1)
    min_calls: int = Field(20, ge=1)


Rule = Annotated[RateLimitRule | LatencyRule | ErrorRateRule, Field(discriminator="trigger")]


class Degradation(Strict):
    enabled: bool = True
    rules: list[Rule] = [RateLimitRule(), LatencyRule(), ErrorRateRule()]
    fallback_chain: list[str] = ["heavy", "main", "fast"]


# --- context and memory -----------------------------------------------------------------------


class Rag(Strict):
    """``context.rag``: the notebook memory (usearch + SQLite)."""

    enabled: bool = True
    cache_embeddings: bool = True  # by SHA-256 of the content
    update_strategy: Literal["diff", "full"] = "diff"  # diff: only changed cells re-embedded
    vector_store: str = "usearch"  # anything else is accepted with a notice: usearch is used
    dir: str = ".mirai"
    scope: Literal["notebook", "folder"] = "notebook"  # whose cells come back (memory/identity.py)
    embedder: Literal["auto", "local", "openai"] = "auto"
    local_dims: int = Field(256, ge=8, le=4096)
    top_k: int = Field(4, ge=0, le=100)
    min_score: float = Field(0.25, ge=-1, le=1)
    max_tokens: int = Field(1200, ge=0)
    max_output_chars: int = Field(500, ge=0)
    exact_search_below: int = Field(50_000, ge=0)


class Context(Strict):
    max_history_messages: int = Field(12, ge=0)
    system_prompt_max_tokens: int = Field(1500, ge=1)
    image_max_side: int = Field(1024, ge=16, le=8192)  # images are scaled down to fit
    rag: Rag = Rag()
    system_prompt: str = "You are a concise assistant inside a Jupyter notebook."


# --- observability -----------------------------------------------------------------------------

LOG_FIELDS = (
    "model",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "attempt_number",
    "error_code",
    "user_id",
    "profile",
    "requested_profile",
    "call_id",
    "kind",
    "retry_reasons",
    "degraded",
    "offline",
    "error",
)
MetricName = Literal[
    "requests_total",
    "requests_errors",
    "latency_p50_p95_p99",
    "tokens_per_minute",
    "retry_rate",
    "circuit_breaker_open",
]


class Logging(Strict):
    enabled: bool = True
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    fields: list[Literal[LOG_FIELDS]] = list(LOG_FIELDS[:7])  # type: ignore[valid-type]
    include_prompts: bool = False
    file_max_bytes: int = Field(5_000_000, ge=10_000)
    file_backups: int = Field(3, ge=0)


class Metrics(Strict):
    enabled: bool = True
    provider: str = "prometheus"
    port: int = Field(9090, ge=0, le=65535)
    metrics: list[MetricName] = list(MetricName.__args__)  # type: ignore[attr-defined]
    latency_buckets_s: list[float] = [0.1, 0.5, 1, 2, 5, 10, 30, 60]


class Tracing(Strict):
    enabled: bool = True
    provider: str = "opentelemetry"
    endpoint: str = "http://localhost:4318"
    service_name: str = "mirai_magics"


class Alert(Strict):
    condition: str = Field(min_length=1)
    severity: Literal["critical", "warning", "info"] = "warning"


class CallLog(Strict):
    enabled: bool = True
    include_prompts: bool = True


class Observability(Strict):
    logging: Logging = Logging()
    metrics: Metrics = Metrics()
    tracing: Tracing = Tracing()
    alerts: list[Alert] = []
    call_log: CallLog = CallLog()


# --- security, ui, pricing, testing -----------------------------------------------------------


class Sandbox(Strict):
    """``security.sandbox``: where generated code runs (docker when a daemon answers, else
    bubblewrap) and what it may use; never in the kernel."""

    enabled: bool = True
    executor: Literal["docker", "bwrap"] = "docker"
    timeout_s: float = Field(30, gt=0)  # wall clock; CPU seconds are capped a second above
    memory_mb: int = Field(1024, ge=16)  # address space (bwrap) / cgroup memory (docker)
    max_processes: int = Field(64, ge=1)  # at once, the code itself included
    max_output_bytes: int = Field(1_048_576, ge=1024)  # stdout + stderr kept; then killed
    disk_mb: int = Field(64, ge=1)  # work dir and /tmp (tmpfs); also the largest file
    allow_network: bool = False  # --net / network=True is refused unless true
    image: str = Field("python:3.12-slim", min_length=1)  # docker only; never pulled
    cpus: float = Field(1.0, gt=0)  # docker only (--cpus)
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []  # passed in


class Security(Strict):
    api_key_source: Literal["env"] = "env"
    api_key_env_var: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    rotate_keys: bool = True
    rotation_interval_days: float = Field(90, gt=0)
    sandbox: Sandbox = Sandbox()
    redact_env_names: list[str] = ["KEY", "TOKEN", "SECRET", "PASSWORD"]
    # Names whose values are redacted in code, JSON, YAML, env files and URLs (redact.py):
    # a plain word matches a name ending in it, a `*` pattern by glob with a key-like value.
    redact_assignments: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_*?\-]+$")]] = list(
        DEFAULT_ASSIGNMENT_NAMES
    )

    @model_validator(mode="after")
    def _no_secret_into_sandbox(self) -> Security:
        for i, name in enumerate(self.sandbox.env):
            why = secret_name_reason(name, self.redact_env_names, self.api_key_env_var)
            if why:
                raise ValueError(
                    f"sandbox.env[{i}]: {name} {why}; secrets are never passed to the sandbox"
                )
        return self


def secret_name_reason(name: str, redact_parts: list[str] | tuple[str, ...], key_var: str) -> str:
    """Why an environment variable counts as a secret ("" when it does not)."""
    if name == key_var:
        return "is the API key variable"
    part = next((p for p in redact_parts if p.upper() in name.upper()), None)
    return f"matches redact_env_names ({part})" if part else ""


class Endpoint(Strict):
    """``endpoint``: the default endpoint, of every profile without ``endpoint:``; its key is
    ``security.api_key_env_var`` (MIRAI_BASE_URL / OPENAI_BASE_URL override ``base_url``)."""

    base_url: str | None = None
    organization: str | None = None


DEFAULT_ENDPOINT = "default"  # the name of the ``endpoint:`` block (reserved in ``endpoints:``)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENDPOINT_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"


class NamedEndpoint(Strict):
    """One entry of ``endpoints:``, used by the profiles that say ``endpoint: NAME``.

    ``api_key_env_var: null`` is a server that needs no key (Ollama, vLLM without --api-key):
    ``EMPTY`` is sent. ``api_version`` makes it Azure's classic form: ``base_url`` is the
    resource (``https://RES.openai.azure.com``), calls go to
    ``/openai/deployments/{model}/…?api-version=…`` with an ``api-key`` header, and a
    profile's ``name`` is the deployment. Azure's ``/openai/v1/`` form is a plain base URL.
    """

    base_url: str = Field(min_length=1)
    api_key_env_var: str | None = Field(None, pattern=ENV_NAME)
    organization: str | None = None
    default_headers: dict[str, str] = {}  # sent with every request (never a key: use the env)
    default_query: dict[str, str] = {}  # added to every URL, e.g. {api-version: preview}
    api_version: str | None = Field(None, min_length=1)  # Azure classic (deployments) form

    @model_validator(mode="after")
    def _azure_form(self) -> NamedEndpoint:
        if self.api_version is not None and "/openai/v1" in self.base_url:
            raise ValueError(
                "api_version is for Azure's classic form (base_url: the resource URL); "
                "the /openai/v1/ form takes none (drop api_version)"
            )
        return self


class UI(Strict):
    stream_throttle_ms: float = Field(50, ge=0)
    default_format: Literal["markdown", "code", "text", "json"] = "markdown"
    default_profile: str = "main"  # a profile of models:, or auto (routing picks per cell)


class Routing(Strict):
    """``%%mirai auto``: which of main / heavy / fast a cell goes to (smart switching)."""

    classifier: Literal["local", "fast"] = "local"  # fast: one short call to the fast profile
    classifier_timeout_s: float = Field(2.0, gt=0)
    rules: dict[str, list[str]] = {}  # profile → extra regex patterns (override the built-ins)
    target: dict[str, float] = {"main": 70, "heavy": 25, "fast": 5}  # percent, shown by status


class Price(Strict):
    """One entry of ``pricing:``, USD per million tokens; it wins over genai-prices' price
    (and over the 0 of a keyless, local endpoint), see ``pricing.py``."""

    input: float = Field(ge=0)
    output: float = Field(0, ge=0)  # embeddings have no output tokens


class GoldenPrompts(Strict):
    enabled: bool = True
    path: str = "tests/golden_prompts.yaml"


class LoadTests(Strict):
    enabled: bool = True
    parallel_dialogs: int = Field(50, ge=1)
    duration_minutes: float = Field(10, gt=0)
    target_p95_latency_s: float = Field(15, gt=0)
    target_error_rate: float = Field(0.03, ge=0, le=1)
    turns_per_dialog: int = Field(6, ge=1)


class Chaos(Strict):
    enabled: bool = False
    inject_429_rate: float = Field(0.1, ge=0, le=1)
    inject_5xx_rate: float = Field(0.1, ge=0, le=1)


class OfflineServerSettings(Strict):
    seed: int = 0


class Testing(Strict):
    golden_prompts: GoldenPrompts = GoldenPrompts()
    load_tests: LoadTests = LoadTests()
    chaos: Chaos = Chaos()
    offline_server: OfflineServerSettings = OfflineServerSettings()
