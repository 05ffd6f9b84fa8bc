"""Canaries: which sessions send a profile's calls to its canary model version, and rollback.

A profile may declare ``canary: {name: gpt-4o-2024-11-20, percent: 5}``. Whether a session
is in the canary is sticky and deterministic: SHA-256 of ``"{session id}:{profile}"`` maps
to a number in [0, 100), and the session is assigned when it is below ``percent`` (raising
the percent only adds sessions). The session id is ``MIRAI_SESSION_ID`` when set (set it for
replayed notebooks and nbval), else the notebook's identity when the kernel knows it
(``JPY_SESSION_NAME``, VS Code's ``__vsc_ipynb_file__``), else random per Session.
``MIRAI_CANARY=off`` sends nobody, ``force`` everybody.

Rollback: :class:`Canaries` watches the calls of every canary and stable model version.
Once the canary has ``min_calls`` calls in its last ``window_calls``, it is suspended for the
session when its error rate exceeds the stable's by ``max_error_rate_delta`` or its p95
latency is ``max_p95_factor`` × the stable's; later calls go to the stable model and say
why. The stable's numbers are this session's calls to the stable model id (any profile:
``creative`` also runs gpt-4o, while a session in the canary sends ``heavy`` nowhere else).
While those are fewer than ``min_calls`` the canary's error rate is compared with 0 (so
above 5% suspends it) and latency is not judged. A call that left the canary for a fallback
profile counts as a failed canary call; calls pinned with ``--model`` are neither sent to a
canary nor counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..quantiles import percentile
from ..schema import Canary, Profile
from .degrade import NOT_SENT
from .observers import Messages, Observer
from .records import CallRecord

log = logging.getLogger("mirai_magics")
MODES = ("auto", "off", "force")  # MIRAI_CANARY; auto (unset): by the session's hash
Hop = tuple[str, str]  # (profile, model) one call was sent to


def session_identity(
    env: Mapping[str, str] | None = None, namespace: Mapping[str, Any] | None = None
) -> str:
    """MIRAI_SESSION_ID, else the notebook's identity, else a new random id."""
    env = os.environ if env is None else env
    namespace = notebook_namespace() if namespace is None else namespace
    for value in (
        env.get("MIRAI_SESSION_ID"),
        env.get("JPY_SESSION_NAME"),
        namespace.get("__vsc_ipynb_file__"),
    ):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return uuid.uuid4().hex


def notebook_namespace() -> Mapping[str, Any]:
    """The running IPython shell's user namespace (empty outside IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "user_ns", None) or {}


def bucket(session_id: str, profile: str) -> float:
    """Where (session, profile) falls in [0, 100): SHA-256 of ``"{session_id}:{profile}"``."""
    digest = hashlib.sha256(f"{session_id}:{profile}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def assigned(session_id: str, profile: str, percent: float) -> bool:
    """Whether this session sends ``profile``'s calls to its canary (sticky, deterministic)."""
    return bucket(session_id, profile) < percent


def canary_mode(value: str | None) -> str:
    """``MIRAI_CANARY`` → auto (unset), off or force; anything else is an error."""
    mode = (value or "auto").strip().lower()
    if mode not in MODES:
        raise ConfigError(
            f"MIRAI_CANARY={value!r} is not a canary mode", hint="use off or force, or unset it"
        )
    return mode


class Window:
    """The last ``size`` calls of one model version: (answered, latency in ms)."""

    def __init__(self, size: int):
        self.calls: deque[tuple[bool, float]] = deque(maxlen=size)

    def add(self, ok: bool, latency_ms: float) -> None:
        self.calls.append((ok, latency_ms))

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def error_rate(self) -> float:
        return sum(not ok for ok, _ in self.calls) / len(self.calls) if self.calls else 0.0

    @property
    def p95_ms(self) -> float | None:
        return percentile([ms for ok, ms in self.calls if ok], 95)


