"""The host's side of the launcher's frames: decoded incrementally, with the host's own caps.

A frame is one kind byte, a 4-byte big-endian length and the payload (see ``launcher.py``).
Everything in it comes from inside the sandbox, so nothing is trusted: sizes are capped
again here, file names must be plain relative paths, and garbage ends the decoding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

HEADER = struct.Struct(">cI")
MAX_FRAME = 1024 * 1024  # the launcher sends 64 KiB chunks; anything larger is garbage
MAX_FILES = 1000


@dataclass
class Decoded:
    """What the frames said so far: output, files, the end status, and what was cut."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    files: dict[str, bytearray] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    truncated: bool = False  # output or files over the host's caps
    garbled: str = ""  # why decoding stopped early

    @property
    def output_bytes(self) -> int:
        return len(self.stdout) + len(self.stderr)


class FrameReader:
    """Feed it the launcher's stdout as it arrives; read ``decoded`` at the end.
    ``max_file_bytes`` caps all files together (the work dir's size)."""

    def __init__(self, max_output: int, max_file_bytes: int) -> None:
        self.max_output, self.max_file_bytes = max_output, max_file_bytes
        self.decoded = Decoded()
        self._buffer = bytearray()
        self._file: str | None = None
        self._file_bytes = 0

    def feed(self, data: bytes) -> None:
        if self.decoded.garbled:
            return
        self._buffer += data
        while len(self._buffer) >= HEADER.size and not self.decoded.garbled:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                self.decoded.garbled = f"frame of {length} bytes"
                return
            if len(self._buffer) < HEADER.size + length:
                return
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            self._frame(kind, payload)

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind in (b"o", b"e"):
            self._output(self.decoded.stdout if kind == b"o" else self.decoded.stderr, payload)
        elif kind == b"f":
            self._file = self._file_name(_json(payload).get("path"))
        elif kind == b"d":
            if self._file is not None:  # else the data of a refused file: dropped
                self._file_data(payload)
        elif kind == b"x":
            self.decoded.status = _json(payload)
        else:
            self.decoded.garbled = f"unexpected frame {kind!r}"

    def _output(self, into: bytearray, payload: bytes) -> None:
        room = max(self.max_output - self.decoded.output_bytes, 0)
        into += payload[:room]
        if len(payload) > room:
            self.decoded.truncated = True

    def _file_name(self, path: Any) -> str | None:
        files = self.decoded.files
        if not isinstance(path, str) or len(files) >= MAX_FILES or not plain_relative(path):
            self.decoded.truncated = True
            return None
        files[path] = bytearray()
        return path

    def _file_data(self, payload: bytes) -> None:
        room = max(self.max_file_bytes - self._file_bytes, 0)
        self.decoded.files[self._file] += payload[:room]  # type: ignore[index]
        self._file_bytes += min(len(payload), room)
        if len(payload) > room:
            self.decoded.truncated = True


def plain_relative(path: str) -> bool:
    """A relative path without ``..``, empty parts or control characters."""
    parts = PurePosixPath(path).parts
    return (
        bool(parts)
        and not path.startswith("/")
        and ".." not in parts
        and len(path) <= 4096
        and all(ch.isprintable() for ch in path)
    )


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
