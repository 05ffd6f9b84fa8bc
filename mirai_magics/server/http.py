"""Minimal HTTP/1.1 protocol for the offline server: request parsing and response writing.

Only what an OpenAI SDK client (httpx), urllib and a browser need: keep-alive,
Content-Length and chunked request bodies, one-write JSON responses and chunked
Server-Sent Events, and the slow senders of the drip faults (a body byte by byte, a stream
that never ends). Nothing here knows about the OpenAI API.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEAD_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20
SERVER_NAME = "mirai-offline"


class HttpError(Exception):
    """A request that cannot be parsed; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(
    status: int, obj: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(status, body, "application/json", list(headers or []))


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason(status)}", f"Server: {SERVER_NAME}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(resp: Response, keep_alive: bool) -> bytes:
    """Status line, headers and body as one buffer (written with a single write)."""
    headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body)))]
    return _head(resp.status, headers + resp.headers, keep_alive) + resp.body


def _stream_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    base = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]
    return _head(status, [*base, ("Transfer-Encoding", "chunked"), *headers], keep_alive)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
KEEP_ALIVE = b": keep-alive\n\n"  # an SSE comment: clients skip it, but it is a read


def _parse_head(raw: bytes) -> tuple[str, str, str, str, dict[str, str]]:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, "undecodable request head") from exc
    lines = text.lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line: {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, f"malformed header line: {line[:100]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path, _, query = target.partition("?")
    return method.upper(), path, query, version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HttpError(400, "malformed chunk size") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # discard trailers
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise HttpError(413, "request body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    raw_length = headers.get("content-length", "0") or "0"
    try:
        length = int(raw_length)
    except ValueError as exc:
        raise HttpError(400, f"invalid Content-Length: {raw_length!r}") from exc
    if length < 0:
        raise HttpError(400, "negative Content-Length")
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "request body too large")
    return await reader.readexactly(length) if length else b""


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """Read one request; None when the client closed the connection between requests."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "incomplete request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "request head too large") from exc
    method, path, query, version, headers = _parse_head(raw)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        body = await _read_body(reader, headers)
    except asyncio.IncompleteReadError as exc:
        raise HttpError(400, "incomplete request body") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(400, "malformed chunked body") from exc
    return Request(method, path, query, version, headers, body)


class Connection:
    """One accepted socket: writes responses, streams SSE, drops or waits on the peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.keep_alive = True
        self.on_final: Callable[[int | str], None] | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(self, resp: Response) -> None:
        """Write one complete response in a single write."""
        data = encode_response(resp, self.keep_alive)
        self.finish(resp.status)
        await self._write(data)
        if not self.keep_alive:
            self.close()

    async def send_dripping(self, resp: Response, every_s: float) -> None:
        """Write the head at once, then the body one byte per ``every_s`` (fault drip_body_s)."""
        data = encode_response(resp, self.keep_alive)
        start = len(data) - len(resp.body)
        await self._write(data[:start])
        for at in range(start, len(data)):
            await asyncio.sleep(every_s)
            if at == len(data) - 1:
                self.finish(resp.status)
            await self._write(data[at : at + 1])
        if not self.keep_alive:
            self.close()

    async def drip_stream(
        self, status: int, headers: list[tuple[str, str]], events: list[bytes], every_s: float
    ) -> None:
        """One event per ``every_s`` without end (fault drip_sse_s): the answer's events but
        ``[DONE]``, then SSE comments, until the peer goes away or the server stops."""
        await self._write(_stream_head(status, headers, self.keep_alive))
        for event in itertools.chain(events[:-1], itertools.repeat(KEEP_ALIVE)):
            await self._write(encode_chunk(event))
            await asyncio.sleep(every_s)

    async def send_stream(
        self, status: int, headers: list[tuple[str, str]], events: list[bytes], delay_s: float
    ) -> None:
        """Send ``events`` as a chunked body; all at once, or one per ``delay_s``."""
        head = _stream_head(status, headers, self.keep_alive)
        if delay_s <= 0 or len(events) < 2:
            data = head + b"".join(map(encode_chunk, events)) + LAST_CHUNK
            self.finish(status)
            await self._write(data)
        else:
            await self._write(head + encode_chunk(events[0]))
            for event in events[1:-1]:
                await asyncio.sleep(delay_s)
                await self._write(encode_chunk(event))
            await asyncio.sleep(delay_s)
            self.finish(status)
            await self._write(encode_chunk(events[-1]) + LAST_CHUNK)
        if not self.keep_alive:
            self.close()

    def finish(self, status: int | str) -> None:
        """Report the request's outcome (once) just before its last byte goes out."""
        callback, self.on_final = self.on_final, None
        if callback is not None:
            callback(status)

    async def _write(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            raise ConnectionResetError("connection closed by peer")
        self.writer.write(data)
        await self.writer.drain()

    async def wait_peer_gone(self) -> None:
        """Block until the client disconnects (or the server closes this connection)."""
        with contextlib.suppress(ConnectionError, OSError):
            while await self.reader.read(65536):
                pass
        self.close()

    def close(self) -> None:
        """Close without writing anything more (graceful FIN)."""
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
