"""What a `%%mirai` cell uses when it names no profile: set by `%mirai use`, the picker and
`%config MiraiMagics.default_profile`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CellDefaults:
    """The default profile and its overrides: UI state, kept by the magics, not the session.

    ``profile`` stays empty until `%mirai use`, the picker or `%config
    MiraiMagics.default_profile` sets it; until then the config's ``ui.default_profile``
    applies (read on each cell, so `%mirai reload` changes it). The picker puts only the
    fields the user changed into ``overrides``.
    """

    profile: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def use(self, profile: str, overrides: dict[str, Any] | None = None) -> None:
        """Switch in place: the magics and a displayed picker share this one object."""
        self.profile, self.overrides = profile, dict(overrides or {})

    def profile_in(self, config: Any) -> str:
        """The profile a cell without one gets: the chosen one, else ``ui.default_profile``."""
        return self.profile or config.ui.default_profile

    def overrides_for(self, profile: str) -> dict[str, Any]:
        """A copy of the overrides when ``profile`` is the default one (they were picked for it)."""
        return dict(self.overrides) if profile == self.profile else {}
