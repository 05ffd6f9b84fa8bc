"""Image parts of chat requests, as the offline server checks and describes them.

A data URL must decode to a PNG or JPEG whose header gives its size, at most
``MAX_IMAGE_BYTES``; an http(s) URL is accepted and never fetched. The answer says what
arrived (``2 images: png 640×480 (high), url (auto)``), so a test can assert on it.
"""

from __future__ import annotations

from ..images import decode_data_url, image_urls
from .errors import ApiError

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the API's own limit per image
DETAILS = ("low", "high", "auto")


def described(messages: list[dict]) -> list[str]:
    """One ``png 640×480 (high)`` per image part; ApiError 400 for an unusable one."""
    out = []
    for n, (url, detail) in enumerate(image_urls(messages)):
        if detail not in DETAILS:
            raise _invalid(n, f"detail must be one of {', '.join(DETAILS)}, not {detail!r}")
        if url.startswith(("http://", "https://")):
            out.append(f"url ({detail})")
            continue
        try:
            data, fmt, width, height = decode_data_url(url)
        except ValueError as exc:
            raise _invalid(n, f"the image could not be decoded: {exc}") from None
        if len(data) > MAX_IMAGE_BYTES or not width or not height:
            raise _invalid(n, f"the image is {len(data)} bytes, {width}×{height}")
        out.append(f"{fmt} {width}×{height} ({detail})")
    return out


def summary(messages: list[dict]) -> str:
    """``\\n\\nImages: 1 image: png 640×480 (auto)``, or "" without images."""
    found = described(messages)
    if not found:
        return ""
    count = f"{len(found)} image" + ("" if len(found) == 1 else "s")
    return f"\n\nImages: {count}: {', '.join(found)}"


def _invalid(n: int, why: str) -> ApiError:
    return ApiError(400, f"Invalid image {n}: {why}.", param="messages", code="invalid_image")
