"""API key ages: when this machine first saw each key, kept by a short hash, never the key.

``keys.json`` in the memory dir (``home_dir(config)``) maps a key id, the first 12 hex
characters of the key's SHA-256, to the wall-clock time the key was first used here. The
file holds nothing that could be used as the key or turned back into it. With
``security.rotate_keys``, a key older than ``rotation_interval_days`` gets a
`%mirai status` row and one badge flag per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Security
from ..memory.home import make_home

KEY_FILE = "keys.json"
ID_CHARS = 12
DAY_S = 86_400.0
KEY_ROTATED = "key_rotated"  # retry reason of a call re-sent with a key rotated after a 401


def key_id(key: str) -> str:
    """The key's short id: the first 12 hex characters of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:ID_CHARS]


def age_warning(age_days: float, interval_days: float) -> str:
    """``key 97 days old: rotate it (security.rotation_interval_days = 90)``."""
    return (
        f"key {age_days:.0f} days old: rotate it "
        f"(security.rotation_interval_days = {interval_days:g})"
    )


class KeyAges:
    """First sightings of keys (``keys.json``) and the age of the key in use.

    ``now`` is wall time (ages outlive the process); ``flagged`` hands over, on reload, the
    ids whose age was already flagged on a badge.
    """

    def __init__(
        self,
        path: Path,
        security: Security,
        *,
        now: Callable[[], float] = time.time,
        flagged: set[str] | None = None,
    ):
        self.path, self.security, self.now = path, security, now
        self.flagged: set[str] = flagged if flagged is not None else set()
        self.current: str | None = None  # id of the key in use
        self.error: str | None = None  # why keys.json could not be read or written
        self._seen: dict[str, float] | None = None

    def note(self, key: str | None) -> None:
        """The key in use is ``key`` (None: no key); its first sighting is saved once."""
        self.current = key_id(key) if key else None
        if self.current is not None and self.current not in self._first_seen():
            self._seen = {**self._read(), self.current: self.now()}  # merge other kernels'
            self._write()

    def age_days(self) -> float | None:
        """Days since the key in use was first seen, or None without a key."""
        if self.current is None:
            return None
        return max(self.now() - self._first_seen()[self.current], 0.0) / DAY_S

    def warning(self) -> str | None:
        """The rotation warning when the key in use is older than the interval."""
        age, interval = self.age_days(), self.security.rotation_interval_days
        if not self.security.rotate_keys or age is None or age <= interval:
            return None
        return age_warning(age, interval)

    def badge_flags(self) -> list[str]:
        """The rotation warning, the first time it applies to a key in this session."""
        warning = self.warning()
        if warning is None or self.current in self.flagged:
            return []
        self.flagged.add(self.current)  # type: ignore[arg-type]  # warning implies a key
        return [warning]

    def status_rows(self) -> list[tuple[str, str]]:
        """One `%mirai status` row about the key in use (plus one if keys.json failed)."""
        name, age = self.security.api_key_env_var, self.age_days()
        if age is None:
            value = f"{name} not set"
        else:
            rotation = self.warning() or (
                f"rotate every {self.security.rotation_interval_days:g} days"
                if self.security.rotate_keys
                else "rotation reminders off (security.rotate_keys)"
            )
            value = f"{name} · id {self.current} · {age:.0f} days old · {rotation}"
        rows = [("api key", value)]
        if self.error:
            rows.append(("notice", f"key ages: {self.error}"))
        return rows

    # --- keys.json ------------------------------------------------------------------------

    def _first_seen(self) -> dict[str, float]:
        if self._seen is None:
            self._seen = self._read()
        return self._seen

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self.error = f"{self.path} unreadable ({type(exc).__name__}); ages restart now"
            return {}
        seen = data.get("first_seen") if isinstance(data, dict) else None
        if not isinstance(seen, dict):
            return {}
        return {k: float(v) for k, v in seen.items() if isinstance(v, int | float)}

    def _write(self) -> None:
        data = {"version": 1, "id": f"sha256[:{ID_CHARS}]", "first_seen": self._seen}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            make_home(self.path.parent)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self.error = f"{self.path} not saved ({exc.strerror or type(exc).__name__})"
