"""The composition root: builds a notebook's parts from the config and hands them out.

``Session`` builds the engine thread, history, quota policy, canaries, telemetry, call logs
and replay, the endpoints and their SDK clients (lazily, on the engine thread) and the
notebook memory (lazily).
Everything derived from the config goes through ``_apply``, so ``reload`` rebuilds it all
the same way construction did. It assembles no prompts (``prompt.py``) and keeps no UI
state (the magics do); ``chat``/``stream_chat``/``embed`` are a sync facade over the engine,
``achat`` its awaitable twin for asyncio code. Nothing here imports IPython: a Session works
in a plain script.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from .client.endpoint import Endpoint, Endpoints, session_user
from .client.loop import EngineLoop, StreamRestart, responsive, stream
from .client.observers import Collect
from .client.records import CallRecord, Reply
from .config import Config, load_config
from .errors import ConfigError
from .history import History
from .prompt import Prepared, prepare
from .redact import configure as configure_redaction
from .redact import redact_all, remember_interpolated

__all__ = ["Session", "StreamRestart"]
T = TypeVar("T")


class Session:
    """One notebook's engine: ``chat``/``stream_chat``/``embed`` from plain (kernel) code,
    ``await achat(...)`` from asyncio code.

    ``config``: None (the packaged config, then the file named by ``MIRAI_CONFIG``), a path
    to a YAML file (layered on top the same way; ``reload`` re-reads it) or a ``Config``
    (YAML text: ``Session(parse_config(text))``, from ``mirai_magics.config``). ``memory``
    (None: as configured) is the notebook's switch over ``context.rag.enabled``
    (``%config MiraiMagics.memory_enabled``); it governs indexing and retrieval alike.
    ``close()`` (or ``with Session() as s:``) stops its thread and offline server.

    >>> from mirai_magics import Session
    >>> with Session() as session:
    ...     reply = session.chat("Say hello.", profile="fast")
    >>> reply.record.profile, reply.text.startswith("**Offline answer**")
    ('fast', True)
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        config_path: str | None = None,
        memory: bool | None = None,
        clock: Any = None,
        sleep: Any = None,
    ):
        from .replay import replay_from_env

        if config is not None and not isinstance(config, Config):
            config_path, config = _config_path(config, config_path), None
        self.config_path, self.memory_switch = config_path, memory
        self._clock, self._sleep = clock, sleep
        self.engine = EngineLoop()
        self.history = History()
        self.records: list[CallRecord] = []
        self.status_sources: list[Any] = []  # callables giving `%mirai status` rows
        self.policy: Any = None  # quotas + degradation rules (kept across reloads)
        self.canaries: Any = None  # canary model versions per profile (kept across reloads)
        self.telemetry: Any = None  # metrics registry, logs, traces: one per Session
        self.call_logs: list[Any] = []
        self.replay: Any = replay_from_env()  # MIRAI_REPLAY, or `%mirai replay PATH`
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.endpoints: Endpoints | None = None  # the default one and each of ``endpoints:``
        self.endpoint: Endpoint | None = None  # the default one (``endpoint:``)
        self._memory: Any = None
        self._jobs: Any = None
        self._apply(config or load_config(config_path))

    def __repr__(self) -> str:
        state = "offline" if self.endpoint.offline else (self.endpoint.base_url or "api.openai.com")
        return f"<mirai Session {state}, {len(self.records)} calls>"

    # --- the parts, from the config ----------------------------------------------------

    def _apply(self, config: Config) -> None:
        """Build (or rebuild after a reload) every part that depends on the config."""
        from .calllog import reopen_call_logs
        from .client.canary import Canaries, session_identity
        from .client.policy import Policy, quota_settings
        from .telemetry import Telemetry

        self._close_client()  # endpoint, key and organization are read when it is rebuilt
        old, self.config = getattr(self, "config", None), config
        configure_redaction(config.security.redact_assignments, config.security.redact_env_names)
        self.endpoints = Endpoints(config, previous=self.endpoints)
        self.endpoint = self.endpoints.default
        self.history.max_messages = config.context.max_history_messages
        if self.policy is None or quota_settings(old) != quota_settings(config):
            kwargs = {k: v for k, v in (("clock", self._clock), ("sleep", self._sleep)) if v}
            spent = self.policy.spend if self.policy is not None else None  # budgets go on
            self._close_policy()
            self.policy = Policy(config, spend=spent, **kwargs)
        else:  # a reload with the same limits keeps budgets, buckets and rule state
            self.policy.config = config
        if self.telemetry is None:  # one registry per Session: reload never re-registers
            self.telemetry = Telemetry(config)
            self.telemetry.watch_breakers(self.breaker_states)
        else:
            self.telemetry.configure(config)
        self.call_logs = reopen_call_logs(config, self.call_logs)
        if self.canaries is None:  # one session id, suspensions kept by a reload
            self.canaries = Canaries(config.models, session_identity())
        else:
            self.canaries.configure(config.models)

    @property
    def memory_enabled(self) -> bool:
        """Index cells and retrieve them into prompts (config, then the notebook's switch)."""
        return self.config.memory.enabled and self.memory_switch is not False

    @property
    def user(self) -> str:
        return session_user(self.config)

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
        from .client.client import ResilientClient

        observers = [Collect(self.records, keep=1000), *self.policy.observers, self.canaries]
        client = ResilientClient(
            self.config,
            self.endpoint.sdk(),
            clock=self.policy.clock,
            sleep=self.policy.sleep,
            policy=self.policy,
            observers=[*observers, self.telemetry, *self.call_logs],
            user=self.user,
            rekey=self.endpoint.rotate,  # a 401 re-reads the key from the environment
            canaries=self.canaries,
            endpoints=self.endpoints,  # the named endpoints' SDK clients, on first use
        )
        client.replay = self.replay
        return client

    @property
    def memory(self) -> Any:
        """The notebook memory (cells indexed in the background, searched into prompts)."""
        if self._memory is None:
            from .memory import NotebookMemory

            self._memory = NotebookMemory(self, metrics=self.telemetry)
        return self._memory

    @property
    def jobs(self) -> Any:
        """Background cells and batches (``jobs.Jobs``): stored in ``jobs.sqlite``."""
        if self._jobs is None:
            from .jobs.manager import Jobs

            self._jobs = Jobs(self)
        return self._jobs

    def warm(self) -> None:
        """Do the first call's one-time work now: imports, the SDK client, the offline server
        (with one loopback request to it) and the memory files."""
        from .client.endpoint import import_resources

        client = self.client
        import_resources(client.sdk)
        if self.endpoint.offline:
            self.engine.run(_list_models(client.sdk))
        if self.memory_enabled:
            self.memory.state()

    # --- sync facade ----------------------------------------------------------------

    def chat(
        self,
        messages: list[dict[str, Any]] | str,
        profile: str = "main",
        *,
        tools: list[Any] | None = None,
        **overrides: Any,
    ) -> Reply:
        """Send ``messages`` (or one prompt) with ``profile``; returns Reply(text, record) or
        raises MiraiError. ``tools``: Python functions or JSON specs (``tools.tool_specs``);
        the calls the model asks for are in ``reply.tool_calls`` (nothing runs them)."""
        overrides = _with_tools(overrides, tools)
        return self.engine.run(self.client.chat(_messages(messages), profile, **overrides))

    async def achat(
        self,
        messages: list[dict[str, Any]] | str,
        profile: str = "main",
        *,
        tools: list[Any] | None = None,
        **overrides: Any,
    ) -> Reply:
        """``chat`` for asyncio code: awaitable from any running loop (the call runs on the
        engine's); cancelling the awaiting task cancels the call and waits until it ended."""
        overrides = _with_tools(overrides, tools)
        client = self._client
        if client is None:  # built on first use; not on the caller's loop, which it would block
            client = await asyncio.to_thread(lambda: self.client)
        call = client.chat(_messages(messages), profile, **overrides)
        return await _on_engine(self.engine, call)

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        profile: str = "main",
        *,
        tools: list[Any] | None = None,
        **overrides: Any,
    ) -> Iterator[str | StreamRestart | Reply]:
        """Yield text chunks as they arrive, then the final Reply (its ``tool_calls`` joined
        from the streamed fragments; ``tools`` as for ``chat``); Ctrl-C cancels the call."""
        overrides = _with_tools(overrides, tools)
        client = self.client
        return stream(
            self.engine,
            lambda sink: client.chat(messages, profile, stream=True, on_text=sink, **overrides),
        )

    def embed(self, texts: list[str], profile: str = "embed") -> list[list[float]]:
        """Embed ``texts`` with the embedding profile; one vector per text."""
        vectors, _record = self.engine.run(self.client.embed(list(texts), profile))
        return vectors

    def prepare(self, text: str, request: Any) -> Prepared:
        """The cell's messages (see ``prompt.prepare``) with this session's history and memory.

        A secret the user interpolated on purpose (``{db_password}``: ``text`` from
        ``ui.interpolate`` lists what it filled in) is sent as asked, and from now on redacted
        from everything stored and from the context of later calls. The memory block is
        redacted here too (rows stored before a rule existed, values remembered since); the
        history was redacted when it was stored.
        """
        remember_interpolated(getattr(text, "references", ()))
        history: list[dict[str, Any]] = []
        if request.history:  # error_rate_5percent sends less
            history = self.history.window(self.policy.history_limit(self.history.max_messages))
        block, flags = "", []
        if request.memory and self.memory_enabled:
            if self.replay is not None:
                flags = ["memory: off (replay)"]  # recordings are hashed without memory
            else:
                block, flags = self.memory.prompt_context(text, request.top_k)
                block = redact_all(block)
        flags = [*flags, *self.endpoint.badge_flags()]  # a stale key, once
        images, flags = self._images(text, request, flags)
        return prepare(str(text), request, self.config.context, history, block, flags, images)

    def _images(self, text: str, request: Any, flags: list[str]) -> tuple[list[Any], list[str]]:
        """The cell's images (``{fig}``, ``--image``) and the profile that can see them."""
        from .vision import cell_images, vision_profile

        images = cell_images(text, request, self.config.context.image_max_side)
        if images:
            request.profile, note = vision_profile(self.config, request.profile)
            flags = [*flags, *([note] if note else [])]
        return images, flags

    # --- status ---------------------------------------------------------------------------

    def breaker_states(self) -> dict[str, str]:
        """Breaker state per model seen so far."""
        if self._client is None:
            return {}
        return {m: b.current_state().value for m, b in self._client.breakers.items()}

    def extra_status(self) -> list[tuple[str, str]]:
        """Status rows of the quota policy, telemetry and memory, and the config's notices."""
        rows: list[tuple[str, str]] = self.policy.status_rows()
        if self.policy.shared is not None:
            rows.extend(self.engine.run(self.policy.shared_rows(self.user)))
        rows.extend(self.canaries.status_rows())
        rows.extend(self.telemetry.status_rows())
        rows.extend(self.endpoints.status_rows())
        if self._jobs is not None:
            rows.extend(self._jobs.status_rows())
        for part in self.status_sources:
            rows.extend(part())
        rows.extend(("notice", line) for line in self.config.notices())
        return rows

    # --- lifecycle ------------------------------------------------------------------------

    def reload(
        self, config_path: str | None = None, *, memory: bool | None = None, default: bool = False
    ) -> None:
        """Re-read the config file (``config_path`` if given; ``default``: back to the default
        lookup, $MIRAI_CONFIG or the packaged file) and the API key; rebuild."""
        path = None if default else config_path or self.config_path
        config = load_config(path)  # a bad file changes nothing
        self.config_path = path
        self.memory_switch = self.memory_switch if memory is None else memory
        self._apply(config)
        if self._jobs is not None:
            self._jobs.reset_backend()

    def set_replay(self, replay: Any) -> None:
        """Answer chat calls from a recording (a ``replay.Replay``), or go live with None."""
        old, self.replay = self.replay, replay
        if self._client is not None:
            self._client.replay = replay
        if old is not None and old is not replay:
            old.close()

    def flush_logs(self) -> None:
        """Wait until every finished call is in the call log and the JSONL log (both are
        written in the background)."""
        for call_log in self.call_logs:
            call_log.flush()
        self.telemetry.logs.flush()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None and self.engine.running:
            self.engine.run(client.aclose())

    def _close_policy(self) -> None:
        """Close the Redis connections of a policy about to be replaced (or of the session)."""
        if self.policy is not None and self.policy.shared is not None and self.engine.running:
            self.engine.run(self.policy.aclose())

    def close(self) -> None:
        """Stop the engine thread and the offline server; idempotent."""
        try:
            if self._jobs is not None:
                self._jobs.close()
            self._close_client()
            self._close_policy()
            for log in self.call_logs:
                log.close()
            if self.replay is not None:
                self.replay.close()
            self.telemetry.close()
            if self._memory is not None:
                self._memory.close()
        finally:
            self.engine.stop()
            self.endpoints.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _list_models(sdk: Any) -> None:
    await sdk.models.list()


