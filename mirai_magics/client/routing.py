"""Smart switching: ``auto`` picks main, heavy or fast for a cell, by local rules or the fast model.

The local classifier is a table of weighted signals (``routing_signals``), compiled once, in
English and Russian (stems, so inflected forms match): each signal that matches adds its
weight to its profile, programming and data vocabulary adds to heavy (more with a request to
do something), each of a profile's ``use_cases`` whose words all appear adds a point a word, and
``main`` starts with one point (a simple question). The highest score wins (ties: main,
heavy, fast); a request with code or analysis in it is never sent to fast. ``routing.rules``
patterns are tried first, in the order written, and decide outright (any chat profile).

With ``routing.classifier: fast`` one short JSON call to the fast profile decides instead,
cached by SHA-256 of the prompt. Any error, invalid answer or timeout falls back to the local
rules, and the fast classifier then rests for ``REST_S`` so that a failing model costs one
timeout, not one per cell. Its answer must name a profile and one of the known reasons (so
metric labels stay a closed set), and it cannot send code or analysis to fast either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError, MiraiError
from ..text import clip
from .records import Route
from .routing_signals import Signal, builtin_signals, domain, without_samples

AUTO = "auto"
ROUTER_TAG = "[mirai router]"  # first words of the fast classifier's system prompt
ORDER = ("main", "heavy", "fast")  # the routable profiles, and who wins a tie
BASE = 1.0  # main's head start: a prompt with no signal is a simple question
USE_CASE_WEIGHT = 1.0  # per word of a use case named in full ("анализ данных": two)
SCANNED_CHARS = 4000  # the head of a prompt the rules read (length is judged on all of it)
LONG_PROMPT_CHARS = 1500
ROUTER_PROMPT_CHARS = 2000  # of the prompt sent to the fast classifier
ROUTER_MAX_TOKENS = 40
REST_S = 60.0
CACHE_SIZE = 1000
_RU_ENDINGS = "аяыиоеуюьй"
_STOP_STEMS = ("прост", "базов", "быстр", "simpl", "basic", "quick", "fast", "multi", "для")


def use_case_signals(profile: str, use_cases: Sequence[str]) -> list[Signal]:
    """A signal per use case that needs its every word (stemmed: Russian inflects), e.g.
    "анализ данных" for "анализ этих данных", "code generation" for "generate the code"."""
    out = []
    for case in use_cases:
        words = [w for w in re.findall(r"\w+", case.casefold()) if not w.startswith(_STOP_STEMS)]
        if words:
            every = r"\A" + "".join(f"(?=.*{_stem(w)})" for w in words)  # \A: tried once
            weight = USE_CASE_WEIGHT * len(words)
            out.append(Signal(profile, case, weight, re.compile(every, re.S)))
    return out


def _stem(word: str) -> str:
    """A word as a pattern that tolerates inflection: short Latin words exactly (or plural),
    short Russian ones without their ending ("ряды" → ряд…), longer ones by their first ~70%."""
    if word.isascii() and len(word) <= 4:
        return rf"\b{re.escape(word)}s?\b"
    if not word.isascii():
        word = word[:-1] if len(word) > 3 and word[-1] in _RU_ENDINGS else word
        if len(word) <= 5:
            return rf"\b{re.escape(word)}"
    return rf"\b{re.escape(word[: max(4, math.ceil(len(word) * 0.7))])}"


@dataclass(frozen=True)
class Decision:
    """The local classifier's answer: the route, and whether code or analysis was seen."""

    route: Route
    technical: bool


