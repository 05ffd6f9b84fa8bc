"""Call log rows: canonical JSON, the request and prompt hashes, and one redacted row per call.

The request hash is what replay looks a recording up by. It covers (model, messages,
parameters) with two exceptions that keep a recorded notebook replayable:

* the memory block is left out: it depends on what the memory index held at recording
  time (and on the embedder), not on the notebook's cells, and replay does not search;
* the messages are hashed *redacted*: a recorded answer is stored redacted, so when it
  comes back as history in a replay run it must hash like the original did. Redaction
  is idempotent, so ``redact(redact(m)) == redact(m)`` makes both sides meet.

Images are neither stored nor hashed as bytes: every image data URL becomes
``[image sha256:… 800×600]`` (``images.without_images``) before a message is hashed or
stored, so a replay matches on the image's hash.

The tool calls an answer asks for (``tools.Answer``) are data the model produced, like
the answer: they are redacted the same way and stored as JSON in ``tool_calls`` (NULL:
none, as in a log written before the column existed).

The JSON columns (``params``, ``messages``, ``tool_calls``, ``retry_reasons``) are redacted
as data, never as JSON text (``stored_json``): each string in them goes through the pass,
and a dict item whose key names a secret (``{"password": "hunter2"}``) or is read with its
value (``{"Authorization": "Basic …"}``) is redacted by that name; then the data is
serialized. A pass over the serialized text could end a string early (``token=abc\"def``
→ ``token=[REDACTED]"def``) and leave a row no reader can decode.

Python text may hold what UTF-8 cannot: a lone surrogate (``'\\ud800'``, from a decoded
file or a typo). Hashes encode it losslessly (``surrogatepass``); stored text carries
U+FFFD in its place, since SQLite refuses the row otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from .client.records import CallRecord
from .images import without_images
from .prompt import is_memory_message
from .redact import is_secret_reference, redact
from .redact_rules import REDACTED
from .text import clip

_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_COLUMNS = frozenset({"params", "messages", "tool_calls", "retry_reasons"})


def storable(text: str) -> str:
    """``text`` as SQLite can store it: each lone surrogate becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` as UTF-8; a lone surrogate is hashed, not an error."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def canonical(value: Any) -> str:
    """Stable JSON text: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def redacted(value: Any, secrets: Sequence[str] = ()) -> Any:
    """``value`` with every string in it (nested in dicts and lists too) redacted, storable."""
    if isinstance(value, str):
        return storable(redact(value, list(secrets)))
    if isinstance(value, dict):
        return {key: redacted(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item, secrets) for item in value]
    return value


def request_key(
    params: dict[str, Any], messages: list[dict[str, Any]], secrets: Sequence[str] = ()
) -> str:
    """SHA-256 of (model, redacted messages without the memory block, parameters)."""
    kept = [redacted(without_images(m), secrets) for m in messages if not is_memory_message(m)]
    body = {"model": params.get("model"), "messages": kept, "params": params}
    return sha256(canonical(body))


def stored_json(value: Any, secrets: Sequence[str] = ()) -> str:
    """``value`` as a JSON column: redacted as data (see the module docstring), then
    serialized, so the text is JSON whatever the strings in it hold."""
    return canonical(_redacted_data(value, secrets))


def _redacted_data(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return storable(redact(value, list(secrets)))
    if isinstance(value, dict):
        return {
            _redacted_data(k, secrets) if isinstance(k, str) else k: _named(k, v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redacted_data(item, secrets) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _redacted_data(str(value), secrets)  # what canonical()'s default=str would write


def _named(key: Any, value: Any, secrets: Sequence[str]) -> Any:
    """The value of the dict item ``key: value``, redacted with its name in view."""
    if not isinstance(key, str) or not isinstance(value, str):
        return _redacted_data(value, secrets)
    if is_secret_reference(key.replace("-", "_"), value):  # X-Api-Key as one name
        return REDACTED
    head, extra = f"{key}: ", list(secrets)
    line = redact(head + value, extra)  # rules that read a name with its value: headers
    if line != head + value and line.startswith(head):
        value = line[len(head) :]
    return storable(redact(value, extra))


def stored_calls(answer: Any, secrets: Sequence[str] = ()) -> str | None:
    """The tool calls ``answer`` carries, redacted, as JSON (None: it has none)."""
    calls = list(getattr(answer, "tool_calls", ()))
    return stored_json(calls, secrets) if calls else None


def calls_from(stored: str | None) -> list[dict[str, Any]]:
    """The tool calls of a row's ``tool_calls`` column (NULL or absent: none); ValueError
    when it holds no JSON list of calls (a damaged or hand-edited row)."""
    calls = json.loads(stored) if stored else []
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise ValueError(f"not a list of tool calls: {clip(str(stored), 40)}")
    return calls


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else canonical(without_images(content))
    return ""


def prompt_key(messages: list[dict[str, Any]], secrets: Sequence[str] = ()) -> str:
    """SHA-256 of the last user message alone, redacted (to explain a replay miss)."""
    return sha256(redact(last_user_text(messages), list(secrets)))


def text_key(text: Any) -> str:
    return sha256(str(text))


def current_cell() -> str | None:
    """The running notebook cell as ``[n]`` (IPython's execution count), if any."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)  # may be mid-import
    shell = get_ipython() if get_ipython is not None else None
    inputs = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    # In[] already holds the running cell; execution_count is bumped before or after the
    # cell runs depending on the IPython version, so it is not used.
    return f"[{len(inputs) - 1}]" if isinstance(inputs, list) and len(inputs) > 1 else None


def new_session_id() -> str:
    return f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"


def row_values(
    record: CallRecord,
    messages: list[dict[str, Any]] | None,
    text: str | None,
    secrets: Sequence[str] = (),
    **ids: Any,
) -> dict[str, Any]:
    """One call log row from a CallRecord, its messages and answer, every string redacted
    (the JSON columns as data: ``stored_json``)."""
    request_hash = request_key(record.params, messages, secrets) if messages else None
    shown = without_images(messages) if messages is not None else None
    hashed = redacted(shown, secrets) if shown else None
    reroute = record.reroute
    row = {
        "id": record.id,
        "time": record.started_at,
        "kind": record.kind,
        "profile": record.profile,
        "requested_profile": record.requested_profile,
        "model": record.model,
        "response_model": record.response_model,
        "canary": record.canary,
        "route_profile": record.route.profile if record.route else None,
        "route_reason": record.route.reason if record.route else None,
        "request_hash": request_hash,
        "prompt_hash": prompt_key(hashed) if hashed else None,
        "params": stored_json(record.params, secrets),
        "messages": stored_json(shown, secrets) if shown is not None else None,
        "response": text,
        "tool_calls": stored_calls(text, secrets),
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "latency_ms": round(record.latency_ms, 3),
        "attempts": record.attempts,
        "retry_reasons": stored_json(record.retry_reasons, secrets),
        "degraded_from": record.degraded_from,
        "degraded_reason": reroute.reason if reroute else None,
        "finish_reason": record.finish_reason,
        "offline": int(record.offline),
        "streamed": int(record.streamed),
        "replayed": int(record.replayed),
        "error": record.error,
        "error_code": record.error_code,
        "user": record.user,
        **ids,
    }
    # the JSON columns are redacted already: a pass over their text could break the JSON
    return {
        name: value if name in JSON_COLUMNS else redacted(value, secrets)
        for name, value in row.items()
    }
