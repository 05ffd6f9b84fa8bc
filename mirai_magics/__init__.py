"""mirai_magics: production-grade LLM magics for Jupyter (`%load_ext mirai_magics`).

Only the extension hooks live here. The public Python API — ``ask``, ``Session``,
``batch``, ``Reply``, ``MiraiError`` and the ``sandbox`` module — loads on first use, so
`%load_ext` imports nothing heavy::

    from mirai_magics import Session, ask

    print(ask("Name one prime number.", profile="fast"))
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__version__ = "0.1.0"

_loaded: dict[int, Any] = {}
__all__ = [
    "MiraiError",
    "Reply",
    "Session",
    "ask",
    "batch",
    "load_ipython_extension",
    "sandbox",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    """The public API (``__all__``) loads on first use, not at `%load_ext`."""
    if name in ("ask", "batch"):
        from . import api

        return getattr(api, name)
    if name == "Session":
        from .session import Session

        return Session
    if name == "Reply":
        from .client.records import Reply

        return Reply
    if name == "MiraiError":
        from .errors import MiraiError

        return MiraiError
    if name == "sandbox":  # `from . import sandbox` would ask this hook again
        return importlib.import_module(f"{__name__}.sandbox")
    raise AttributeError(f"module 'mirai_magics' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """Register the `%%mirai` / `%mirai` magics and their event hooks."""
    from .ui.magics import MiraiMagics

    if id(ipython) in _loaded:
        return
    magics = MiraiMagics(ipython)
    ipython.register_magics(magics)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)
    ipython.events.register("post_run_cell", magics.post_run_cell)
    _loaded[id(ipython)] = magics
    # the first answer should not pay for imports and connections: warm them after this cell
    ipython.events.register("post_run_cell", magics.start_warm_up)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and hooks; stop the session's thread, server and metrics endpoint."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    ipython.events.unregister("pre_run_cell", magics.pre_run_cell)
    ipython.events.unregister("post_run_cell", magics.post_run_cell)
    with contextlib.suppress(ValueError):  # still there when no cell ran since loading
        ipython.events.unregister("post_run_cell", magics.start_warm_up)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("mirai", None)
    ipython.magics_manager.magics["cell"].pop("mirai_sandbox", None)
    ipython.magics_manager.registry.pop(type(magics).__name__, None)
    magics.close()
