"""The one error hierarchy: every failure a notebook user can see, with what to do about it."""

from __future__ import annotations


class MiraiError(Exception):
    """Base of every mirai_magics error; ``str()`` is one line a user can act on."""

    code = "mirai_error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(MiraiError):
    """The configuration file or an override is invalid."""

    code = "config_error"
    hint = "fix the file and run `mirai check-config`"


class CircuitOpenError(MiraiError):
    """The breaker for a model is open: calls are refused without touching the network."""

    code = "circuit_open"

    def __init__(self, model: str, remaining_s: float) -> None:
        self.model = model
        self.remaining_s = remaining_s
        super().__init__(
            f"circuit breaker open for {model}: too many consecutive failures",
            hint=f"retry in {remaining_s:.0f} s or use another profile (`%mirai status` shows it)",
        )


class QuotaExceededError(MiraiError):
    """A rate limit, token budget or request cap refused the call before sending."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_in_s: float | None = None, kind: str = "") -> None:
        self.retry_in_s = retry_in_s
        self.kind = kind
        hint = f"retry in {retry_in_s:.0f} s" if retry_in_s is not None else "shorten the prompt"
        super().__init__(message, hint=hint)


class ClientRequestError(MiraiError):
    """The API refused the request (4xx other than 408/409/429); retrying will not help."""

    code = "client_error"

    def __init__(self, message: str, *, status: int | None = None, hint: str = "") -> None:
        self.status = status
        super().__init__(message, hint=hint or _client_hint(status))


class RetriesExhaustedError(MiraiError):
    """Every attempt failed with a retryable error (or the deadline ran out).

    ``client.failures`` writes the message: the fallback chain it went down and the cause
    (``heavy/gpt-4o → main → fast all failed: HTTP 500``), the URL it could not reach and
    the setting that names it, or that a stream was cut mid-answer.
    """

    code = "retries_exhausted"

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        last_reason: str,
        status: int | None = None,
        hint: str | None = None,
    ):
        self.attempts = attempts
        self.last_reason = last_reason
        self.status = status
        super().__init__(message, hint=hint or "wait a minute, or try another profile")


class ContextTooLongError(MiraiError):
    """The system prompt or the assembled context is over its token budget."""

    code = "context_too_long"
    hint = "shorten it or raise the limit under `context:` in the config"


class ReplayMissError(MiraiError):
    """Replay mode found no recording for this request."""

    code = "replay_miss"
    hint = "record it again (MIRAI_RECORD=path) or set MIRAI_REPLAY_MODE=fallthrough"


class MemoryCorruptError(MiraiError):
    """The notebook memory's SQLite file cannot be read (corrupt or not a database)."""

    code = "memory_corrupt"
    hint = "move it away or run `%mirai memory forget all` (which keeps a copy)"

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class UsageError(MiraiError):
    """The magic was called with arguments it does not understand."""

    code = "usage_error"


class CallInterrupted(KeyboardInterrupt):
    """The user interrupted a call (the kernel's stop button, Ctrl-C).

    Still a KeyboardInterrupt, so Run All stops at this cell, but IPython shows one line
    (``_render_traceback_``) instead of a traceback through the engine's internals.
    """

    code = "cancelled"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:
        return [f"[mirai] ✗ {self.message}"]


def _client_hint(status: int | None) -> str:
    return {
        400: "the request was rejected as invalid; check the options and the prompt",
        401: "the API key was refused; set a valid key in the environment and run `%mirai reload`",
        403: "this key may not use that model; pick another profile with `%mirai use`",
        404: "the model or endpoint does not exist; check `model` in the profile or the base URL",
        413: "the request is too large; shorten the prompt or use --no-history",
        422: "the request could not be processed; check the parameters",
    }.get(status or 0, "check the request parameters")


class RedisUnavailableError(MiraiError):
    """The Redis of the job queue or the shared limits does not answer."""

    code = "redis_unavailable"

    def __init__(
        self, url: str, reason: str, *, hint: str | None = None, effect: str = "nothing was sent"
    ) -> None:
        self.url = url
        super().__init__(
            f"Redis at {url} is unreachable ({reason}); {effect}",
            hint=hint
            or "start redis-server (or fix redis.url / MIRAI_REDIS_URL), or set "
            "limits.backend: local and queue.backend: inprocess",
        )


class JobError(MiraiError):
    """A background job or batch cannot be found, resumed or cancelled as asked."""

    code = "job_error"
    hint = "`%mirai jobs` lists the jobs of this notebook's store"


SANDBOX_INSTALL_HINT = "install bubblewrap (`apt-get install bubblewrap`) or start a Docker daemon"


class SandboxError(MiraiError):
    """The sandbox could not run the code (it failed to start, or its helper broke)."""

    code = "sandbox_error"
    hint = "nothing ran in the kernel; check `security.sandbox` in the config"


class SandboxUnavailableError(SandboxError):
    """Neither executor can run here; mirai never falls back to running code unsandboxed."""

    code = "sandbox_unavailable"
    hint = SANDBOX_INSTALL_HINT


class SandboxRefusedError(SandboxError):
    """The run asks for something the configuration does not allow (network, a bad file)."""

    code = "sandbox_refused"
