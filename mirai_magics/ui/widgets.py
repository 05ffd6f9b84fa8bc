"""`%mirai picker`: an ipywidgets panel bound to the cells' default profile and overrides.

Choosing a profile loads its own temperature and max tokens, except a field the user has
changed in this panel: that one keeps the user's value (a temperature capped at the new
profile's maximum) and is the only kind of value sent as an override. A reasoning profile
takes no temperature, so its slider is hidden rather than left showing a stale value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .defaults import CellDefaults

LABEL_WIDTH = "7.5em"  # "temperature" and "max tokens" in full, not "temperat…"
API_TEMPERATURE = 1.0  # what the API uses when a profile sets none


def picker_state(
    config: Any,
    defaults: CellDefaults,
    profile: str,
    temperature: float | None,
    max_tokens: int | None,
) -> None:
    """Apply a picker choice to ``defaults`` (a plain state change, testable without widgets)."""
    prof = config.profile(profile)
    overrides: dict[str, Any] = {}
    if temperature is not None and prof.kind != "reasoning":
        overrides["temperature"] = min(temperature, prof.max_temperature)
    if max_tokens:
        overrides["max_tokens"] = int(max_tokens)
    defaults.use(profile, overrides)


@dataclass(frozen=True)
class Fields:
    """What the panel shows for one profile: values, and whether temperature applies."""

    temperature: float
    max_tokens: int
    takes_temperature: bool


def fields_for(prof: Any, chosen: dict[str, Any]) -> Fields:
    """The profile's own values, except those the user ``chosen`` (pure)."""
    takes = prof.kind != "reasoning"
    own = prof.temperature if prof.temperature is not None else API_TEMPERATURE
    temperature = min(chosen.get("temperature", own), prof.max_temperature)
    max_tokens = chosen.get("max_tokens", prof.output_cap or 1024)
    return Fields(temperature, int(max_tokens), takes)


def summary_html(profile: str, prof: Any, fields: Fields, chosen: dict[str, Any]) -> str:
    """``next %%mirai → heavy/gpt-4o, T=0.25, max_tokens=2500`` (T=– when none is sent)."""
    sent = fields.takes_temperature and ("temperature" in chosen or prof.temperature is not None)
    temperature = f"{fields.temperature:.2f}" if sent else "–"
    return (
        f"<code>next %%mirai → {profile}/{prof.model}, T={temperature}, "
        f"max_tokens={fields.max_tokens}</code>"
    )


def model_picker(config: Any, defaults: CellDefaults) -> Any:
    """Profile dropdown, temperature slider (capped at the profile's maximum), max-tokens field."""
    import ipywidgets as w

    names = config.chat_profiles()
    start = defaults.profile_in(config)  # auto is no profile to tune: the picker starts at main
    start = start if start in names else "main"
    chosen = defaults.overrides_for(start)  # field → the user's value; the rest follow profiles
    chosen.pop("model", None)
    style = {"description_width": LABEL_WIDTH}
    dropdown = w.Dropdown(options=names, value=start, description="profile", style=style)
    slider = w.FloatSlider(
        min=0.0, step=0.05, description="temperature", readout_format=".2f", style=style
    )
    tokens = w.BoundedIntText(min=1, max=128_000, description="max tokens", style=style)
    summary = w.HTML()
    loading = [False]  # True while the panel itself sets values: those are no user choices

    def load_profile() -> None:
        prof = config.profiles[dropdown.value]
        fields = fields_for(prof, chosen)
        loading[0] = True
        try:
            slider.max = prof.max_temperature
            slider.value = fields.temperature
            slider.layout.display = None if fields.takes_temperature else "none"
            tokens.value = fields.max_tokens
        finally:
            loading[0] = False
        apply(prof, fields)

    def apply(prof: Any, fields: Fields) -> None:
        temperature = chosen.get("temperature") if fields.takes_temperature else None
        picker_state(config, defaults, dropdown.value, temperature, chosen.get("max_tokens"))
        summary.value = summary_html(dropdown.value, prof, fields, chosen)

    def user_changed(name: str) -> Any:
        def changed(change: Any) -> None:
            if not loading[0]:
                chosen[name] = change["new"]
                load_profile()

        return changed

    load_profile()
    dropdown.observe(lambda _change: load_profile(), names="value")
    slider.observe(user_changed("temperature"), names="value")
    tokens.observe(user_changed("max_tokens"), names="value")
    box = w.VBox([dropdown, slider, tokens, summary], layout=w.Layout(max_width="480px"))
    box.add_class("mirai-picker")
    return box
