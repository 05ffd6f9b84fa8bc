"""Which notebook a kernel runs, so its memory entries belong to it (pure, given env and names).

The identity is the first of: ``JPY_SESSION_NAME`` (JupyterLab and Notebook set it to the
notebook's path), VS Code's ``__vsc_ipynb_file__`` (a name in the user namespace),
``MIRAI_NOTEBOOK``, else the kernel's working directory as ``dir:<path>`` (a plain IPython
kernel or a script: all of them in one folder share a memory, as before scopes existed).
Entries stored before scopes existed have the empty identity: a ``dir:`` kernel counts them
as its own, every kernel finds them with folder scope or ``--all``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

FOLDER_PREFIX = "dir:"
UNKNOWN = ""  # entries written before scopes existed, and learned files (shared by all)


def notebook_identity(
    env: Mapping[str, str] | None = None,
    namespace: Mapping[str, Any] | None = None,
    cwd: str | None = None,
) -> str:
    """The notebook this kernel runs (its path), else ``dir:`` and the working directory."""
    env = os.environ if env is None else env
    if namespace is None:
        from ..client.canary import notebook_namespace

        namespace = notebook_namespace()
    for value in (
        env.get("JPY_SESSION_NAME"),
        namespace.get("__vsc_ipynb_file__"),
        env.get("MIRAI_NOTEBOOK"),
    ):
        if isinstance(value, str) and value.strip():
            return os.path.normpath(value.strip())
    return FOLDER_PREFIX + os.path.abspath(cwd or os.getcwd())


def is_folder(identity: str) -> bool:
    """A kernel that knows no notebook (scoped to its working directory)."""
    return identity.startswith(FOLDER_PREFIX)


def own_identities(identity: str) -> tuple[str, ...]:
    """The identities whose cells a kernel counts as its own in notebook scope."""
    return (identity, UNKNOWN) if is_folder(identity) else (identity,)


def shown_name(identity: str) -> str:
    """How another notebook's cells are labelled: its file name, or where a kernel ran."""
    if identity == UNKNOWN:
        return "earlier session"
    if is_folder(identity):
        folder = os.path.basename(identity[len(FOLDER_PREFIX) :].rstrip(os.sep)) or os.sep
        return f"kernel in {folder}/"
    return os.path.basename(identity) or identity
