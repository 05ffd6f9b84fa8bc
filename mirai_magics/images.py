"""Images in prompts: notebook values → PNG/JPEG parts, their placeholders and their sizes.

A matplotlib ``Figure`` (or ``Axes``), a PIL image, a NumPy image array, PNG/JPEG bytes, an
``IPython.display.Image`` or anything with ``_repr_png_`` becomes an :class:`ImagePart`,
scaled down to a maximum side. matplotlib and Pillow are imported only when such a value is
converted (``pip install mirai-magics[images]``). What is stored never holds the bytes: the
history keeps ``[image 800×600]``, the call log ``[image sha256:… 800×600]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

DETAILS = ("low", "high", "auto")
TOKEN = "\ue000image {}\ue001"  # where an interpolated image sits in the text (private use)
_TOKEN = re.compile("\ue000image (\\d+)\ue001")
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg);base64,(.*)", re.DOTALL)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImagePart:
    """One image as sent: encoded bytes, their format and pixel size."""

    data: bytes
    fmt: str  # "png" or "jpeg"
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def data_url(self) -> str:
        return f"data:image/{self.fmt};base64,{base64.b64encode(self.data).decode()}"

    def placeholder(self) -> str:
        """What the history keeps instead of the bytes."""
        return f"[image {self.width}×{self.height}]"

    def content_part(self, detail: str = "auto") -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": self.data_url(), "detail": detail}}


def header_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a PNG or JPEG header; ValueError when it is neither."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"\xff\xd8":
        return ("jpeg", *_jpeg_size(data))
    raise ValueError("not a PNG or JPEG image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            raise ValueError("a broken JPEG header")
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise ValueError("a JPEG without a frame header")


def is_image(value: Any) -> bool:
    """True for a value that :func:`to_image` converts (checked without importing anything).

    A NumPy array counts only as height × width × 3 or 4 channels (a 2-D array is data, and
    is interpolated as text); other objects only as ``IPython.display.Image``.
    """
    try:
        return _is_image(value)
    except Exception:  # a user's __getattr__ or property may raise anything
        return False


def _is_image(value: Any) -> bool:
    if isinstance(value, bytes | bytearray):
        try:
            header_size(bytes(value))
        except ValueError:
            return False
        return True
    module = type(value).__module__ or ""
    if module.startswith("matplotlib"):
        return hasattr(value, "savefig") or hasattr(getattr(value, "figure", None), "savefig")
    if module.startswith("PIL"):
        return hasattr(value, "save") and hasattr(value, "size")
    if module == "numpy" and type(value).__name__ == "ndarray":
        return value.ndim == 3 and value.shape[2] in (3, 4) and value.dtype.kind in "uf"
    return module.startswith("IPython") and type(value).__name__ == "Image"


def to_image(value: Any, max_side: int = 1024) -> ImagePart:
    """``value`` (see :func:`is_image`) as an ImagePart no larger than ``max_side``."""
    data = _encoded(value)
    fmt, width, height = header_size(data)
    if max(width, height) > max_side:
        data = _shrink(data, max_side, fmt)
        fmt, width, height = header_size(data)
    return ImagePart(data, fmt, width, height)


def from_file(path: str, max_side: int = 1024) -> ImagePart:
    """``--image PATH``: a PNG or JPEG file; a missing or other file is one line."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise UsageError(f"--image {path}: {exc.strerror or exc}", hint="check the path") from None
    try:
        return to_image(data, max_side)
    except ValueError:
        raise UsageError(f"--image {path} is not a PNG or JPEG file", hint="convert it") from None


