"""One `%%mirai` cell: parse → build prompt → call (streamed or not) → render → remember.

The cell measures its whole wait, from its start (``CellRequest.started``; the magics set it
when the cell began, so first-call setup counts) to the answer, and how much of it went to
retrieving memory; the badge shows both (``badges.latency_text``). Streaming, the cell's
view shows a live waiting line until the first chunk. Ctrl-C (the kernel's stop button)
ends the cell with one line, ``interrupted after 2.5 s; nothing added to history``.

``--schema NAME`` asks for a typed answer (``answer_schema``): the reply is checked before it
is shown, and with ``--retry-invalid`` a mismatch is re-asked once, with the validation error,
on the badge as ``re-asked 1×``.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..answer_schema import AnswerSchema, Checked, resolve_schema
from ..client.loop import responsive
from ..client.routing import AUTO
from ..errors import CallInterrupted, MiraiError, UsageError
from ..telemetry.tracing import span
from .badges import duration
from .defaults import CellDefaults
from .interpolate import interpolate
from .out_name import check_out_name
from .render import render_answer, show_badge, show_error
from .stream import StreamView, consume, stream_enabled, watch_attempts


@dataclass
class CellRequest:
    """Everything a cell asks for, after argument parsing and session defaults."""

    text: str
    profile: str
    fmt: str
    overrides: dict[str, Any]
    system: str | None = None
    history: bool = True
    memory: bool = True
    top_k: int | None = None
    stream: bool | None = None
    out: str | None = None
    interp: bool = True
    flags: list[str] = field(default_factory=list)
    code: str | None = None  # set by the call: the code the answer put into the next cell
    strict: bool = False  # strict mode: a failure raises after its red line (Run All stops)
    started: float = field(default_factory=time.monotonic)  # when the user began to wait
    schema: AnswerSchema | None = None  # --schema: the answer's type
    retry_invalid: bool = False  # --retry-invalid: re-ask once when it does not match
    images: list[str] = field(default_factory=list)  # --image PATH (repeatable)
    detail: str = "auto"  # --detail low|high|auto: how closely the model looks at images


def request_from_args(
    args: Any,
    text: str,
    config: Any,
    defaults: CellDefaults | None = None,
    namespace: Any = None,
) -> CellRequest:
    """Merge parsed arguments with the cell defaults (`%mirai use`, the picker; None: the
    config's ``ui.default_profile``). ``auto`` lets routing pick the profile per cell;
    ``namespace`` is where `--schema NAME` is looked up."""
    defaults = defaults or CellDefaults()
    profile = args.profile or defaults.profile_in(config)
    check_profile(config, profile)
    if profile == AUTO and args.model is not None:
        raise UsageError(
            "--model pins one model, and auto picks the profile per cell",
            hint="name a profile (e.g. %%mirai heavy --model …) or drop --model",
        )
    overrides = defaults.overrides_for(profile)
    for key, value in (
        ("model", args.model),
        ("temperature", args.temperature),
        ("max_tokens", args.max_tokens),
    ):
        if value is not None:
            overrides[key] = value
    schema = typed_schema(args, namespace)
    fmt = "json" if schema is not None else (args.format or config.ui.default_format)
    if fmt == "json":
        rf = schema.response_format() if schema is not None else {"type": "json_object"}
        overrides["response_format"] = rf
    if args.out is not None:
        check_out_name(args.out)  # not get_ipython, In, _, a builtin…: the shell needs those
    if not text.strip():
        raise UsageError("the cell is empty", hint="write the prompt on the lines below %%mirai")
    return CellRequest(
        text=text.strip(),
        profile=profile,
        fmt=fmt,
        overrides=overrides,
        system=args.system,
        history=not args.no_history,
        memory=not args.no_memory,
        top_k=args.k,
        stream=args.stream,
        out=args.out,
        interp=not args.no_interp,
        schema=schema,
        retry_invalid=schema is not None and getattr(args, "retry_invalid", False),
        images=list(getattr(args, "image", None) or []),
        detail=getattr(args, "detail", None) or "auto",
    )


def typed_schema(args: Any, namespace: Any) -> AnswerSchema | None:
    """`--schema NAME` (None without it); a format or option it cannot go with is one line."""
    name = getattr(args, "schema", None)
    if name is None:
        if getattr(args, "retry_invalid", False):
            raise UsageError(
                "--retry-invalid re-asks an answer that does not match --schema",
                hint="add --schema NAME, or drop --retry-invalid",
            )
        return None
    if args.format not in (None, "json"):
        raise UsageError(
            f"--schema answers are JSON, not --format {args.format}",
            hint="drop --format (or use --format json)",
        )
    if getattr(args, "background", False):
        raise UsageError(
            "--schema checks the answer in this cell, not in the background",
            hint="drop --background; batch(prompts, schema=Model) gives typed rows",
        )
    return resolve_schema(name, namespace)


def check_profile(config: Any, name: str) -> None:
    """``auto`` or a chat profile; else a UsageError listing both (one line)."""
    if name == AUTO:
        return
    try:
        config.chat_profile(name)
    except UsageError as exc:
        exc.hint = f"{exc.hint}, or auto (routing picks main, heavy or fast per cell)"
        raise


def send_kwargs(request: CellRequest, prepared: Any) -> dict[str, Any]:
    """What the session's chat call gets: ``auto`` classifies the cell as typed, before
    ``{In[n]}`` and friends are filled in (a reference to code is a signal of its own)."""
    kwargs = prepared.send_kwargs()
    if request.profile == AUTO:
        kwargs["route_text"] = request.text
    return kwargs


def run_cell(request: CellRequest, session: Any, shell: Any, namespace: dict[str, Any]) -> Any:
    """Run one request end to end; failures render as one red line and return None (strict
    mode: they raise after it); Ctrl-C ends the cell with one line (``CallInterrupted``)."""
    with span("mirai.cell", profile=request.profile, format=request.fmt), responsive():
        return _run_cell(request, session, shell, namespace)


def call_label(request: CellRequest, config: Any) -> str:
    """``main/gpt-4o-mini``: what the waiting line names until an attempt says otherwise."""
    if request.profile == AUTO:
        return AUTO
    model = request.overrides.get("model") or config.chat_profile(request.profile).model
    return f"{request.profile}/{model}"


def waited_ms(request: CellRequest) -> float:
    """How long the user has waited for this cell so far."""
    return (time.monotonic() - request.started) * 1000


def interpolated(request: CellRequest, namespace: dict[str, Any]) -> str:
    """The cell's text with `{…}` filled in (unless --no-interp); undefined names go on the
    badge."""
    if not request.interp:
        return request.text
    result = interpolate(request.text, namespace)
    if result.undefined:
        request.flags.append("undefined: " + ", ".join(f"{{{u}}}" for u in result.undefined))
    return result.text


def _run_cell(request: CellRequest, session: Any, shell: Any, namespace: dict[str, Any]) -> Any:
    text = interpolated(request, namespace)
    view = _stream_view(request, session)
    try:
        answered = _ask(request, session, text, view)
    except KeyboardInterrupt:
        if view is not None:
            view.interrupted()
        waited = duration(waited_ms(request))
        raise CallInterrupted(f"interrupted after {waited}; nothing added to history") from None
    if answered is None:
        return None
    prepared, reply = answered
    prices = session.policy.prices  # pricing: + local endpoints + genai-prices
    with span("mirai.validate", format=request.fmt) as current:
        try:
            reply, checked = _typed(request, session, prepared, reply)  # may re-ask once
        except KeyboardInterrupt:
            waited = duration(waited_ms(request))
            raise CallInterrupted(f"interrupted after {waited}; nothing added to history") from None
        handle = view.handle if view else None
        rendered = render_answer(reply, request.fmt, shell, handle, prices, checked)
        current.set_attribute("valid", not rendered.error)
    request.code = rendered.code
    if rendered.error:
        show_error(rendered.error)
    if prepared.keep_history:
        session.history.append_turn(prepared.user_text, reply.text)
    reply.record.wait_ms = waited_ms(request)
    show_badge(reply.record, request.flags + rendered.flags, prices)
    namespace["_mirai"] = rendered.reply  # rich in the notebook; .text, .data, .record
    if request.out and not rendered.error:  # JSON: the parsed value, never half a string
        namespace[request.out] = rendered.reply.value
    if rendered.error and request.strict:
        raise MiraiError(rendered.error)
    return rendered.reply


def _stream_view(request: CellRequest, session: Any) -> StreamView | None:
    """The live view of a streamed cell (waiting first for memory, if it retrieves any)."""
    streaming = stream_enabled(
        request.stream, os.environ.get("MIRAI_STREAM"), session.config.defaults.stream
    )
    if not streaming:
        return None
    memory = request.memory and session.memory_enabled
    label = "memory" if memory else call_label(request, session.config)
    throttle = session.config.ui.stream_throttle_ms
    return StreamView(request.fmt, throttle, label=label, started=request.started)


def _ask(
    request: CellRequest, session: Any, text: str, view: StreamView | None
) -> tuple[Any, Any] | None:
    """Prepare (its memory retrieval timed) and send; a MiraiError is shown as one red line
    and gives None (strict mode: raised after it)."""
    watching = view.watching() if view is not None else contextlib.nullcontext()
    try:
        with watching:
            began = time.monotonic()
            prepared = session.prepare(text, request)
            memory_ms = (time.monotonic() - began) * 1000
            request.flags.extend(prepared.flags)
            reply = _send(request, session, prepared, view)
    except MiraiError as exc:
        show_error(str(exc), view.handle if view else None)
        if request.strict:
            raise
        return None
    reply.record.memory_ms = memory_ms
    return prepared, reply


def _send(request: CellRequest, session: Any, prepared: Any, view: StreamView | None) -> Any:
    kwargs = send_kwargs(request, prepared)
    if view is None:
        return session.chat(prepared.messages, prepared.profile, **kwargs)
    watch_attempts(session.client)
    view.waiting_for(call_label(request, session.config))
    return consume(session.stream_chat(prepared.messages, prepared.profile, **kwargs), view)


def _typed(
    request: CellRequest, session: Any, prepared: Any, reply: Any
) -> tuple[Any, Checked | None]:
    """A `--schema` answer checked; with `--retry-invalid`, a mismatch is asked again once
    (the answer and the validation error appended), and the badge says ``re-asked 1×``."""
    if request.schema is None:
        return reply, None
    checked = request.schema.check(reply.text)
    if checked.ok or not request.retry_invalid:
        return reply, checked
    messages = [
        *prepared.messages,
        {"role": "assistant", "content": reply.text},
        {"role": "user", "content": checked.reask()},
    ]
    profile = reply.record.profile if prepared.profile == AUTO else prepared.profile
    try:
        again = session.chat(messages, profile, **prepared.overrides)
    except MiraiError as exc:  # the first answer stays, with its mismatch line
        request.flags.append("re-ask failed")
        show_error(str(exc))
        return reply, checked
    request.flags.append("re-asked 1×")
    again.record.memory_ms = reply.record.memory_ms
    return again, request.schema.check(again.text)
