"""One `%%mirai` cell: parse → build prompt → call (streamed or not) → render → remember."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..client.loop import responsive
from ..client.routing import AUTO
from ..errors import MiraiError, UsageError
from ..telemetry.tracing import span
from .defaults import CellDefaults
from .interpolate import interpolate
from .render import render_answer, show_badge, show_error
from .stream import StreamView, consume, stream_enabled


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


def request_from_args(
    args: Any, text: str, config: Any, defaults: CellDefaults | None = None
) -> CellRequest:
    """Merge parsed arguments with the cell defaults (`%mirai use`, the picker; None: the
    config's ``ui.default_profile``). ``auto`` lets routing pick the profile per cell."""
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
    fmt = args.format or config.ui.default_format
    if fmt == "json":
        overrides["response_format"] = {"type": "json_object"}
    if args.out is not None and not args.out.isidentifier():
        raise UsageError(f"--out needs a Python identifier, got {args.out!r}")
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
    )


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
    """Run one request end to end; failures render as one red line and return None."""
    with span("mirai.cell", profile=request.profile, format=request.fmt), responsive():
        return _run_cell(request, session, shell, namespace)


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
    try:
        prepared = session.prepare(text, request)
    except MiraiError as exc:
        show_error(str(exc))
        return None
    request.flags.extend(prepared.flags)
    streaming = stream_enabled(
        request.stream, os.environ.get("MIRAI_STREAM"), session.config.defaults.stream
    )
    view = StreamView(request.fmt, session.config.ui.stream_throttle_ms) if streaming else None
    try:
        send = session.stream_chat if view is not None else session.chat
        sent = send(prepared.messages, prepared.profile, **send_kwargs(request, prepared))
        reply = consume(sent, view) if view is not None else sent
    except MiraiError as exc:
        show_error(str(exc), view.handle if view else None)
        return None
    with span("mirai.validate", format=request.fmt) as current:
        rendered = render_answer(reply.text, request.fmt, shell, view.handle if view else None)
        current.set_attribute("valid", not rendered.error)
    request.code = rendered.code
    if rendered.error:
        show_error(rendered.error)
    if prepared.keep_history:
        session.history.append_turn(prepared.user_text, reply.text)
    show_badge(reply.record, request.flags + rendered.flags, session.config.pricing)
    namespace["_mirai"] = reply
    if request.out:
        namespace[request.out] = reply.text
    return reply
