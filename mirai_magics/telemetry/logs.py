"""Structured call logs: one JSON line per call, to a rotating JSONL file and to a logger.

A line holds ``time``, ``event`` and exactly the keys of ``observability.logging.fields``
(prompts and answers only with ``include_prompts``); secrets are redacted. Answered and
cancelled calls are INFO, failed ones WARNING; ``level`` is the least that is written.

The file is ``calls.jsonl`` in the memory directory (``home_dir``), rotated at
``file_max_bytes`` keeping ``file_backups`` old files, written through a logger of this
session's own that never propagates. The same line goes to the `mirai_magics` logger,
which has no handler (a library must not add one, and nothing lands in a cell): attach
one to see the lines, e.g. ``logging.basicConfig(level="INFO")``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..background import BatchWriter
from ..calllog_rows import redacted, storable
from ..client.records import CallRecord
from ..images import without_images
from ..memory.home import make_home
from ..redact import DEFAULT_SECRET_NAMES, secret_env_values

if TYPE_CHECKING:
    from ..config import Logging

LOGGER_NAME = "mirai_magics"
FILE_NAME = "calls.jsonl"
EVENT = "mirai.call"


def record_fields(record: CallRecord) -> dict[str, Any]:
    """Every field a log line may carry (schema.LOG_FIELDS), as plain data (pure)."""
    return {
        "model": record.model,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "latency_ms": round(record.latency_ms, 1),
        "attempt_number": record.attempts,
        "error_code": record.error_code,
        "user_id": record.user,
        "profile": record.profile,
        "requested_profile": record.requested_profile,
        "call_id": record.id,
        "kind": record.kind,
        "retry_reasons": list(record.retry_reasons),
        "degraded": list(dict.fromkeys(d.label for d in record.degradations)),
        "offline": record.offline,
        "error": record.error,
    }


def call_fields(
    record: CallRecord,
    fields: list[str],
    now: float,
    messages: list[dict[str, Any]] | None = None,
    text: str | None = None,
    include_prompts: bool = False,
) -> dict[str, Any]:
    """The log line of one finished call: time, event, then ``fields`` in order (pure)."""
    every = record_fields(record)
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
    line = {"time": stamp, "event": EVENT, **{name: every[name] for name in fields}}
    if include_prompts:  # images as their placeholders, never their bytes
        line["prompt"], line["response"] = without_images(messages), text
    return line


def level_of(record: CallRecord) -> int:
    """WARNING for a call that failed, INFO otherwise (answered, replayed, cancelled)."""
    return logging.INFO if record.ok or record.error_code == "cancelled" else logging.WARNING


class _JsonlFile(RotatingFileHandler):
    """``calls.jsonl``; its directory is made with the first line, not when a session opens."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, delay=True, encoding="utf-8"
        )
        self.setFormatter(logging.Formatter("%(message)s"))

    def _open(self) -> Any:
        make_home(Path(self.baseFilename).parent)
        return super()._open()

    def doRollover(self) -> None:
        super().doRollover()
        if self.backupCount == 0:  # logging would keep appending; no old file is kept: restart
            Path(self.baseFilename).write_text("", encoding="utf-8")


BATCH_LINGER_S = 0.05


class CallLogger:
    """Writes `call_fields` as one redacted JSON line per call, to the file and the logger."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(LOGGER_NAME)
        # not registered with getLogger: each session has its own file, and nothing propagates
        self.file_logger = logging.Logger(f"{LOGGER_NAME}.calls")
        self.file_logger.propagate = False
        self.settings: Logging | None = None  # None: disabled
        self.secret_names: tuple[str, ...] = DEFAULT_SECRET_NAMES
        self.clock = time.time
        self._file: _JsonlFile | None = None
        # The file is written by a background thread in batches (as the call log is): a
        # write, a flush and a rollover check per call cost ~0.15 ms on the caller's path.
        self._writer = BatchWriter("mirai-jsonl-log", self._write_lines, BATCH_LINGER_S)

    @property
    def path(self) -> Path | None:
        """The JSONL file lines are written to, or None when logging is disabled."""
        return None if self._file is None else Path(self._file.baseFilename)

    def configure(self, settings: Logging, path: Path, secret_names: tuple[str, ...]) -> None:
        """Apply ``observability.logging`` (re-read on reload); the file is reopened if moved."""
        self.settings = settings if settings.enabled else None
        self.secret_names = tuple(secret_names) or DEFAULT_SECRET_NAMES
        self.logger.setLevel(settings.level)
        self.file_logger.setLevel(settings.level)
        wanted = (
            (path, settings.file_max_bytes, settings.file_backups) if settings.enabled else None
        )
        if wanted != self._file_key():
            self.close()
            if wanted is not None:
                self._file = _JsonlFile(*wanted)
                self.file_logger.addHandler(self._file)

    def _file_key(self) -> tuple[Path, int, int] | None:
        f = self._file
        return None if f is None else (Path(f.baseFilename), f.maxBytes, f.backupCount)

    def log_call(
        self,
        record: CallRecord,
        messages: list[dict[str, Any]] | None = None,
        text: str | None = None,
    ) -> str:
        """Log one call; returns the redacted line, or "" when nothing was written."""
        settings, level = self.settings, level_of(record)
        if settings is None:
            return ""
        to_file = self._file is not None and self.file_logger.isEnabledFor(level)
        to_logger = self.logger.isEnabledFor(level) and self.logger.hasHandlers()
        if not (to_file or to_logger):
            return ""  # nobody listens: skip the JSON and redaction work on the hot path
        fields = call_fields(
            record, settings.fields, self.clock(), messages, text, settings.include_prompts
        )
        # Each string redacted before it is JSON (escaping would hide a secret's shape), and
        # made storable: a lone surrogate in a prompt becomes U+FFFD, never a logging error.
        fields = redacted(fields, secret_env_values(self.secret_names))
        line = storable(json.dumps(fields, ensure_ascii=False, default=str))
        if to_file:
            self._writer.add((level, line))
        if to_logger:
            self.logger.log(level, line)
        return line

    def _write_lines(self, batch: list[tuple[int, str]]) -> None:
        for level, line in batch:
            self.file_logger.log(level, line)

    def flush(self) -> None:
        """Wait until every line logged so far is in the file."""
        self._writer.flush()

    def close(self) -> None:
        """Write what is pending and close the file (a later `configure` may open it again)."""
        self.flush()
        handler, self._file = self._file, None
        if handler is not None:
            self.file_logger.removeHandler(handler)
            handler.close()
