"""`%mirai picker`: an ipywidgets panel bound to the cells' default profile and overrides."""

from __future__ import annotations

from typing import Any

from .defaults import CellDefaults


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


def model_picker(config: Any, defaults: CellDefaults) -> Any:
    """Profile dropdown, temperature slider (capped at the profile's maximum), max-tokens field."""
    import ipywidgets as w

    names = config.chat_profiles()
    start = defaults.profile_in(config)  # auto is no profile to tune: the picker starts at main
    dropdown = w.Dropdown(
        options=names, value=start if start in names else "main", description="profile"
    )
    slider = w.FloatSlider(min=0.0, step=0.05, description="temperature", readout_format=".2f")
    tokens = w.BoundedIntText(min=1, max=128_000, description="max tokens")
    summary = w.HTML()

    def load_profile(name: str) -> None:
        # read both values before assigning: each assignment below may run apply()
        prof, picked = config.profiles[name], defaults.overrides_for(name)
        temperature = picked.get("temperature", prof.temperature or 0.0)
        max_tokens = picked.get("max_tokens", prof.output_cap or 1024)
        slider.max = prof.max_temperature
        slider.value = temperature
        slider.disabled = prof.kind == "reasoning"
        tokens.value = max_tokens

    def apply(_change: Any = None) -> None:
        temperature = None if slider.disabled else slider.value
        picker_state(config, defaults, dropdown.value, temperature, tokens.value)
        prof = config.profiles[dropdown.value]
        summary.value = (
            f"<code>next %%mirai → {dropdown.value}/{prof.model}, "
            f"T={'–' if temperature is None else f'{temperature:.2f}'}, "
            f"max_tokens={tokens.value}</code>"
        )

    def on_profile(change: Any) -> None:
        load_profile(change["new"])
        apply()

    load_profile(dropdown.value)
    apply()
    dropdown.observe(on_profile, names="value")
    slider.observe(apply, names="value")
    tokens.observe(apply, names="value")
    box = w.VBox([dropdown, slider, tokens, summary], layout=w.Layout(max_width="420px"))
    box.add_class("mirai-picker")
    return box
