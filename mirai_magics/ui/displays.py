"""``Disp[n]``: the last image (PNG or JPEG bytes) cell n displayed, for `{Disp[n]}`.

A plot shown by the inline backend or ``display(Image(...))`` never reaches ``Out[n]``;
the shell's display publisher does see it. Its ``publish`` is wrapped once per shell (a
reloaded extension reuses the same record) and keeps only the image bytes of each cell.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

IMAGE_TYPES = ("image/png", "image/jpeg")
_ATTR = "_mirai_displays"


class Displays(dict):
    """Execution count → the bytes of the last image that cell displayed."""

    def __init__(self, shell: Any = None):
        super().__init__()
        self.shell = shell

    def seen(self, data: Any) -> None:
        """Keep the image of one published bundle (if it has one) under the running cell."""
        if not isinstance(data, dict) or self.shell is None:
            return
        for mime in IMAGE_TYPES:
            image = as_bytes(data.get(mime))
            if image is not None:
                self[running_cell(self.shell)] = image
                return


def running_cell(shell: Any) -> int:
    """The running cell's number: In[] already holds it (execution_count is bumped before or
    after a cell runs, depending on the IPython version)."""
    inputs = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    return len(inputs) - 1 if isinstance(inputs, list) else int(shell.execution_count)


def as_bytes(value: Any) -> bytes | None:
    """A bundle's image value: bytes as they are, base64 text decoded; anything else None."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            return None
    return None


def attach(shell: Any) -> Displays:
    """The shell's Displays, wrapping its display publisher the first time."""
    publisher = getattr(shell, "display_pub", None)
    if publisher is None:
        return Displays()
    found = getattr(publisher, _ATTR, None)
    if isinstance(found, Displays):
        return found
    displays, publish = Displays(shell), publisher.publish

    def recording(data: Any, *args: Any, **kwargs: Any) -> Any:
        displays.seen(data)
        return publish(data, *args, **kwargs)

    publisher.publish = recording
    setattr(publisher, _ATTR, displays)
    return displays