def _config_path(config: Any, config_path: str | None) -> str:
    """``Session(path)``: the path; YAML text, another type or a second path is one line."""
    if not isinstance(config, str | os.PathLike) or "\n" in str(config):
        raise ConfigError(
            f"Session(config=…) takes a Config or a file path, not {type(config).__name__}"
            + (" holding YAML text" if isinstance(config, str) else ""),
            hint="pass parse_config(text) (from mirai_magics.config) or a path to a YAML file",
        )
    if config_path is not None:
        raise ConfigError("Session got both config and config_path", hint="pass one of them")
    return os.fspath(config)


def _with_tools(overrides: dict[str, Any], tools: list[Any] | None) -> dict[str, Any]:
    """``overrides`` with ``tools`` as the JSON specs the API takes (none: unchanged)."""
    if not tools:
        return overrides
    from .tools import tool_specs

    return {**overrides, "tools": tool_specs(tools)}


def _messages(messages: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """A list of chat messages as given; one prompt string as one user message."""
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else messages


async def _on_engine(engine: EngineLoop, call: Coroutine[Any, Any, T]) -> T:
    """Await ``call`` on the engine loop from the caller's own loop. A cancelled caller
    cancels it there and returns once it has ended (its record then says so), as
    ``Job.cancel`` does for a waiting thread."""
    running: list[asyncio.Task[T]] = []

    async def run() -> T:
        running.append(asyncio.current_task())  # type: ignore[arg-type]
        return await call

    def cancel() -> None:  # on the engine loop, after the task was created
        if running:
            running[0].cancel()
        else:  # created, not started: it never runs its call
            call.close()
            future.cancel()

    future = asyncio.run_coroutine_threadsafe(run(), engine.loop)
    waited = asyncio.wrap_future(future)
    try:
        with responsive():
            return await asyncio.shield(waited)
    except asyncio.CancelledError:
        engine.loop.call_soon_threadsafe(cancel)
        await asyncio.wait([waited])  # until the engine's task has ended; its outcome is moot
        raise
