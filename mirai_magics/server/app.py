"""Request routing of the offline server: API endpoints, fault application, admin endpoints.

Per API request: stats begin (in flight) -> route -> fault outcome (down, drop,
hang, error status) -> latency -> auth -> validation -> answer (dripped with drip_sse_s /
drip_body_s) -> stats end.
Admin endpoints under ``/_mirai/`` bypass faults and stats. With ``azure_api_version`` the
API paths are Azure's (see ``azure``), mapped onto the same routes.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable

from . import azure, endpoints
from .errors import HTML_503, ApiError, fault_error, method_not_allowed, missing_key, not_found
from .errors import wrong_key as wrong_key_error
from .faults import FAULT_FIELDS, FaultPlan, Faults, error_headers, normalize_entry
from .http import Connection, Request, Response, json_response
from .stats import Stats

ADMIN_PREFIX = "/_mirai/"
_ROUTES = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/embeddings": ("POST", "embeddings"),
    "/v1/models": ("GET", "models"),
}


def kind_of(path: str) -> str:
    path = path.rstrip("/")
    if path in _ROUTES:
        return _ROUTES[path][1]
    return "models" if path.startswith("/v1/models/") else "other"


class App:
    """State and request handling of one offline server (runs on the server's loop)."""

    def __init__(
        self,
        faults: Faults | None = None,
        seed: int = 0,
        vary: bool = False,
        stream_delay_ms: float = 0,
        expected_key: str | None = None,
        azure_api_version: str | None = None,
        models: tuple[str, ...] | None = endpoints.MODELS,
    ) -> None:
        self.seed = seed
        self.azure_api_version = azure_api_version
        self.models = models  # what GET /v1/models lists; None: a 404, as some servers do
        self.plan = FaultPlan(faults, seed)
        self.stats = Stats()
        self.expected_key = expected_key
        self.vary = vary
        self.stream_delay_ms = stream_delay_ms
        self._initial = (vary, stream_delay_ms)
        self._ids = itertools.count(1)
        self._chat_ids = itertools.count(1)
        self._variant_rng = random.Random(f"mirai-variant-{seed}")

    # -- configuration (any thread) ---------------------------------------------------------

    def configure(self, changes: dict) -> dict:
        """Partial update: Faults fields plus ``script``, ``vary`` and ``stream_delay_ms``."""
        changes = dict(changes)
        script = changes.pop("script", None)
        vary = changes.pop("vary", None)
        delay = changes.pop("stream_delay_ms", None)
        unknown = set(changes) - set(FAULT_FIELDS)
        if unknown:
            known = ", ".join((*FAULT_FIELDS, "script", "vary", "stream_delay_ms"))
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))} (known: {known})")
        if script is not None and not isinstance(script, list):
            raise ValueError("script must be a list of entries")
        entries = [normalize_entry(e) for e in script or []]
        if vary is not None and not isinstance(vary, bool):
            raise ValueError("vary must be a boolean")
        ok_delay = isinstance(delay, (int, float)) and not isinstance(delay, bool) and delay >= 0
        if delay is not None and not ok_delay:
            raise ValueError("stream_delay_ms must be a number >= 0")
        if changes:
            self.plan.update(**changes)
        if script is not None:
            self.plan.script(entries)
        if vary is not None:
            self.vary = vary
        if delay is not None:
            self.stream_delay_ms = delay
        return self.config()

    def config(self) -> dict:
        return {
            "faults": self.plan.faults.to_dict(),
            "script": self.plan.pending_script(),
            "vary": self.vary,
            "stream_delay_ms": self.stream_delay_ms,
            "seed": self.seed,
        }

    def reset(self) -> dict:
        """Stats, script, faults, vary and stream delay back to how the server started."""
        self.stats.reset()
        self.plan.reset()
        self.vary, self.stream_delay_ms = self._initial
        return self.config()

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, req: Request, conn: Connection) -> None:
        if req.path.startswith(ADMIN_PREFIX):
            await conn.send(self._admin(req))
        else:
            await self._api(req, conn)

    def _admin(self, req: Request) -> Response:
        name = req.path[len(ADMIN_PREFIX) :].rstrip("/")
        handlers: dict[str, tuple[str, Callable[[], dict]]] = {
            "stats": ("GET", self.stats.snapshot),
            "faults": ("GET", self.config),
            "health": ("GET", lambda: {"ok": True, "offline": True}),
            "reset": ("POST", self.reset),
        }
        try:
            if name == "faults" and req.method == "POST":
                return json_response(200, self.configure(endpoints.parse_body(req.body)))
            if name not in handlers:
                raise not_found(req.method, req.path)
            method, handler = handlers[name]
            if req.method != method:
                raise method_not_allowed(req.method, req.path)
            return json_response(200, handler())
        except ApiError as err:
            return json_response(err.status, err.body())
        except (TypeError, ValueError) as err:
            return json_response(400, ApiError(400, str(err)).body())

    async def _api(self, req: Request, conn: Connection) -> None:
        body, parse_error = None, None
        if req.method == "POST":
            try:
                body = endpoints.parse_body(req.body)
            except ApiError as err:
                parse_error = err
        kind = kind_of(self._plain(req))
        record = self.stats.begin(req.path, kind, body, query=req.query, headers=req.headers)
        conn.on_final = lambda status: self.stats.end(record, kind, status)
        try:
            await self._answer(req, conn, body, parse_error)
        finally:
            conn.finish("aborted")  # no-op unless the answer failed before its last write

    def _plain(self, req: Request) -> str:
        """The request's path as a plain ``/v1/…`` route (Azure's paths in Azure mode)."""
        if self.azure_api_version is None:
            return req.path
        return azure.plain_path(req.path) or req.path

    def _route(self, req: Request) -> Callable[[Request, dict | None], object]:
        version = self.azure_api_version
        path = (req.path if version is None else azure.route(req, version)).rstrip("/")
        method, kind = _ROUTES.get(path, (None, None))
        if kind is None and path.startswith("/v1/models/"):
            method, kind = "GET", "model"
        if kind is None:
            raise not_found(req.method, req.path)
        if req.method != method:
            raise method_not_allowed(req.method, req.path)
        return getattr(self, f"_do_{kind}")

    async def _answer(
        self, req: Request, conn: Connection, body: dict | None, parse_error: ApiError | None
    ) -> int | str:
        try:
            endpoint = self._route(req)
        except ApiError as err:
            return await self._send_error(conn, err, self.plan.faults)
        outcome = self.plan.decide()
        if outcome.kind in ("down", "drop"):
            conn.finish(outcome.kind)
            conn.close()
            return outcome.kind
        if outcome.kind == "hang":
            try:
                await conn.wait_peer_gone()
            finally:
                conn.finish("hang")
            return "hang"
        if outcome.kind == "html503":
            headers = self._headers(outcome.error_headers())
            await conn.send(Response(503, HTML_503, "text/html; charset=utf-8", headers))
            return 503
        if outcome.kind == "status":
            return await self._send_error(conn, fault_error(outcome.status or 500), outcome.faults)
        if outcome.faults.latency_ms > 0:
            await asyncio.sleep(outcome.faults.latency_ms / 1000)
        try:
            self._check_auth(req)
            if parse_error is not None:
                raise parse_error
            if body is not None and outcome.faults.fails_model(body.get("model")):
                raise fault_error(outcome.faults.status_5xx)
            result = endpoint(req, body)
        except ApiError as err:
            return await self._send_error(conn, err, outcome.faults)
        await self._send_answer(conn, result, outcome.faults)
        return 200

    async def _send_answer(self, conn: Connection, result: object, faults: Faults) -> None:
        """A 200 answer: at once, paced by stream_delay_ms, or dripped (drip_* faults)."""
        if isinstance(result, endpoints.SseBody):
            if faults.drip_sse_s is not None:
                await conn.drip_stream(200, self._headers(), result.events, faults.drip_sse_s)
                return
            delay = self.stream_delay_ms / 1000
            await conn.send_stream(200, self._headers(), result.events, delay)
        elif faults.drip_body_s is not None:
            await conn.send_dripping(
                json_response(200, result, self._headers()), faults.drip_body_s
            )
        else:
            await conn.send(json_response(200, result, self._headers()))

    def _headers(self, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        return [
            ("x-request-id", f"req_offline_{next(self._ids)}"),
            ("x-mirai-offline", "1"),
            *(extra or []),
        ]

    async def _send_error(self, conn: Connection, err: ApiError, faults: Faults) -> int:
        headers = self._headers(error_headers(faults, err.status))
        await conn.send(json_response(err.status, err.body(), headers))
        return err.status

    def _check_auth(self, req: Request) -> None:
        if self.azure_api_version is not None:
            key = azure.presented_key(req)
            if not key or (self.expected_key is not None and key != self.expected_key):
                raise azure.access_denied()
            return
        scheme, _, key = req.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise missing_key()
        if self.expected_key is not None and key != self.expected_key:
            raise wrong_key_error(key)

    # -- endpoints --------------------------------------------------------------------------

    def _do_chat(self, req: Request, body: dict | None) -> object:
        assert body is not None
        endpoints.validate_chat(body)
        variant = f"{self._variant_rng.getrandbits(32):08x}" if self.vary else None
        cid = f"chatcmpl-offline-{next(self._chat_ids)}"
        faults = self.plan.faults
        created = int(time.time())
        return endpoints.chat(body, cid, created, variant, faults.answer_model, faults.schema_break)

    def _do_embeddings(self, req: Request, body: dict | None) -> object:
        assert body is not None
        result, n_inputs = endpoints.embeddings(body, self.plan.faults)
        self.stats.add_embedding_inputs(n_inputs)
        return result

    def _do_models(self, req: Request, body: dict | None) -> object:
        if self.models is None:
            raise not_found(req.method, req.path)
        return endpoints.list_models(self.models)

    def _do_model(self, req: Request, body: dict | None) -> object:
        name = self._plain(req).rstrip("/")[len("/v1/models/") :]
        if self.models is None:
            raise not_found(req.method, req.path)
        return endpoints.get_model(name, self.models)
