"""`%mirai models [ENDPOINT]`: what each endpoint serves, and which of it the profiles use.

Each endpoint is asked ``GET /v1/models`` (the SDK's ``models.list()``, Azure's classic form
``/openai/models?api-version=…``) at once, through the session's own SDK clients. An
endpoint that offers no list (404, 405), refuses the key or cannot be reached gets one line
saying so, and the profiles that use it are still named.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..errors import MiraiError, UsageError
from ..schema import DEFAULT_ENDPOINT
from ..text import clip

LIST_TIMEOUT_S = 10.0
NO_LIST = (404, 405)  # the server has no model list (llama.cpp's early builds, some proxies)
LEGEND = "* used by a profile · ! a profile's model this endpoint does not list"


@dataclass(frozen=True)
class Served:
    """One endpoint's answer: the model ids it lists, or why there is no list."""

    endpoint: str
    where: str  # Endpoint.describe(): URL and how calls authenticate
    models: tuple[str, ...] | None
    problem: str = ""


def models_command(session: Any, name: str | None) -> None:
    """Print the listing of every endpoint, or of the one called ``name``."""
    endpoints = session.endpoints
    if name is not None and name not in endpoints.by_name:
        known = ", ".join(endpoints.by_name)
        raise UsageError(f"unknown endpoint {name!r}", hint=f"use one of: {known}")
    names = [name] if name is not None else list(endpoints.by_name)
    client = session.client
    served = session.engine.run(_ask_all(client, endpoints, names))
    print(listing(served, session.config))


async def _ask_all(client: Any, endpoints: Any, names: list[str]) -> list[Served]:
    return list(await asyncio.gather(*(_ask(client, endpoints.get(n)) for n in names)))


async def _ask(client: Any, endpoint: Any) -> Served:
    """``GET /v1/models`` of one endpoint, as a Served (never raises for its answer)."""
    import openai

    name, where = endpoint.name, endpoint.describe()
    try:
        sdk = client.sdk_for(None if name == DEFAULT_ENDPOINT else name)
        page = await sdk.models.list(timeout=LIST_TIMEOUT_S)
    except openai.APIStatusError as exc:
        return Served(name, where, None, _refusal(exc.status_code, exc))
    except openai.APITimeoutError:
        return Served(name, where, None, f"no answer within {LIST_TIMEOUT_S:g} s")
    except openai.APIConnectionError as exc:
        return Served(name, where, None, _unreachable(exc))
    except MiraiError as exc:  # e.g. its key variable is not set
        return Served(name, where, None, exc.message)
    return Served(name, where, tuple(sorted(model.id for model in page.data)))


def _refusal(status: int, exc: Exception) -> str:
    if status in NO_LIST:
        return f"does not offer a model list (HTTP {status})"
    if status in (401, 403):
        return f"refused the key (HTTP {status})"
    return f"HTTP {status}: {clip(str(exc), 80)}"


def _unreachable(exc: BaseException) -> str:
    """``could not connect (connection refused)``, or a connection closed without an answer."""
    chain = []
    while exc is not None and len(chain) < 8:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "could not connect (connection refused)"
    if any(type(e).__name__ == "ConnectError" for e in chain):
        return f"could not connect ({clip(str(chain[-1]) or type(chain[-1]).__name__, 80)})"
    return "closed the connection without an answer"


def used_models(config: Any, endpoint: str) -> dict[str, list[str]]:
    """Model id → the profiles of ``endpoint`` that send it (a canary's version too)."""
    own = None if endpoint == DEFAULT_ENDPOINT else endpoint
    used: dict[str, list[str]] = {}
    for profile, settings in config.models.items():
        if settings.endpoint != own:
            continue
        used.setdefault(settings.name, []).append(profile)
        if settings.canary is not None:
            used.setdefault(settings.canary.name, []).append(f"{profile} (canary)")
    return used


def listing(served: list[Served], config: Any) -> str:
    """The text `%mirai models` prints (pure: the answers and the config in, lines out)."""
    lines: list[str] = []
    for answer in served:
        used = used_models(config, answer.endpoint)
        head = f"{answer.endpoint} · {answer.where}"
        if answer.models is None:
            lines.append(f"{head} — {answer.problem}")
            lines += [f"    {model:<28} {', '.join(who)}" for model, who in used.items()]
            continue
        lines.append(f"{head} — {len(answer.models)} model{'s' * (len(answer.models) != 1)}")
        width = max((len(m) for m in (*answer.models, *used)), default=0) + 2
        for model in answer.models:
            mark = "*" if model in used else " "
            lines.append(f"  {mark} {model:<{width}}{', '.join(used.get(model, []))}".rstrip())
        for model, who in used.items():
            if model not in answer.models:
                lines.append(f"  ! {model:<{width}}{', '.join(who)} (not in the list)")
    return "\n".join([*lines, LEGEND])
