"""Profile + per-call overrides → the exact keyword arguments sent to the SDK (pure)."""

from __future__ import annotations

from typing import Any

from ..config import Profile
from ..errors import UsageError

CHAT_OVERRIDES = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "max_tokens",
        "response_format",
        "seed",
        "stop",
        "user",
    }
)
SAMPLING = ("top_p", "frequency_penalty", "presence_penalty")  # sent as written when set


def chat_params(profile_name: str, profile: Profile, overrides: dict[str, Any]) -> dict[str, Any]:
    """Request parameters for a chat call, the profile's values as written in the config.

    Reasoning (o1-class) profiles send ``max_tokens`` as ``max_completion_tokens`` and no
    sampling parameters: those models reject them.
    """
    unknown = set(overrides) - CHAT_OVERRIDES
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(sorted(unknown))}",
            hint=f"valid: {', '.join(sorted(CHAT_OVERRIDES))}",
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    params: dict[str, Any] = {"model": given.pop("model", profile.model)}
    if profile.kind == "reasoning":
        return params | _reasoning(profile_name, profile, given)
    return params | _sampling(profile_name, profile, given) | given


def _sampling(name: str, profile: Profile, given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    temperature = given.pop("temperature", profile.temperature)
    if temperature is not None:
        if not 0 <= temperature <= profile.max_temperature:
            raise UsageError(
                f"temperature {temperature} is outside 0–{profile.max_temperature} "
                f"for profile {name!r}",
                hint=f"pick a value ≤ {profile.max_temperature}",
            )
        out["temperature"] = temperature
    for key in SAMPLING:
        value = given.pop(key, getattr(profile, key))
        if value is not None:
            out[key] = value
    max_tokens = given.pop("max_tokens", profile.max_tokens)
    if max_tokens is not None:
        out["max_tokens"] = _positive(max_tokens)
    return out


def _reasoning(name: str, profile: Profile, given: dict[str, Any]) -> dict[str, Any]:
    for key in ("temperature", *SAMPLING):
        if key in given:
            raise UsageError(
                f"profile {name!r} is a reasoning model and takes no {key}",
                hint="drop the option or use a chat profile such as main",
            )
    out: dict[str, Any] = {}
    cap = given.pop("max_tokens", profile.max_tokens)
    if cap is not None:
        out["max_completion_tokens"] = _positive(cap)
    if profile.reasoning_effort:
        out["reasoning_effort"] = profile.reasoning_effort
    return out | given


def _positive(value: Any) -> int:
    if not isinstance(value, int) or value < 1:
        raise UsageError(f"max tokens must be a positive integer, got {value!r}")
    return value


def output_cap(params: dict[str, Any]) -> int:
    """The output token cap a request carries (0 when uncapped)."""
    return int(params.get("max_completion_tokens") or params.get("max_tokens") or 0)