def _encoded(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    module = type(value).__module__ or ""
    if module.startswith("matplotlib"):
        figure = value if hasattr(value, "savefig") else value.figure
        out = io.BytesIO()
        figure.savefig(out, format="png")
        return out.getvalue()
    if module == "numpy":
        return _pil_png(_pil().fromarray(_uint8(value)))
    if module.startswith("PIL"):
        return _pil_png(value)
    data = value.data  # IPython.display.Image: the PNG or JPEG bytes it shows
    return base64.b64decode(data) if isinstance(data, str) else bytes(data)


def _uint8(array: Any) -> Any:
    """A float array in 0–1 (as matplotlib's imshow takes it) becomes bytes 0–255."""
    if array.dtype.kind == "f":
        return (array.clip(0, 1) * 255).round().astype("uint8")
    return array.astype("uint8")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(
            "this image needs Pillow", hint="pip install 'mirai-magics[images]'"
        ) from None
    return Image


def _pil_png(image: Any) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGBA")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _shrink(data: bytes, max_side: int, fmt: str) -> bytes:
    image = _pil().open(io.BytesIO(data))
    image.thumbnail((max_side, max_side))
    if fmt == "png":
        return _pil_png(image)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def content(text: str, images: list[ImagePart], detail: str = "auto") -> str | list[dict]:
    """The user message's content: ``text`` alone, or text and image parts in their order
    (an image without a token in the text, from ``--image``, comes after the text)."""
    if not images:
        return text
    parts: list[dict[str, Any]] = []
    placed: set[int] = set()
    for i, piece in enumerate(_TOKEN.split(text)):
        if i % 2 == 0:
            if piece.strip():
                parts.append({"type": "text", "text": piece})
        elif int(piece) < len(images):
            placed.add(int(piece))
            parts.append(images[int(piece)].content_part(detail))
    parts += [img.content_part(detail) for n, img in enumerate(images) if n not in placed]
    return parts


def placeholder_text(text: str, images: list[ImagePart]) -> str:
    """``text`` with each image token as ``[image 800×600]`` (what the history keeps); an
    image without a token (``--image``) is listed after the text."""
    placed = {int(n) for n in _TOKEN.findall(text)}
    shown = _TOKEN.sub(lambda m: _placeholder_of(images, int(m.group(1))), text)
    rest = [img.placeholder() for n, img in enumerate(images) if n not in placed]
    return " ".join([shown, *rest]) if rest else shown


def _placeholder_of(images: list[ImagePart], n: int) -> str:
    return images[n].placeholder() if n < len(images) else "[image]"


def decode_data_url(url: str) -> tuple[bytes, str, int, int]:
    """(bytes, format, width, height) of a PNG/JPEG data URL; ValueError when undecodable."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError("not a base64 PNG or JPEG data URL")
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the base64 of the data URL does not decode") from None
    fmt, width, height = header_size(data)
    return data, fmt, width, height


def stored_url(url: str) -> str:
    """A data URL as the call log keeps it: ``[image sha256:… 800×600]``; others unchanged."""
    try:
        data, _fmt, width, height = decode_data_url(url)
    except ValueError:
        if not url.startswith("data:"):
            return url
        return f"[image sha256:{hashlib.sha256(url.encode()).hexdigest()} undecodable]"
    return f"[image sha256:{hashlib.sha256(data).hexdigest()} {width}×{height}]"


def without_images(value: Any) -> Any:
    """Messages (or any JSON value) with every image data URL replaced by its placeholder."""
    if isinstance(value, dict):
        if value.get("type") == "image_url" and isinstance(value.get("image_url"), dict):
            url = value["image_url"].get("url", "")
            return {**value, "image_url": {**value["image_url"], "url": stored_url(str(url))}}
        return {key: without_images(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_images(item) for item in value]
    return value


def image_urls(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(url, detail) of every image part in ``messages``, in order."""
    found = []
    for message in messages:
        parts = message.get("content")
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                spec = part.get("image_url") or {}
                found.append((str(spec.get("url", "")), str(spec.get("detail") or "auto")))
    return found


def count_flag(n: int) -> str:
    """The badge's ``1 image`` / ``3 images``."""
    return f"{n} image" + ("" if n == 1 else "s")