class LocalClassifier:
    """Deterministic, no network, microseconds: config rules, then weighted signals."""

    def __init__(self, signals: Sequence[Signal], rules: Sequence[Signal] = (), profiles=ORDER):
        self.profiles = tuple(profiles)
        self.signals = tuple(s for s in signals if s.profile in self.profiles)
        self.rules = tuple(rules)

    @classmethod
    def from_config(cls, config: Any) -> LocalClassifier:
        """The built-ins, the routable profiles' use_cases and ``routing.rules``."""
        profiles = routable_profiles(config)
        cases = [s for p in profiles for s in use_case_signals(p, config.profile(p).use_cases)]
        return cls([*builtin_signals(), *cases], config_rules(config), profiles)

    @classmethod
    def builtin(cls) -> LocalClassifier:
        return cls(builtin_signals())

    def decide(self, text: str) -> Decision:
        folded = text[:SCANNED_CHARS].casefold()
        asked = without_samples(folded)
        for rule in self.rules:
            if rule.pattern.search(folded):
                return Decision(Route(rule.profile, rule.reason), rule.blocks_fast)
        scores = dict.fromkeys(self.profiles, 0.0)
        best: dict[str, tuple[float, str]] = {"main": (BASE, "simple question")}
        scores["main"] = BASE
        technical = False
        for s in self.signals:
            if s.pattern.search(folded if s.reads_samples else asked):
                scores[s.profile] += s.weight
                technical = technical or s.blocks_fast
                if s.weight > best.get(s.profile, (0.0, ""))[0]:
                    best[s.profile] = (s.weight, s.reason)
        if "heavy" in scores and (vocabulary := domain(asked)) is not None:
            scores["heavy"] += vocabulary.weight
            technical = technical or vocabulary.technical
            best.setdefault("heavy", (0.0, vocabulary.reason))  # a specific signal says more
        if len(text) > LONG_PROMPT_CHARS and "heavy" in scores:
            scores["heavy"] += 1.5
            best.setdefault("heavy", (0.0, "long context"))
        allowed = [p for p in self.profiles if not (technical and p == "fast")]
        winner = max(allowed, key=lambda p: (scores[p], -self.profiles.index(p)))
        reason = best[winner][1] if winner in best else "simple question"
        return Decision(Route(winner, reason), technical)

    def classify(self, text: str) -> Route:
        return self.decide(text).route

    def reasons(self) -> dict[str, list[str]]:
        """The reasons each profile is chosen for: signals and use cases (rules aside)."""
        out: dict[str, list[str]] = {p: [] for p in self.profiles}
        out["main"].append("simple question")
        for s in self.signals:
            if s.reason not in out[s.profile]:
                out[s.profile].append(s.reason)
        if "heavy" in out:
            out["heavy"].append("long context")
        return out


def routable_profiles(config: Any) -> tuple[str, ...]:
    """The profiles ``auto`` chooses among: ``routing.target``'s, main first (ConfigError for
    a name that is not a chat profile)."""
    chat = config.chat_profiles()
    for name in config.routing.target:
        if name not in chat:
            raise ConfigError(
                f"routing.target: unknown profile {name!r}", hint=f"use some of: {', '.join(chat)}"
            )
    names = ["main", *(n for n in config.routing.target if n != "main")]
    return tuple(sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)))


def config_rules(config: Any) -> list[Signal]:
    """``routing.rules`` as signals that decide outright; ConfigError names a bad entry."""
    chat, out = config.chat_profiles(), []
    for profile, patterns in config.routing.rules.items():
        if profile not in chat:
            raise ConfigError(
                f"routing.rules: unknown profile {profile!r}", hint=f"use one of: {', '.join(chat)}"
            )
        for i, pattern in enumerate(patterns):
            try:
                compiled = re.compile(pattern, re.I | re.M)
            except re.error as exc:
                raise ConfigError(
                    f"routing.rules.{profile}[{i}]: {pattern!r} is not a regular expression ({exc})"
                ) from None
            out.append(Signal(profile, f"rule: {clip(pattern, 30)}", 0, compiled))
    return out


# --- the router ------------------------------------------------------------------------------

Chat = Callable[..., Awaitable[Any]]  # ResilientClient.chat


