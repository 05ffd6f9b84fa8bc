"""The per-kernel session: config, engine thread, SDK client, offline server; a sync facade."""

from __future__ import annotations

import getpass
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .client.loop import EngineLoop, Job
from .client.records import CallRecord, Reply
from .config import Config, load_config
from .history import History
from .prompt import build_messages, system_prompt

OFFLINE_KEY = "offline-no-key-needed"
_DONE = object()


class StreamRestart:
    """Yielded by ``stream_chat`` when a retry restarts a stream: discard the text so far."""


@dataclass
class Prepared:
    """A cell's request ready to send: messages in order, profile and overrides."""

    user_text: str
    messages: list[dict[str, Any]]
    profile: str
    overrides: dict[str, Any]
    keep_history: bool
    flags: list[str] = field(default_factory=list)


class Session:
    """One notebook's engine: ``chat``/``stream_chat``/``embed`` from plain (kernel) code."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        config_path: str | None = None,
        clock: Any = None,
        sleep: Any = None,
    ):
        self.config_path = config_path
        self.config = config or load_config(config_path)
        self.engine = EngineLoop()
        self._clock, self._sleep = clock, sleep
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._server: Any = None
        self.records: list[CallRecord] = []
        self.history = History(self.config.context.max_history_messages)
        self.default_profile = "main"
        self.default_overrides: dict[str, Any] = {}
        self.status_sources: list[Any] = []
        self.policy: Any = None  # quotas + degradation rules; kept across reloads of the client
        self.telemetry: Any = None  # metrics registry, logs, traces: one per Session
        self.call_logs: list[Any] = []
        self._memory: Any = None
        from .replay import replay_from_env

        self.replay: Any = replay_from_env()  # MIRAI_REPLAY, or `%mirai replay PATH`

    def __repr__(self) -> str:
        state = "offline" if self.offline else (self.base_url or "api.openai.com")
        return f"<mirai Session {state}, {len(self.records)} calls>"

    # --- endpoint and client -------------------------------------------------------

    @property
    def api_key_present(self) -> bool:
        return bool(os.environ.get(self.config.security.api_key_env_var))

    @property
    def offline(self) -> bool:
        """True when calls go to the bundled offline server started by this session."""
        return self.config.endpoint.base_url is None and not self.api_key_present

    @property
    def base_url(self) -> str | None:
        if self.offline:
            return self.server.url
        return self.config.endpoint.base_url

    @property
    def server(self) -> Any:
        """The in-process offline server, started on first use."""
        if self._server is None:
            from .server import OfflineServer

            seed = self.config.testing.offline_server.seed
            self._server = OfflineServer(port=0, seed=seed).start()
        return self._server

    @property
    def user(self) -> str:
        return self.config.limits.user or os.environ.get("MIRAI_USER") or _os_user()

    @property
    def client(self) -> Any:
        """The ResilientClient, built on the engine thread on first use (once, under a lock:
        the memory indexer may ask from its own thread while a cell asks from the kernel's)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self.engine.run(self._build_client())
        return self._client

    async def _build_client(self) -> Any:
        from openai import AsyncOpenAI

        from .client.client import ResilientClient

        key = os.environ.get(self.config.security.api_key_env_var) or OFFLINE_KEY
        sdk = AsyncOpenAI(
            api_key=key,
            base_url=self.base_url,
            organization=self.config.endpoint.organization,
            max_retries=0,
        )
        kwargs: dict[str, Any] = {"user": self.user}
        if self._clock is not None:
            kwargs["clock"] = self._clock
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        client = ResilientClient(self.config, sdk, **kwargs)
        self._attach(client)
        return client

    def _attach(self, client: Any) -> None:
        """Policy, records, telemetry, call logs and replay around a freshly built client."""
        from .calllog import attach_call_logs
        from .client.policy import Policy

        if self.policy is None or _quota_settings(self.policy.config) != _quota_settings(
            self.config
        ):
            self.policy = Policy(self.config, clock=client.clock, sleep=client.sleep)
        else:  # a reload keeps budgets, buckets and rules: reloading must not reset quotas
            self.policy.config = self.config
        client.policy = self.policy
        if self.telemetry is None:  # one registry per Session: reload never re-registers
            from .telemetry import Telemetry

            self.telemetry = Telemetry(self.config)
            self.telemetry.watch_breakers(self.breaker_states)
        else:
            self.telemetry.configure(self.config)
        client.observers += [self._remember, self.policy.observe, self.telemetry.observe]
        self.call_logs = attach_call_logs(client, self.config, self.call_logs)
        client.replay = self.replay

    def _remember(self, event: str, record: CallRecord, info: dict[str, Any]) -> None:
        if event == "call":
            self.records.append(record)
            del self.records[:-1000]

    # --- sync facade ----------------------------------------------------------------

    def chat(
        self, messages: list[dict[str, Any]], profile: str = "main", **overrides: Any
    ) -> Reply:
        """Send ``messages`` with ``profile``; returns Reply(text, record) or raises MiraiError."""
        return self.engine.run(self.client.chat(messages, profile, **overrides))

    def stream_chat(
        self, messages: list[dict[str, Any]], profile: str = "main", **overrides: Any
    ) -> Iterator[str | StreamRestart | Reply]:
        """Yield text chunks as they arrive, then the final Reply; Ctrl-C cancels the call."""
        from .client.client import RESTART

        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        sink = lambda item: chunks.put(StreamRestart() if item is RESTART else item)  # noqa: E731
        job: Job[Reply] = self.engine.submit(
            self._streamed(self.client, messages, profile, sink, chunks, overrides)
        )
        try:
            while True:
                item = _get(chunks)
                if item is _DONE:
                    break
                yield item
            yield job.result()
        finally:
            if not job.done():
                job.cancel()

    @staticmethod
    async def _streamed(
        client: Any,
        messages: list[dict[str, Any]],
        profile: str,
        sink: Any,
        chunks: queue.SimpleQueue[Any],
        overrides: dict[str, Any],
    ) -> Reply:
        try:
            return await client.chat(messages, profile, stream=True, on_text=sink, **overrides)
        finally:
            chunks.put(_DONE)

    def embed(self, texts: list[str], profile: str = "embed") -> list[list[float]]:
        """Embed ``texts`` with the embedding profile; one vector per text."""
        vectors, _record = self.engine.run(self.client.embed(list(texts), profile))
        return vectors

    # --- notebook conversation -------------------------------------------------------

    def prepare(self, text: str, request: Any) -> Prepared:
        """System prompt (budget-checked), trimmed history and the cell → messages to send."""
        context = self.config.context
        system = system_prompt(context.system_prompt, request.system, request.fmt)
        history = self.history.window() if request.history else []
        if history and self.policy is not None:  # error_rate_5percent sends less history
            history = self.history.window(self.policy.history_limit(self.history.max_messages))
        memory_block, flags = "", []
        if request.memory and self.config.memory.enabled and self.replay is not None:
            flags.append("memory: off (replay)")  # recordings are hashed without memory
        elif request.memory and self.config.memory.enabled:
            memory_block, memory_flags = self.memory.prompt_context(text, request.top_k)
            flags.extend(memory_flags)
        prompt = build_messages(
            system=system,
            history=history,
            user=text,
            memory_block=memory_block,
            max_system_tokens=context.system_prompt_max_tokens,
        )
        return Prepared(
            text, prompt.messages, request.profile, request.overrides, request.history, flags
        )

    def send_prepared(self, prepared: Prepared) -> Reply:
        return self.chat(prepared.messages, prepared.profile, **prepared.overrides)

    def stream_prepared(self, prepared: Prepared) -> Iterator[str | StreamRestart | Reply]:
        return self.stream_chat(prepared.messages, prepared.profile, **prepared.overrides)

    def remember(self, prepared: Prepared, reply: Reply) -> None:
        """Append a successful turn to the history (unless --no-history)."""
        if prepared.keep_history:
            self.history.append_turn(prepared.user_text, reply.text)

    @property
    def memory(self) -> Any:
        """The notebook memory (cells indexed in the background, searched into prompts)."""
        if self._memory is None:
            from .memory import NotebookMemory

            self._memory = NotebookMemory(self)
        return self._memory

    def breaker_states(self) -> dict[str, str]:
        """Breaker state per model seen so far."""
        if self._client is None:
            return {}
        return {m: b.current_state().value for m, b in self._client.breakers.items()}

    def extra_status(self) -> list[tuple[str, str]]:
        """Status rows contributed by the quota policy and the memory, when present."""
        rows: list[tuple[str, str]] = self.policy.status_rows() if self.policy else []
        for part in self.status_sources:
            rows.extend(part())
        return rows

    # --- lifecycle ------------------------------------------------------------------------

    def reload(self, config_path: str | None = None) -> None:
        """Re-read the config and the API key (a rotated key is picked up here)."""
        self.config_path = config_path or self.config_path
        new_config = load_config(self.config_path)
        self._close_client()
        self.config = new_config

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None and self.engine.running:
            self.engine.run(client.sdk.close())

    def close(self) -> None:
        """Stop the engine thread and the offline server; idempotent."""
        try:
            self._close_client()
            self._close_call_logs()
            if self.telemetry is not None:
                self.telemetry.close()
            if self._memory is not None:
                self._memory.close()
        finally:
            self.engine.stop()
            server, self._server = self._server, None
            if server is not None:
                server.stop()

    def set_replay(self, replay: Any) -> None:
        """Answer chat calls from a recording (a ``replay.Replay``), or go live with None."""
        old, self.replay = self.replay, replay
        if self._client is not None:
            self._client.replay = replay
        if old is not None and old is not replay:
            old.close()

    def flush_logs(self) -> None:
        """Wait until every finished call is in the call log (it is written in the background)."""
        for call_log in self.call_logs:
            call_log.flush()

    def _close_call_logs(self) -> None:
        for log in self.call_logs:
            log.close()
        if self.replay is not None:
            self.replay.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quota_settings(config: Config) -> tuple[Any, Any]:
    return config.limits, config.degradation


def _get(chunks: queue.SimpleQueue[Any]) -> Any:
    """Blocking get that stays interruptible by Ctrl-C."""
    while True:
        try:
            return chunks.get(timeout=0.1)
        except queue.Empty:
            continue


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
