"""The resilient async core: breaker → attempt with timeout → classify → retry → fallback.

A call runs inside its deadline and each attempt inside its timeout, both end to end on the
event loop (see ``deadline``): a server that keeps dripping bytes cannot hold a call.

Each profile goes to its own endpoint (``endpoint: NAME``; none: the default one) through
that endpoint's SDK client, built on first use; breakers are per (endpoint, model). The
fallback chain may cross endpoints: 429s, 5xx and an open breaker hand over to the next
profile; timeouts and connection errors, which hit a whole endpoint, to the next profile
on another endpoint (``heavy → main → local-llama``: an OpenAI outage ends at local-llama).
A request with images skips the profiles whose model has no vision. ``tools``/``tool_choice``
are sent as given; the tool calls of the answer, whole or streamed (``tools.ToolCallParts``),
come back on ``Reply.tool_calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from ..config import Config, Profile
from ..errors import CircuitOpenError, MiraiError, RetriesExhaustedError
from ..images import image_urls
from ..telemetry.tracing import traced_call
from ..tokens import count_messages, count_text, message_text
from .breaker import CircuitBreaker
from .canary import Canaries
from .deadline import DEADLINE_SETTING, Deadline, bounded
from .endpoint import SdkClients, import_resources
from .failures import as_mirai_error, chain_label, fallback_reason
from .keys import KEY_ROTATED
from .observers import Observer
from .params import chat_params, output_cap
from .records import FALLBACK, Attempt, CallRecord, Cut, Degradation, Reply
from .retry import Outcome, backoff, classify, stop_before_deadline, wait_retry_after
from .routing import AUTO, Router

OFFLINE_FINGERPRINT = "mirai-offline"
RESTART = object()  # sent to on_text when a stream is retried after partial output
SDK_TIMEOUT_SLACK_S = 0.5  # httpx's per-read timeout is a backstop behind our own bound
CUT_BY_DEADLINE = Outcome("timeout", retryable=True, counts_for_breaker=True)
ENDPOINT_WIDE = ("connection", "timeout")  # failures that fall back to another endpoint only
TextSink = Callable[[Any], None]
TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls")


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


@dataclass
class _Call:
    """What every profile of one chat call's fallback chain shares."""

    record: CallRecord
    messages: list[dict[str, Any]]
    estimate: int  # the messages' tokens
    overrides: dict[str, Any]
    shown: _Shown
    deadline: Deadline
    background: bool


def next_hop(exc: MiraiError, endpoints: list[str | None], index: int) -> tuple[str, int] | None:
    """Why and to which candidate (by index; ``endpoints``: each candidate's) the failed one
    hands over, or None: the next one, or after a failure of its whole endpoint (timeout,
    connection) the next one on another endpoint."""
    reason, later = fallback_reason(exc), range(index + 1, len(endpoints))
    if reason is not None:
        return (reason, index + 1) if later else None
    reason = getattr(exc, "last_reason", None)
    if reason not in ENDPOINT_WIDE:
        return None
    found = next((i for i in later if endpoints[i] != endpoints[index]), None)
    return None if found is None else (reason, found)


class _Outcomes:
    """classify() once per failed attempt: the retry test, the wait and the error share it."""

    def __init__(self, retry_after_cap_s: float):
        self.cap = retry_after_cap_s
        self._last: tuple[BaseException, Outcome] | None = None

    def __call__(self, exc: BaseException) -> Outcome:
        if self._last is None or self._last[0] is not exc:
            self._last = (exc, classify(exc, self.cap))
        return self._last[1]


def breaker_key(model: str, endpoint: str | None) -> str:
    """``gpt-4o`` on the default endpoint, ``local:llama3.2`` on endpoint ``local``."""
    return model if endpoint is None else f"{endpoint}:{model}"


