"""The memory directory (``home_dir(config)``, ``.mirai/`` by default) and how it is made.

It holds prompts, cell sources and call logs, so whoever creates it also writes a
``.gitignore`` holding ``*`` into it: nothing in it is committed by accident. A directory
that exists already (say ``MIRAI_HOME`` pointing at a folder of the user's) is left as it is.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

GITIGNORE = "# made by mirai_magics: prompts, cell sources and call logs stay out of git\n*\n"


def make_home(directory: Path) -> Path:
    """Create ``directory`` (and parents) if missing, with a ``.gitignore`` of ``*``."""
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        return directory
    with contextlib.suppress(OSError):  # a read-only mount: the memory still works
        (directory / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    return directory
