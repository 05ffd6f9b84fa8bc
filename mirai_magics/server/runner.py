"""OfflineServer: lifecycle of the offline server (background thread or an existing loop).

Owns the listening socket, the accepted connections and their keep-alive loops;
delegates every request to :class:`~mirai_magics.server.app.App`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from .app import App
from .endpoints import MODELS
from .errors import error_body
from .faults import Faults
from .http import MAX_HEAD_BYTES, Connection, HttpError, json_response, read_request
from .stats import StatsSnapshot

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class OfflineServer:
    """OpenAI-compatible offline HTTP server with fault injection, bound to loopback only."""

    def __init__(
        self,
        port: int = 0,
        faults: Faults | None = None,
        seed: int = 0,
        vary: bool = False,
        stream_delay_ms: float = 0,
        expected_key: str | None = None,
        host: str = "127.0.0.1",
        azure_api_version: str | None = None,
        models: Sequence[str] | None = MODELS,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the offline server binds loopback only, not {host!r}")
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        # azure_api_version: answer Azure's paths, auth and api-version instead (see azure);
        # models: what GET /v1/models lists (None: a 404, a server that offers no list)
        self.app = App(
            faults,
            seed,
            vary,
            stream_delay_ms,
            expected_key,
            azure_api_version,
            tuple(models) if models is not None else None,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[Connection, asyncio.Task] = {}
        self._stop_event: asyncio.Event | None = None
        self._closing = False
        self._stopped = threading.Event()

    # -- properties and run-time control (any thread) ---------------------------------------

    @property
    def url(self) -> str:
        """The SDK's ``base_url``: ``…/v1`` (an Azure-shaped server: its ``/openai/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        root = "/openai/v1" if self.app.azure_api_version is not None else "/v1"
        return f"http://{host}:{self.port}{root}"

    @property
    def base_url(self) -> str:
        """The server root without ``/v1`` (admin endpoints live under ``/_mirai/``; an
        Azure-shaped server's resource URL)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None and not self._closing

    @property
    def stats(self) -> StatsSnapshot:
        return self.app.stats.snapshot()

    def stats_snapshot(self) -> StatsSnapshot:
        return self.app.stats.snapshot()

    @property
    def faults(self) -> Faults:
        return self.app.plan.faults

    def set_faults(self, **changes: object) -> dict:
        """Partial update of Faults fields (also ``script``, ``vary``, ``stream_delay_ms``)."""
        return self.app.configure(changes)

    def script(self, entries: list[object], append: bool = False) -> None:
        """Queue outcomes ("ok", "429", "html503", "hang", "drop", ...), one per API request."""
        self.app.plan.script(list(entries), replace=not append)

    def reset_stats(self) -> None:
        self.app.stats.reset()

    def reset(self) -> dict:
        """Stats, script, faults, vary and stream delay back to the constructor's settings."""
        return self.app.reset()

    # -- background thread ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> OfflineServer:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if self._server is not None or self._closing:
            raise RuntimeError("this OfflineServer already ran; create a new one")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready, errors), name="mirai-offline-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("offline server did not start listening in time")
        if errors:
            raise errors[0]
        return self

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.serve_async(on_ready=lambda _srv: ready.set()))
        except BaseException as exc:  # report start-up failures to start()
            errors.append(exc)
        finally:
            ready.set()
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection (hung requests too); idempotent."""
        loop = self._loop
        if loop is None:
            return
        if self._stopped.is_set() or loop.is_closed():
            self._join(timeout)
            return
        if _running_loop() is loop:  # called from the server's own loop: cannot block
            loop.create_task(self._shutdown())
            return
        coro = self._shutdown()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
        else:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                future.result(timeout)
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> OfflineServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- asyncio ----------------------------------------------------------------------------

    async def start_async(self) -> OfflineServer:
        """Start listening on the running loop; returns once listening."""
        if self._server is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._server = await asyncio.start_server(
            self._on_connect, host=self.host, port=self.port, limit=MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def serve_async(self, on_ready: Callable[[OfflineServer], object] | None = None) -> None:
        """Serve on the running loop until :meth:`stop` (or cancellation)."""
        await self.start_async()
        assert self._stop_event is not None
        try:
            if on_ready is not None:
                on_ready(self)
            await self._stop_event.wait()
        finally:
            await self._shutdown()

    async def stop_async(self) -> None:
        await self._shutdown()

    def request_stop(self) -> None:
        """Ask :meth:`serve_async` to return (call on the server's loop, e.g. a signal handler)."""
        if self._stop_event is not None:
            self._stop_event.set()

    async def __aenter__(self) -> OfflineServer:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    async def _shutdown(self) -> None:
        if self._server is None:
            return
        if self._closing:
            await self._shutdown_done.wait()
            return
        self._closing = True
        assert self._stop_event is not None
        self._stop_event.set()
        self._server.close()
        tasks = []
        for conn, task in list(self._conns.items()):
            conn.abort()
            task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._shutdown_done.set()
        self._stopped.set()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        task = asyncio.current_task()
        if self._closing or task is None:
            conn.abort()
            return
        self._conns[conn] = task
        try:
            await self._serve_connection(conn)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("offline server: unexpected error on a connection")
        finally:
            conn.close()
            self._conns.pop(conn, None)

    async def _serve_connection(self, conn: Connection) -> None:
        while not conn.closed:
            try:
                req = await read_request(conn.reader, conn.writer)
            except HttpError as err:
                conn.keep_alive = False
                await conn.send(json_response(err.status, error_body(err.message)))
                return
            if req is None:
                return
            conn.keep_alive = req.keep_alive
            try:
                await self.app.handle(req, conn)
            except (ConnectionError, OSError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("offline server: error handling %s %s", req.method, req.path)
                conn.keep_alive = False
                await conn.send(
                    json_response(500, error_body("offline server bug", "server_error"))
                )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