class Router:
    """Resolves ``auto`` for one client: the local classifier, or the fast profile's verdict."""

    def __init__(self, config: Any, clock: Callable[[], float]):
        self.settings = config.routing
        self.local = LocalClassifier.from_config(config)
        self.fast = "fast" if "fast" in config.chat_profiles() else None
        self.reasons = self.local.reasons()
        self.instructions = router_instructions(self.reasons)
        self.clock = clock
        self.cache: OrderedDict[str, Route] = OrderedDict()
        self.resting_until = float("-inf")

    async def route(self, text: str, chat: Chat) -> Route:
        """The profile for ``text``; never raises (a failing fast classifier → local rules)."""
        if self.settings.classifier != "fast" or self.fast is None:
            return self.local.classify(text)
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self.cache:
            self.cache.move_to_end(key)
            return replace(self.cache[key], classifier="fast (cached)", tokens_in=0, tokens_out=0)
        if self.clock() < self.resting_until:
            return replace(self.local.classify(text), classifier="local (fast resting)")
        try:
            route = await self._ask(text, chat)
        except Exception as exc:  # any failure of the classifier call: the local rules decide
            self.resting_until = self.clock() + REST_S
            failed = f"local (fast failed: {_why(exc)})"
            return replace(self.local.classify(text), classifier=failed)
        self.cache[key] = route
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return route

    async def _ask(self, text: str, chat: Chat) -> Route:
        messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": text[:ROUTER_PROMPT_CHARS]},
        ]
        call = chat(
            messages,
            self.fast,
            max_tokens=ROUTER_MAX_TOKENS,
            temperature=0,
            response_format={"type": "json_object"},
        )
        reply = await bounded(call, self.settings.classifier_timeout_s)
        profile, reason = parse_verdict(reply.text, self.reasons)
        decision = self.local.decide(text)
        if profile == "fast" and decision.technical:  # code or analysis: never fast
            profile, reason = decision.route.profile, decision.route.reason
        record = reply.record
        return Route(profile, reason, "fast", record.tokens_in or 0, record.tokens_out or 0)


def router_instructions(reasons: dict[str, list[str]]) -> str:
    """The fast classifier's system prompt: each profile with the reasons to choose it."""
    lines = [
        f"{ROUTER_TAG} Route one request typed in a Jupyter notebook to a model profile.",
        "Profiles and the reasons to choose them:",
        *(f"{profile}: {', '.join(names)}" for profile, names in reasons.items()),
        "Never choose fast for a request that asks for code or an analysis.",
        'Reply with JSON only: {"profile": "<profile>", "reason": "<a reason from its line>"}',
    ]
    return "\n".join(lines)


def parse_verdict(text: str, reasons: dict[str, list[str]]) -> tuple[str, str]:
    """(profile, reason) from the classifier's JSON; ValueError unless the profile is one of
    ``reasons`` and the reason one of its own (so metric labels stay a closed set)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    profile, reason = data.get("profile"), str(data.get("reason", "")).strip().casefold()
    if not isinstance(profile, str) or profile not in reasons:
        raise ValueError(f"profile {clip(profile, 40)!r} is not one of {', '.join(reasons)}")
    known = next((r for r in reasons[profile] if r.casefold() == reason), None)
    if known is None:
        raise ValueError(f"reason {clip(reason, 40)!r} is not one of {profile}'s")
    return profile, known


async def bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    """``asyncio.wait_for``, except that the call is cancelled with a reason its record keeps
    (``no verdict within 2 s``: not "cancelled by the user"); a timeout raises TimeoutError."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # the cell itself was cancelled (Ctrl-C): so is the classifier
        task.cancel()
        raise
    if not done:
        task.cancel(f"no verdict within {timeout:g} s (routing.classifier_timeout_s)")
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError(f"the fast classifier gave no verdict within {timeout:g} s")
    return task.result()


def _why(exc: BaseException) -> str:
    """Why the fast classifier gave no verdict, in a word or two (shown on the badge)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ValueError):  # json.JSONDecodeError included
        return "invalid answer"
    if isinstance(exc, MiraiError):
        from .failures import fallback_reason

        return fallback_reason(exc) or exc.code
    return type(exc).__name__
