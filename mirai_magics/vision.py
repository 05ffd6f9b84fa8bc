"""Which images a cell sends, and to which profile: one that can see them (``vision``)."""

from __future__ import annotations

from typing import Any

from .client.routing import AUTO
from .errors import UsageError
from .images import ImagePart, from_file, to_image


def cell_images(text: Any, request: Any, max_side: int) -> list[ImagePart]:
    """The interpolated images of ``text`` (``Filled.images``), then the ``--image`` files."""
    images = [_converted(to_image, value, max_side) for value in getattr(text, "images", ())]
    files = getattr(request, "images", ()) or ()
    return images + [_converted(from_file, path, max_side) for path in files]


def _converted(convert: Any, value: Any, max_side: int) -> ImagePart:
    """One image, or a one-line UsageError: a broken, huge or non-PNG/JPEG value is bad
    input, never a traceback."""
    try:
        return convert(value, max_side)
    except UsageError:
        raise
    except Exception as exc:  # PIL's UnidentifiedImageError, DecompressionBombError, TypeError…
        what = value if isinstance(value, str) else type(value).__name__
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(
            f"cannot use {what} as an image ({reason})",
            hint="pass a PNG/JPEG file, bytes, a PIL image or a matplotlib figure",
        ) from None


def vision_profile(config: Any, profile: str) -> tuple[str, str | None]:
    """(profile to send to, badge note): a named profile without vision is refused in one
    line; ``auto`` goes to the default profile, or the first one that has vision, and says so."""
    if profile != AUTO:
        if not config.chat_profile(profile).vision:
            model = config.chat_profile(profile).model
            raise UsageError(
                f"profile {profile!r} ({model}) takes no images",
                hint=f"use a vision profile ({', '.join(seeing(config)) or 'none configured'})",
            )
        return profile, None
    choices = seeing(config)
    if not choices:
        raise UsageError("no profile takes images", hint="set vision: true on a model entry")
    default = config.ui.default_profile
    chosen = default if default in choices else choices[0]
    return chosen, f"auto → {chosen} (images need vision)"


def seeing(config: Any) -> list[str]:
    """The chat profiles whose model takes images, in config order."""
    names = []
    for name, prof in config.models.items():
        if prof.kind != "embedding" and prof.vision:
            names.append(name)
    return names
