"""The resilient async core: breaker → attempt with timeout → classify → retry → fallback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from ..config import Config, Profile
from ..errors import CircuitOpenError, MiraiError, RetriesExhaustedError
from ..telemetry.tracing import traced_call
from ..tokens import count_messages, count_text, message_text
from .breaker import CircuitBreaker
from .canary import Canaries
from .failures import as_mirai_error, fallback_reason
from .keys import KEY_ROTATED
from .observers import Observer
from .params import chat_params, output_cap
from .records import FALLBACK, Attempt, CallRecord, Degradation, Reply
from .retry import Outcome, backoff, classify, stop_before_deadline, wait_retry_after
from .routing import AUTO, Router

OFFLINE_FINGERPRINT = "mirai-offline"
RESTART = object()  # sent to on_text when a stream is retried after partial output
TextSink = Callable[[Any], None]


class _Shown:
    """What a streamed call has shown so far: a retry after partial text says RESTART."""

    def __init__(self, on_text: TextSink | None):
        self.on_text = on_text
        self.emitted = False

    def text(self, piece: str) -> None:
        self.emitted = True
        if self.on_text is not None:
            self.on_text(piece)

    def restart(self) -> None:
        if self.emitted and self.on_text is not None:
            self.on_text(RESTART)
        self.emitted = False


class _Outcomes:
    """classify() once per failed attempt: the retry test, the wait and the error share it."""

    def __init__(self, retry_after_cap_s: float):
        self.cap = retry_after_cap_s
        self._last: tuple[BaseException, Outcome] | None = None

    def __call__(self, exc: BaseException) -> Outcome:
        if self._last is None or self._last[0] is not exc:
            self._last = (exc, classify(exc, self.cap))
        return self._last[1]


class ResilientClient:
    """Wraps one AsyncOpenAI(max_retries=0); owns breakers, retries and fallback."""

    def __init__(
        self,
        config: Config,
        sdk: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        policy: Any = None,
        observers: list[Observer] | None = None,
        user: str = "",
        rekey: Callable[[Any], bool] | None = None,
        canaries: Canaries | None = None,
    ):
        self.config = config
        self.sdk = sdk
        self.clock = clock
        self.sleep = sleep
        self.policy = policy
        self.observers: list[Observer] = observers if observers is not None else []
        self.user = user
        self.rekey = rekey  # after a 401: give the SDK a rotated key (Endpoint.rotate)
        self.canaries = canaries  # which model version a profile's call goes to
        self.breakers: dict[str, CircuitBreaker] = {}
        self.replay: Any = None  # answers from a recorded call log (see mirai_magics.replay)
        self._router: Router | None = None  # built on the first `auto` call

    def breaker(self, model: str) -> CircuitBreaker:
        """The breaker of ``model``; the policy's (shared through Redis in redis mode)."""
        if model not in self.breakers:
            self.breakers[model] = (
                self.policy.breaker(model, self.clock)
                if self.policy is not None
                else CircuitBreaker(model, self.config.circuit_breaker, self.clock)
            )
        return self.breakers[model]

    # --- public API ------------------------------------------------------------

    @traced_call("chat")
    async def chat(
        self,
        messages: list[dict[str, Any]],
        profile: str = "main",
        *,
        stream: bool = False,
        on_text: TextSink | None = None,
        background: bool = False,
        prompt_tokens: int | None = None,
        route_text: str | None = None,
        on_behalf_of: str | None = None,
        **overrides: Any,
    ) -> Reply:
        """One chat call with retries and fallback; raises a MiraiError on failure.

        ``prompt_tokens``: the messages' token count when the caller already has it (prompt
        assembly counts once; the client counts only when it is not given). Profile ``auto``
        is resolved first (see ``routing``) from ``route_text`` (the cell as typed; default:
        the last user message); the chosen profile is then the one asked for, so fallback and
        degradation apply to it as to any other. ``on_behalf_of``: the user whose budget and
        call-log rows this is (a worker sending a kernel's item); default: this client's.
        """
        started = self.clock()
        route = None
        if profile == AUTO:
            route = await self.router.route(_user_text(messages, route_text), self.chat)
            profile = route.profile
        record = CallRecord(profile=profile, model="", requested_profile=profile, streamed=stream)
        record.user, record.route = on_behalf_of or self.user, route
        text: str | None = None
        estimate = prompt_tokens if prompt_tokens is not None else count_messages(messages)[0]
        try:
            text = await self._chat_with_fallback(
                record, messages, estimate, overrides, _Shown(on_text), started, background
            )
        except BaseException as exc:
            self._fail(record, exc)
            if isinstance(exc, MiraiError):
                exc.record = record  # a background item keeps the record of its failure
            raise
        finally:
            record.latency_ms = (self.clock() - started) * 1000
            self._call_ended(record, messages, text)
        return Reply(text, record)

    @traced_call("embeddings")
    async def embed(
        self, texts: list[str], profile: str = "embed", *, background: bool = False
    ) -> tuple[list[list[float]], CallRecord]:
        """Embed texts with retries (no fallback: vectors of another model would not compare)."""
        prof = self.config.profile(profile)
        params: dict[str, Any] = {"model": prof.model}
        if prof.dimensions:
            params["dimensions"] = prof.dimensions
        record = CallRecord(profile=profile, model=prof.model, kind="embeddings", params=params)
        record.requested_profile, record.user = profile, self.user
        record.tokens_estimated = sum(count_text(t)[0] for t in texts)
        started = self.clock()
        deadline = started + self.config.defaults.deadline_s

        async def attempt(timeout: float) -> list[list[float]]:
            response = await self.sdk.embeddings.create(input=texts, timeout=timeout, **params)
            record.tokens_in = getattr(response.usage, "prompt_tokens", None)
            record.tokens_out = 0
            return [list(item.embedding) for item in response.data]

        try:
            self.breaker(prof.model).check()
            async with self._admitted("embeddings", record, background) as gate:
                vectors = await self._retrying(record, prof, deadline, attempt, gate)
        except BaseException as exc:
            self._fail(record, exc)
            raise
        finally:
            record.latency_ms = (self.clock() - started) * 1000
            self._call_ended(record, None, None)
        return vectors, record

    @property
    def router(self) -> Router:
        """What resolves ``auto`` (its config errors surface on the first `auto` call)."""
        if self._router is None:
            self._router = Router(self.config, self.clock)
        return self._router

    # --- fallback and retries --------------------------------------------------

    async def _chat_with_fallback(
        self,
        record: CallRecord,
        messages: list[dict[str, Any]],
        estimate: int,
        overrides: dict[str, Any],
        shown: _Shown,
        started: float,
        background: bool,
    ) -> str:
        deadline = started + self.config.defaults.deadline_s
        candidates = self._candidates(record.requested_profile, record)
        for index, name in enumerate(candidates):
            prof = self.config.profile(name)
            pinned = name == record.requested_profile  # --model pins the requested profile only
            hop = overrides if pinned else {k: v for k, v in overrides.items() if k != "model"}
            params = chat_params(name, prof, hop)
            if self.canaries is not None and "model" not in hop:  # a --model pin wins
                params = self.canaries.apply(name, prof, params, record)
            if self.policy is not None:
                params = self.policy.adjust_params(params, record)
            record.profile, record.model, record.params = name, params["model"], params
            record.tokens_estimated = estimate + output_cap(params)
            if self.replay is not None:
                replayed = await self.replay.answer(record, params, messages, shown.on_text)
                if replayed is not None:  # None: a miss in fallthrough mode goes live
                    return replayed
            try:
                self.breaker(params["model"]).check()  # open: refuse before taking any quota
                async with self._admitted("chat", record, background) as gate:
                    return await self._retrying(
                        record,
                        prof,
                        deadline,
                        lambda timeout, p=params: self._chat_once(
                            record, p, messages, timeout, shown
                        ),
                        gate,
                    )
            except (CircuitOpenError, RetriesExhaustedError) as exc:
                reason = fallback_reason(exc)
                if reason is None or index + 1 == len(candidates):
                    raise
                record.degrade(Degradation(FALLBACK, reason, name, candidates[index + 1]))
        raise AssertionError("unreachable: the last candidate returns or raises")

    def _candidates(self, requested: str, record: CallRecord) -> list[str]:
        """Profiles to try in order: the fallback chain from where the policy routes the call.

        When rate_limit_429 already diverted the call down the chain, the profiles it skipped
        come last: a rate-limited model is still better than no answer.
        """
        chain = [requested]
        while (following := self.config.fallback_for(chain[-1])) and following not in chain:
            chain.append(following)
        start = self.policy.route(requested, record) if self.policy is not None else requested
        at = chain.index(start) if start in chain else 0
        return chain[at:] + chain[:at]

    def _admitted(self, kind: str, record: CallRecord, background: bool) -> Any:
        """The quota/concurrency gate from the policy, or a no-op without one."""
        if self.policy is None:
            return contextlib.nullcontext()
        return self.policy.admit(kind, record, background)

    async def _retrying(
        self,
        record: CallRecord,
        prof: Profile,
        deadline: float,
        send: Callable[[float], Awaitable[Any]],
        gate: Any = None,
    ) -> Any:
        """Attempts of one profile under tenacity; ``gate`` (the admission) paces retries."""
        d = self.config.defaults
        outcome_of = _Outcomes(d.retry_after_cap_s)
        attempts = self.config.attempts_for(prof)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts) | stop_before_deadline(deadline, self.clock),
            wait=wait_retry_after(backoff(**d.backoff.model_dump()), outcome_of),
            retry=retry_if_exception(
                lambda exc: not isinstance(exc, MiraiError) and outcome_of(exc).retryable
            ),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    if number > 1 and gate is not None:
                        await gate.again()
                    last = number >= attempts
                    return await self._attempt(record, prof, deadline, send, outcome_of, last)
        except MiraiError:
            raise
        except Exception as exc:
            if self._key_rotated(outcome_of(exc), record):  # once more, with the new key
                if gate is not None:
                    await gate.again()
                return await self._retrying(record, prof, deadline, send, gate)
            raise as_mirai_error(outcome_of(exc), exc, record) from None

    def _key_rotated(self, outcome: Outcome, record: CallRecord) -> bool:
        """A 401, and the environment holds another key now: the SDK takes it. Once a call;
        the request is then sent again with a fresh retry budget, within the same deadline."""
        if outcome.status != 401 or KEY_ROTATED in record.retry_reasons:
            return False
        if self.rekey is None or not self.rekey(self.sdk):
            return False
        record.retry_reasons.append(KEY_ROTATED)
        return True

    async def _attempt(
        self,
        record: CallRecord,
        prof: Profile,
        deadline: float,
        send: Callable[[float], Awaitable[Any]],
        outcome_of: _Outcomes,
        last: bool = False,
    ) -> Any:
        breaker = self.breaker(record.model)
        probe = breaker.acquire()  # raises CircuitOpenError without touching the network
        record.attempts += 1
        timeout = max(min(self.config.timeout_for(prof), deadline - self.clock()), 0.001)
        sent = self.clock()
        try:
            result = await send(timeout)
        except BaseException as exc:
            spent = self.clock() - sent
            outcome = outcome_of(exc)
            (breaker.failure if outcome.counts_for_breaker else breaker.neutral)(probe)
            record.breaker = breaker.current_state().value
            if outcome.retryable:
                record.retry_reasons.append(outcome.reason)
            final = last or not outcome.retryable
            self._attempt_ended(
                record, Attempt(outcome.reason, ok=False, final=final, latency_s=spent)
            )
            raise
        breaker.success(probe)
        record.breaker = breaker.current_state().value
        self._attempt_ended(record, Attempt("ok", ok=True, latency_s=self.clock() - sent))
        return result

    # --- one HTTP request --------------------------------------------------------

    async def _chat_once(
        self,
        record: CallRecord,
        params: dict[str, Any],
        messages: list[dict[str, Any]],
        timeout: float,
        shown: _Shown,
    ) -> str:
        if not record.streamed:
            response = await self.sdk.chat.completions.create(
                messages=messages, timeout=timeout, **params
            )
            choice = response.choices[0] if response.choices else None
            record.offline = response.system_fingerprint == OFFLINE_FINGERPRINT
            record.response_model = response.model or None
            record.finish_reason = choice.finish_reason if choice else None
            _take_usage(record, response.usage)
            return (choice.message.content if choice else None) or ""
        return await self._stream_once(record, params, messages, timeout, shown)

    async def _stream_once(
        self,
        record: CallRecord,
        params: dict[str, Any],
        messages: list[dict[str, Any]],
        timeout: float,
        shown: _Shown,
    ) -> str:
        shown.restart()  # an earlier attempt may already have shown text
        stream = await self.sdk.chat.completions.create(
            messages=messages,
            timeout=timeout,
            stream=True,
            stream_options={"include_usage": True},
            **params,
        )
        parts: list[str] = []
        try:
            async for chunk in stream:
                record.offline = chunk.system_fingerprint == OFFLINE_FINGERPRINT
                record.response_model = chunk.model or record.response_model
                if chunk.usage is not None:
                    _take_usage(record, chunk.usage)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        record.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        parts.append(piece)
                        shown.text(piece)
        finally:
            await stream.close()
        return "".join(parts)

    # --- records ------------------------------------------------------------------

    def _fail(self, record: CallRecord, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError) and exc.args:  # cancelled with a reason
            record.error, record.error_code = str(exc.args[0]), "timeout"
        elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            record.error, record.error_code = "cancelled by the user", "cancelled"
        elif isinstance(exc, MiraiError):
            record.error, record.error_code = str(exc), exc.code
        else:
            record.error, record.error_code = f"{type(exc).__name__}: {exc}", "internal"

    def _attempt_ended(self, record: CallRecord, attempt: Attempt) -> None:
        for observer in self.observers:
            observer.on_attempt(record, attempt)

    def _call_ended(
        self, record: CallRecord, messages: list[dict[str, Any]] | None, text: str | None
    ) -> None:
        for observer in self.observers:
            observer.on_call(record, messages, text)


def _user_text(messages: list[dict[str, Any]], given: str | None) -> str:
    """What ``auto`` classifies: ``given``, else the last user message."""
    if given is not None:
        return given
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


def _take_usage(record: CallRecord, usage: Any) -> None:
    if usage is not None:
        record.tokens_in = usage.prompt_tokens
        record.tokens_out = usage.completion_tokens