class ResilientClient:
    """Wraps one AsyncOpenAI(max_retries=0) per endpoint; owns breakers, retries and fallback.

    ``sdk`` and ``rekey`` are the default endpoint's; ``endpoints`` (an ``endpoint.Endpoints``,
    built from the config when not given) makes the SDK clients of the named ones
    (``sdks``, an ``endpoint.SdkClients``).
    """

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
        endpoints: Any = None,
    ):
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.policy = policy
        self.observers: list[Observer] = observers if observers is not None else []
        self.user = user
        self.canaries = canaries  # which model version a profile's call goes to
        # every endpoint's SDK client; a 401 re-reads its key (Endpoint.rotate)
        self.sdks = SdkClients(config, sdk, rekey, endpoints)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.replay: Any = None  # answers from a recorded call log (see mirai_magics.replay)
        self._router: Router | None = None  # built on the first `auto` call

    def breaker(self, model: str, endpoint: str | None = None) -> CircuitBreaker:
        """The breaker of ``model`` on ``endpoint`` (None: the default one); the policy's
        (shared through Redis in redis mode)."""
        key = breaker_key(model, endpoint)
        if key not in self.breakers:
            self.breakers[key] = (
                self.policy.breaker(key, self.clock)
                if self.policy is not None
                else CircuitBreaker(key, self.config.circuit_breaker, self.clock)
            )
        return self.breakers[key]

    @property
    def sdk(self) -> Any:
        """The default endpoint's SDK client (settable: a benchmark swaps in a fake)."""
        return self.sdks.default

    @sdk.setter
    def sdk(self, sdk: Any) -> None:
        self.sdks.default = sdk

    def sdk_for(self, endpoint: str | None) -> Any:
        """The SDK client of ``endpoint`` (None: the default one's), built on first use."""
        return self.sdks.get(endpoint)

    async def aclose(self) -> None:
        """Close every endpoint's SDK client."""
        await self.sdks.aclose()

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
        deadline = Deadline(self.config.defaults.deadline_s, self.clock, started)
        route = None
        if profile == AUTO:
            route = await self.router.route(_user_text(messages, route_text), self.chat)
            profile = route.profile
        record = CallRecord(profile=profile, model="", requested_profile=profile, streamed=stream)
        record.user, record.route = on_behalf_of or self.user, route
        text: str | None = None
        estimate = prompt_tokens if prompt_tokens is not None else count_messages(messages)[0]
        try:
            async with deadline.enforced(record):
                shown = _Shown(on_text)
                call = _Call(record, messages, estimate, overrides, shown, deadline, background)
                text = await self._chat_with_fallback(call)
        except BaseException as exc:
            self._fail(record, exc)
            if isinstance(exc, MiraiError):
                exc.record = record  # a background item keeps the record of its failure
            raise
        finally:
            record.latency_ms = (self.clock() - started) * 1000
            self._call_ended(record, messages, text)
        return Reply(text, record, tool_calls=list(getattr(text, "tool_calls", ())))

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
        record.endpoint = prof.endpoint
        record.tokens_estimated = sum(count_text(t)[0] for t in texts)
        started = self.clock()
        deadline = Deadline(self.config.defaults.deadline_s, self.clock, started)

        async def attempt(timeout: float) -> list[list[float]]:
            sdk = self.sdk_for(record.endpoint)
            response = await sdk.embeddings.create(input=texts, timeout=timeout, **params)
            record.tokens_in = getattr(response.usage, "prompt_tokens", None)
            record.tokens_out = 0
            return [list(item.embedding) for item in response.data]

        try:
            self.breaker(prof.model, prof.endpoint).check()
            async with (
                deadline.enforced(record),
                self._admitted("embeddings", record, background) as gate,
            ):
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

    async def _chat_with_fallback(self, call: _Call) -> str:
        record = call.record
        candidates = self._candidates(record.requested_profile, record)
        if image_urls(call.messages):  # a fallback never sends images to a model without vision
            candidates = [n for n in candidates if self.config.profile(n).vision] or candidates
        index = 0
        while True:
            try:
                return await self._chat_profile(call, candidates[index])
            except (CircuitOpenError, RetriesExhaustedError) as exc:
                ends = [self.config.profile(name).endpoint for name in candidates]
                hop = next_hop(exc, ends, index) if call.deadline.remaining() > 0 else None
                if hop is None:  # the chain ends, or the deadline is spent: no hop after it
                    if isinstance(exc, CircuitOpenError) and record.fallbacks:
                        exc.message = f"{chain_label(record)} all failed: {exc.message}"
                    raise
                reason, to = hop
                record.degrade(Degradation(FALLBACK, reason, candidates[index], candidates[to]))
                index = to

    async def _chat_profile(self, call: _Call, name: str) -> str:
        """One profile of the chain: its params, its endpoint and breaker, its retries."""
        record, prof = call.record, self.config.profile(name)
        pinned = name == record.requested_profile  # --model pins the requested profile only
        hop = {k: v for k, v in call.overrides.items() if pinned or k != "model"}
        tools = {k: hop.pop(k) for k in TOOL_PARAMS if hop.get(k) is not None}
        params = chat_params(name, prof, hop) | tools  # tools are sent as given
        if self.canaries is not None and "model" not in hop:  # a --model pin wins
            params = self.canaries.apply(name, prof, params, record)
        if self.policy is not None:
            params = self.policy.adjust_params(params, record)
        record.profile, record.model, record.params = name, params["model"], params
        record.endpoint = prof.endpoint
        record.new_hop()  # what the previous profile's answer set does not carry over
        record.tokens_estimated = call.estimate + output_cap(params)
        if self.replay is not None:
            replayed = await self.replay.answer(record, params, call.messages, call.shown.on_text)
            if replayed is not None:  # None: a miss in fallthrough mode goes live
                return replayed
        self.breaker(params["model"], prof.endpoint).check()  # open: refuse before any quota
        import_resources(self.sdk_for(prof.endpoint))  # lazy SDK imports: not after the slot
        async with self._admitted("chat", record, call.background) as gate:
            return await self._retrying(
                record,
                prof,
                call.deadline,
                lambda timeout, p=params: self._chat_once(
                    record, p, call.messages, timeout, call.shown
                ),
                gate,
            )

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
        deadline: Deadline,
        send: Callable[[float], Awaitable[Any]],
        gate: Any = None,
    ) -> Any:
        """Attempts of one profile under tenacity; ``gate`` (the admission) paces retries."""
        d = self.config.defaults
        outcome_of = _Outcomes(d.retry_after_cap_s)
        attempts = self.config.attempts_for(prof)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts) | stop_before_deadline(deadline.at, self.clock),
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
        if not self.sdks.rekey(record.endpoint):
            return False
        record.retry_reasons.append(KEY_ROTATED)
        return True

    async def _attempt(
        self,
        record: CallRecord,
        prof: Profile,
        deadline: Deadline,
        send: Callable[[float], Awaitable[Any]],
        outcome_of: _Outcomes,
        last: bool = False,
    ) -> Any:
        deadline.expire_if_over(record)  # a wait ran past it (on a fake clock too): send nothing
        breaker = self.breaker(record.model, record.endpoint)
        probe = breaker.acquire()  # raises CircuitOpenError without touching the network
        record.attempts += 1
        limit, setting = deadline.attempt_bound(
            self.config.timeout_for(prof), _timeout_setting(record.profile, prof)
        )
        sent = self.clock()
        try:
            result = await bounded(send(limit + SDK_TIMEOUT_SLACK_S), limit, setting)
        except BaseException as exc:
            outcome = CUT_BY_DEADLINE if deadline.expired else outcome_of(exc)
            cut = deadline.expired or (setting == DEADLINE_SETTING and outcome.reason == "timeout")
            (breaker.failure if outcome.counts_for_breaker else breaker.neutral)(probe)
            record.breaker = breaker.current_state().value
            if outcome.retryable:
                record.retry_reasons.append(outcome.reason)
            final = last or not outcome.retryable or cut
            spent = self.clock() - sent
            self._attempt_ended(
                record, Attempt(outcome.reason, ok=False, final=final, latency_s=spent)
            )
            if cut and not deadline.expired:  # its bound was what was left of the deadline
                raise deadline.exceeded(record) from None
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
            response = await self.sdk_for(record.endpoint).chat.completions.create(
                messages=messages, timeout=timeout, **params
            )
            choice = response.choices[0] if response.choices else None
            record.offline = response.system_fingerprint == OFFLINE_FINGERPRINT
            record.response_model = response.model or None
            record.finish_reason = choice.finish_reason if choice else None
            _take_usage(record, response.usage)
            return answer_of(choice)
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
        stream = await self.sdk_for(record.endpoint).chat.completions.create(
            messages=messages,
            timeout=timeout,
            stream=True,
            stream_options={"include_usage": True},
            **params,
        )
        from ..tools import ToolCallParts

        parts: list[str] = []
        calls = ToolCallParts()
        answering, billed = False, False  # a chunk arrived; the usage chunk arrived
        try:
            async for chunk in stream:
                answering = True
                record.offline = chunk.system_fingerprint == OFFLINE_FINGERPRINT
                record.response_model = chunk.model or record.response_model
                if chunk.usage is not None:
                    billed = True
                    _take_usage(record, chunk.usage)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        record.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        parts.append(piece)
                        shown.text(piece)
                    calls.add(choice.delta.tool_calls if choice.delta else None)
        except BaseException:
            if answering and not billed:
                _count_cut(record, params, "".join(parts))
            raise
        finally:
            await stream.close()
        return calls.answer("".join(parts))

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


