"""One queued item: its payload, how it runs (in process or on a worker), and its result.

A payload is plain JSON — ``{"messages": [...], "profile": "main", "format": "text",
"overrides": {...}}`` — so the same item runs on the engine loop or on a `mirai worker`
through Arq. ``run_item`` never raises for a failed call: the failure is the result
(``error``, ``error_code``), so one bad row never ends a batch. A typed batch's results are
checked in the kernel that collects them (``Results.typed``): an answer that does not match
is an error value too (``error_code`` ``invalid_schema``), its raw text kept.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..client.records import CallRecord, Cut, Degradation, Route
from ..errors import MiraiError
from ..text import clip, json_problem, parse_json

RECORD_FIELDS = (
    "id",
    "profile",
    "model",
    "endpoint",
    "requested_profile",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "attempts",
    "retry_reasons",
    "offline",
    "finish_reason",
    "response_model",
    "error",
    "error_code",
    "quota",
    "user",
)


def payload(
    messages: list[dict[str, Any]],
    profile: str,
    fmt: str = "text",
    overrides: dict[str, Any] | None = None,
    prompt_tokens: int | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """What a queued item carries: everything needed to send it again, nothing else.

    ``user``: whose per-user token budget it spends (the submitting session's), also when a
    `mirai worker` of another OS user sends it."""
    out: dict[str, Any] = {"messages": messages, "profile": profile, "format": fmt}
    if user:
        out["user"] = user
    if overrides:
        out["overrides"] = overrides
    if prompt_tokens is not None:
        out["prompt_tokens"] = prompt_tokens
    return out


async def run_item(client: Any, item: dict[str, Any]) -> dict[str, Any]:
    """Send one payload through the resilient client as background work; the result dict.

    Quota waits are the client's (background calls wait for a rate slot and a token budget
    instead of failing); a call that still fails is returned as ``error``.
    """
    if "invalid" in item:  # the row could not become a prompt (its template failed)
        return {
            "text": None,
            "data": None,
            "error": item["invalid"],
            "error_code": "template",
            "record": None,
        }
    overrides = dict(item.get("overrides") or {})
    kwargs: dict[str, Any] = {"background": True}
    if item.get("prompt_tokens") is not None:
        kwargs["prompt_tokens"] = item["prompt_tokens"]
    if item.get("user"):
        kwargs["on_behalf_of"] = item["user"]
    try:
        reply = await client.chat(
            item["messages"], item.get("profile", "main"), **kwargs, **overrides
        )
    except MiraiError as exc:
        record = getattr(exc, "record", None)
        return {
            "text": None,
            "data": None,
            "error": str(exc),
            "error_code": exc.code,
            "record": record_dict(record) if record is not None else None,
        }
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug must not end the batch: the item says what happened
        return {
            "text": None,
            "data": None,
            "error": f"{type(exc).__name__}: {exc}",
            "error_code": "internal",
            "record": None,
        }
    return finish(reply.text, item.get("format", "text"), reply.record)


def finish(text: str, fmt: str, record: CallRecord | None) -> dict[str, Any]:
    """The result dict of an answer (parsed for format json; bad JSON is an item error)."""
    result: dict[str, Any] = {
        "text": text,
        "data": None,
        "error": None,
        "error_code": None,
        "record": record_dict(record) if record is not None else None,
    }
    if fmt == "json":
        try:
            result["data"] = parse_json(text)
        except json.JSONDecodeError as exc:
            result["error"] = json_problem(exc)
            result["error_code"] = "invalid_json"
    return result


def record_dict(record: CallRecord) -> dict[str, Any]:
    """The part of a CallRecord worth keeping with a result (JSON-safe)."""
    out = {name: getattr(record, name) for name in RECORD_FIELDS}
    out["degradations"] = [asdict(d) for d in record.degradations]
    if record.cuts:
        out["cuts"] = [asdict(c) for c in record.cuts]
    if record.route is not None:
        out["route"] = asdict(record.route)
    return out


def record_from_dict(data: dict[str, Any] | None) -> CallRecord | None:
    """A CallRecord again (for badges and `.record`), from what ``record_dict`` kept."""
    if not data:
        return None
    values = {k: v for k, v in data.items() if k in RECORD_FIELDS}
    record = CallRecord(**{"profile": "", "model": "", **values})
    record.degradations = [Degradation(**d) for d in data.get("degradations") or []]
    record.cuts = [Cut(**c) for c in data.get("cuts") or []]
    if data.get("route"):
        record.route = Route(**data["route"])
    return record


@dataclass
class ItemResult:
    """One item of a batch (or a background cell): ``str()`` is the answer text.

    A failed item is a value, not an exception: ``.error`` says why, ``.text`` is "" (an
    answer that was not valid JSON, or did not match the batch's schema, keeps its text).
    """

    text: str = ""
    data: Any = None
    error: str | None = None
    error_code: str | None = None
    record: CallRecord | None = field(default=None, repr=False)
    index: int = 0

    @classmethod
    def of(cls, result: dict[str, Any] | None, index: int = 0) -> ItemResult:
        if result is None:
            return cls(error="not finished", error_code="pending", index=index)
        return cls(
            text=result.get("text") or "",
            data=result.get("data"),
            error=result.get("error"),
            error_code=result.get("error_code"),
            record=record_from_dict(result.get("record")),
            index=index,
        )

    @property
    def ok(self) -> bool:
        return self.error is None

    def typed(self, schema: Any) -> ItemResult:
        """This result checked against an ``AnswerSchema``: ``.data`` the model instance or
        dict, or an error value naming the field (the text stays)."""
        if not self.ok:
            return self
        checked = schema.check(self.text)
        if checked.ok:
            return replace(self, data=checked.data)
        return replace(self, data=None, error=checked.error, error_code="invalid_schema")

    @property
    def value(self) -> Any:
        """What the item stands for: the parsed data (json), else the text."""
        return self.data if self.data is not None else self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        if self.error is not None:
            return f"<error: {clip(self.error, 120)}>"
        return repr(self.data) if self.data is not None else repr(clip(self.text, 120))


class Results(list):
    """The results of one batch, aligned with its input; ``.failed`` lists the errors."""

    job_id: str = ""

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self if not r.ok]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self]

    def typed(self, schema: Any) -> Results:
        """Every row checked against ``schema`` (see ``ItemResult.typed``)."""
        out = Results(r.typed(schema) for r in self)
        out.job_id = self.job_id
        return out

    def __repr__(self) -> str:
        done = sum(r.ok for r in self)
        head = f"Results(job {self.job_id}: {done} ok, {len(self) - done} failed of {len(self)})"
        return (
            head
            + "\n"
            + "\n".join(f"  [{r.index}] {r!r}" for r in self[:20])
            + ("\n  …" if len(self) > 20 else "")
        )