def verdict(canary: Window, stable: Window, settings: Canary) -> str | None:
    """Why the canary must be rolled back (``error rate +12 points``), or None (pure)."""
    if len(canary) < settings.min_calls:
        return None
    judged = len(stable) >= settings.min_calls
    delta = canary.error_rate - (stable.error_rate if judged else 0.0)
    if delta > settings.max_error_rate_delta:
        return f"error rate +{delta * 100:.0f} points"
    fast, slow = stable.p95_ms, canary.p95_ms
    if judged and fast and slow and slow >= settings.max_p95_factor * fast:
        return f"p95 latency {slow / fast:.1f}× the stable's"
    return None


class Canaries(Observer):
    """A session's canaries: the model each call is sent to, and the rollback watch."""

    def __init__(self, models: Mapping[str, Profile], session_id: str, mode: str | None = None):
        self.session_id = session_id
        self.suspended: dict[Hop, str] = {}  # (profile, canary model) → why
        self.windows: dict[str, Window] = {}  # model → its recent calls in this session
        self._hops: dict[str, list[Hop]] = {}  # call id → hops sent, until the call ends
        self.configure(models, mode)

    def configure(self, models: Mapping[str, Profile], mode: str | None = None) -> None:
        """Take the (re)loaded profiles and MIRAI_CANARY; suspensions and windows stay."""
        self.models = dict(models)
        self.mode = canary_mode(os.environ.get("MIRAI_CANARY") if mode is None else mode)
        self.sizes: dict[str, int] = {}  # the models watched: canaries and their stables
        for prof in self.models.values():
            if prof.canary is not None:
                for model in (prof.canary.name, prof.name):
                    self.sizes.setdefault(model, prof.canary.window_calls)

    def is_assigned(self, profile: str) -> bool:
        """This session is in ``profile``'s canary (MIRAI_CANARY may force it either way)."""
        canary = self.models[profile].canary if profile in self.models else None
        if canary is None or self.mode == "off":
            return False
        return self.mode == "force" or assigned(self.session_id, profile, canary.percent)

    def apply(
        self, profile: str, prof: Profile, params: dict[str, Any], record: CallRecord
    ) -> dict[str, Any]:
        """``params`` with the canary's model when this session is assigned and it is not
        suspended; notes the model version on the record."""
        model, canary = params["model"], prof.canary
        if canary is not None and self.is_assigned(profile):
            why = self.suspended.get((profile, canary.name))
            if why is None:
                model = record.canary = canary.name
            else:
                record.canary_suspended = why
        if model in self.sizes:
            self._hops.setdefault(record.id, []).append((profile, model))
        return params if model == params["model"] else {**params, "model": model}

    def on_call(self, record: CallRecord, messages: Messages | None, text: str | None) -> None:
        hops = self._hops.pop(record.id, [])
        if record.replayed:
            return  # a recording says nothing about the model's health now
        if hops and record.error_code in NOT_SENT:
            hops = hops[:-1]  # the last hop was never sent; the ones before it failed
        for hop in hops:
            answered = record.ok and hop == (record.profile, record.model)
            self._count(hop, answered, record.latency_ms)

    def _count(self, hop: Hop, answered: bool, latency_ms: float) -> None:
        profile, model = hop
        if model not in self.sizes:
            return  # watched before a reload, not any more
        window = self.windows.setdefault(model, Window(self.sizes[model]))
        window.add(answered, latency_ms)
        prof = self.models.get(profile)
        if prof is None or prof.canary is None or prof.canary.name != model:
            return
        if hop not in self.suspended:
            why = verdict(window, self.windows.get(prof.name, Window(1)), prof.canary)
            if why is not None:
                self.suspended[hop] = why
                log.warning("mirai: canary %s of %s suspended: %s", model, profile, why)

    def status_rows(self) -> list[tuple[str, str]]:
        """``canary heavy  gpt-4o-2024-11-20 · 5% · this session: assigned [· suspended: …]``."""
        rows = []
        for profile, prof in self.models.items():
            if prof.canary is None:
                continue
            state = "assigned" if self.is_assigned(profile) else "not assigned"
            if self.mode != "auto":
                state += f" (MIRAI_CANARY={self.mode})"
            parts = [prof.canary.name, f"{prof.canary.percent:g}%", f"this session: {state}"]
            why = self.suspended.get((profile, prof.canary.name))
            if why is not None:
                parts.append(f"suspended: {why}")
            rows.append((f"canary {profile}", " · ".join(parts)))
        return rows