def _timeout_setting(name: str, prof: Profile) -> str:
    """Where an attempt's timeout comes from, as the error line names it."""
    return f"models.{name}.timeout_s" if prof.timeout_s is not None else "defaults.timeout_s"


def _user_text(messages: list[dict[str, Any]], given: str | None) -> str:
    """What ``auto`` classifies: ``given``, else the last user message."""
    if given is not None:
        return given
    users = [m for m in messages if m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


def answer_of(choice: Any) -> str:
    """The answer's text; the tool calls it asks for ride along as ``.tool_calls``."""
    from ..tools import calls_of, with_calls

    message = choice.message if choice else None
    text = (message.content if message else None) or ""
    return with_calls(text, calls_of(getattr(message, "tool_calls", None)))


def _count_cut(record: CallRecord, params: dict[str, Any], received: str) -> None:
    """A stream cut before its usage chunk: its prompt (the pre-flight count) and the text
    received so far, estimated, join the record's ``cuts`` (at this hop's model)."""
    prompt = max(record.tokens_estimated - output_cap(params), 0)
    out = count_text(received)[0] if received else 0
    record.cuts.append(Cut(record.model, record.endpoint, prompt, out))


def _take_usage(record: CallRecord, usage: Any) -> None:
    if usage is not None:
        record.tokens_in = usage.prompt_tokens
        record.tokens_out = usage.completion_tokens
