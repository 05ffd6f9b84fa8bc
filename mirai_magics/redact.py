"""Secret redaction: the one pass every text takes before it leaves the kernel or is stored.

``redact(text)`` replaces with ``[REDACTED]``, the cheapest check first:

* known values: those passed in (``secret_env_values()``: secret-named environment
  variables) and those the user interpolated from a secret-named reference (``remember``);
* PEM private-key blocks (header and footer stay);
* a URL's password: ``postgresql://admin:pw@host/db`` → ``postgresql://admin:[REDACTED]@host/db``;
* key shapes (``KEY_PATTERN``): OpenAI ``sk-``/``sk-proj-``, GitHub ``ghp_``/``gho_``/
  ``github_pat_``, Slack ``xox?-``, AWS ``AKIA``/``ASIA`` ids, Google ``AIza``, Stripe
  ``sk_live_``/``rk_live_``, JWTs, bearer tokens;
* values given to a secret-looking name (``security.redact_assignments``): string literals
  in code and JSON (``db_password = "…"``, ``connect(password="…")``, ``{"api_key": "…"}``),
  YAML (``password: …``), env files, shells and URLs (``PASSWORD=…``, ``?access_token=…``),
  and the 40-character secret after ``aws_secret_access_key``.

Names: a plain entry (``password``) matches a name that ends in it (``db_password``,
``dbPassword``, ``db-password``, ``PGPASSWORD``; of ``self.x.db_password`` the last part),
whatever its value. An entry with ``*`` (``*_key``) matches by glob and asks more of the value: key
material (8+ characters mixing letters and digits, or 16+ of mixed case; not a file name),
so ``sort_key = "created_at"`` and ``primary_key = "id"`` stay. A bare ``key`` is never a
secret name (``key = "name"``, dict loops). Not secrets: numbers and ``None``/``True``
(``max_tokens = 100``, ``password_min_length = 8``), ``$VAR`` references, a variable passed
on (``connect(password=pw)``), and hashes, UUIDs or base64 without a secret name or a key
shape; a URL without a password is left whole.

The names are process-wide: each Session built or reloaded calls ``configure``. The pass is
idempotent (``redact(redact(t)) == redact(t)``): the call log's request hash relies on it.
Cost: every rule waits behind a substring check or one scan for rare prefixes and stems, and
a name is looked at from its stem, not by trying every identifier (~15 µs per KB of
notebook text; ``benchmarks/bench_redaction.py``); names and values are bounded, so no text
makes it quadratic.
"""

from __future__ import annotations

import fnmatch
import os
import re
import string
import threading
from collections.abc import Iterable, Sequence

REDACTED = "[REDACTED]"
DEFAULT_SECRET_NAMES = ("KEY", "TOKEN", "SECRET", "PASSWORD")
DEFAULT_ASSIGNMENT_NAMES = (
    *("password", "passwd", "pwd", "passphrase", "secret", "token", "api_key"),
    *("*_key", "*_token", "*_secret"),
)
_MIN_SECRET_LEN = 6  # an environment value shorter than this is too likely to be a word
MIN_REMEMBERED_LEN = 4  # an interpolated secret value shorter than this is not remembered
MAX_REMEMBERED = 256
MAX_NAME = 128  # a longer name is not looked at; values, up to 1024 (4096 quoted)

KEY_PATTERN = re.compile(
    r"\b(?:sk|rk|pk)-(?!learn\b)[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys incl. sk-proj-…
    r"|\bBearer\s+(?:(?=[\w.~+/\-]*\d)[\w.~+/\-]{8,}|[\w.~+/\-]{20,})=*"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{20,})"  # GitHub
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bAIza[0-9A-Za-z_\-]{35}"  # Google
    r"|\b[rs]k_(?:live|test)_[0-9A-Za-z]{10,}"  # Stripe
    r"|\beyJ[\w\-]{8,1024}+\.eyJ[\w\-]{8,}+\.[\w\-]*+"  # JWT: header.payload.signature
)
# Every shape's prefix in one scan, by a rare letter of it (a scan on common first letters is
# 5 times slower), and how far before each hit a shape may start: sk- (1), github_pat_ (5)…
_PREFIXES = re.compile(r"k[-_]|Bearer|gh[pousr]_|b_pat_|xox|AKIA|ASIA|AIza|yJ")
_BACK = (1, 0, 5)
_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----[\s\S]*?"
    r"(?:-----END (?P=kind)-----|\Z)"
)
_URL_PASSWORD = re.compile(r"://(?P<user>[^\s:/?#@\[\]\"'<>]*):[^\s/?#\"'<>]+@")
_LITERAL = (  # a string literal: "…", '…', or \"…\" (inside JSON text); optional r/b/f prefix
    r"[rRbBuUfF]{0,2}(?:\"(?P<dq>(?:[^\"\\\n]|\\.){0,4096}+)\"|'(?P<sq>(?:[^'\\\n]|\\.){0,4096}+)'"
    r"|\\\"(?P<jq>(?:[^\"\\\n]|\\[^\"\n]){0,4096}+)\\\")"
)
_NAMED = re.compile(  # from the start of a name holding a stem: what it is given
    r"(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,127}+)(?P<kq>\\?[\"'])?\]?(?:"
    # name = "…", name: str = "…", "name": "…", x["name"] = "…", f(name="…"), name == "…"
    r"[ \t]*(?::[ \t]*[A-Za-z_][\w.\[\], |]{0,60}?[ \t]*)?(?:==|:=|=|:)[ \t]*"
    + _LITERAL
    # PASSWORD=hunter2, export db_token=…, ?access_token=…&, "host=h password=p", --pwd=…
    + r"|=(?!=)(?P<v>[^\s'\"`$(\[{<>,)][^\s'\"`;&|,)(\[<>]{0,1023}+)(?P<after>[,)(\[]?)"
    # password: hunter2 (YAML: one unquoted word on the rest of its line)
    r"|:[ \t]+(?P<y>[^\s'\"#\[{&*!|>%@`$]\S{0,1023}+)[ \t]*(?:#[^\n]*)?$"
    # aws_secret_access_key = wJalr… (its INI file: spaces, no quotes)
    r"|[ \t]+=[ \t]+(?P<aws>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=]))",
    re.MULTILINE,
)
_NAME_RUN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}+(?![A-Za-z0-9_.\-])")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_NAME_START = frozenset(string.ascii_letters + "_")
_LINE_LEAD = re.compile(r"[ \t]*(?:-[ \t]+)?")
_KEY_MATERIAL = re.compile(r"(?=\S*\d)(?=\S*[A-Za-z])\S{8,}|(?=\S*[a-z])(?=\S*[A-Z])[\w+/=\-]{16,}")
_FILE_NAME = re.compile(r"\S*\.[A-Za-z]{1,8}")
_NOT_SECRET = re.compile(  # numbers, constants, $VAR, placeholders: (not set), …, <token>,
    # and tokenizer special tokens ([PAD], [CLS], <|endoftext|>)
    r"-?\d{1,5}(?:\.\d+)?|None|True|False|null|true|false|~|\$\{?\w+\}?|\([^()]*\)|[.…*]+|<[^<>]*>"
    r"|\[[A-Z_]{1,16}\]"
)
_TYPE_NAME = re.compile(r"(?:str|bytes|int|float|bool|Any|object|Secret\w*|Optional|Union)\b|.*\[")
_EXPRESSION = re.compile(r"[\w.]+")  # before ( [ , ): a call, subscript or variable, not a value
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def normal_name(name: str) -> str:
    """``self.dbPassword`` → ``db_password``: the last dotted part, snake case, lower."""
    last = name.rsplit(".", 1)[-1]
    return _CAMEL.sub("_", last).lower().replace("-", "_")


class Rules:
    """The secret-name rules (``security.redact_assignments``), compiled once."""

    def __init__(
        self,
        patterns: Sequence[str] = DEFAULT_ASSIGNMENT_NAMES,
        env_names: Sequence[str] = DEFAULT_SECRET_NAMES,
    ):
        self.patterns, self.env_names = tuple(patterns), tuple(env_names)
        lowered = [p.lower() for p in self.patterns if p.strip()]
        words = [p for p in lowered if not any(c in p for c in "*?[")]
        globs = [p for p in lowered if p not in words]
        self._word = _alternation("(?:", map(re.escape, words), ")$")
        self._glob = _alternation("(?:", map(fnmatch.translate, globs), ")")
        # Every name a pattern matches holds the pattern's longest literal run (its stem);
        # a stem holding another is found through that one.
        runs = {max(re.findall(r"[a-z0-9]+", p)[::-1] or [""], key=len) for p in lowered}
        runs.add("access_key")  # aws_secret_access_key, whatever the names
        self.stems = tuple(sorted(r for r in runs if not any(o != r and o in r for o in runs)))
        self._stem_pattern = _alternation("", map(re.escape, self.stems), "", re.IGNORECASE)
        self._levels: dict[str, int] = {}

    def level(self, name: str) -> int:
        """2: a plain entry names it (any value); 1: a glob does (key material); 0: neither."""
        found = self._levels.get(name)
        if found is None:
            norm = normal_name(name)
            found = 2 if self._word and self._word.search(norm) else 0
            found = found or (1 if self._glob and self._glob.match(norm) else 0)
            found = 2 if norm.endswith("secret_access_key") else found
            if len(self._levels) > 4096:
                self._levels.clear()
            self._levels[name] = found
        return found

    def takes(self, name: str, value: str) -> bool:
        """True when ``value``, given to ``name``, is a secret."""
        level = self.level(name)
        if not level or not value.strip() or value == REDACTED or _NOT_SECRET.fullmatch(value):
            return False
        return level == 2 or is_key_material(value)

    def apply(self, text: str) -> str:
        """The structural part of the pass (everything but known values)."""
        if "PRIVATE KEY" in text:
            text = _PEM.sub(_pem_block, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(r"://\g<user>:" + REDACTED + "@", text)
        text = _spliced(text, _shape_spans(text))
        if "=" in text or ":" in text:
            text = _spliced(text, self._named_spans(text))
        return text

    def _named_spans(self, text: str) -> Iterable[tuple[int, int]]:
        """Values given to secret names, found from each stem (``password``, ``key``…) back
        to the start of its name: far cheaper than trying every identifier."""
        done, last = 0, -1
        for at in self._stem_hits(text):
            start = _name_start(text, at)
            if start < done or start == last:
                continue
            last = start
            name = _NAME_RUN.match(text, start)
            if name is None or not self.level(name.group()):
                continue  # max_tokens, key=…: the common case, one cheap match
            match = _NAMED.match(text, start)
            group = self._secret_group(match, text) if match else None
            if match and group:
                yield match.span(group)
                done = match.end(group)

    def _stem_hits(self, text: str) -> list[int]:
        """Where a stem starts, in order (case does not matter)."""
        low = text.lower()
        if len(low) != len(text):  # İ (U+0130), the one letter whose lower case is longer
            low = text.replace("\u0130", "I").lower()
        if len(low) != len(text):  # another Python's Unicode tables: the slow way
            return [m.start() for m in self._stem_pattern.finditer(text)]  # type: ignore[union-attr]
        hits = []
        for stem in self.stems:
            at = low.find(stem)
            while at >= 0:
                hits.append(at)
                at = low.find(stem, at + len(stem))
        return sorted(hits)

    def _secret_group(self, match: re.Match[str], text: str) -> str | None:
        """The group of ``match`` holding a secret value, or None."""
        name = match.group("name")
        for group in ("dq", "sq", "jq"):
            if match.group(group) is not None:
                return group if self.takes(name, match.group(group)) else None
        if match.group("kq"):
            return None
        if match.group("v") is not None:
            value = match.group("v")
            passed_on = match.group("after") and _EXPRESSION.fullmatch(value)  # f(password=pw)
            return None if passed_on or not self.takes(name, value) else "v"
        if match.group("aws") is not None:
            return "aws" if self.takes(name, match.group("aws")) else None
        value, start = match.group("y"), match.start()
        lead = text[text.rfind("\n", 0, start) + 1 : start]
        if not _LINE_LEAD.fullmatch(lead) or _TYPE_NAME.match(value):  # `password: str`
            return None
        return "y" if self.takes(name, value) else None


def _shape_spans(text: str) -> Iterable[tuple[int, int]]:
    """Where key shapes are: their prefixes found in one scan, each shape matched there."""
    done = 0
    for hit in _PREFIXES.finditer(text):
        for start in (hit.start() - back for back in _BACK):
            match = KEY_PATTERN.match(text, start) if start >= done else None
            if match:
                yield match.span()
                done = match.end()
                break


def _spliced(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each of ``spans`` (in order, apart) replaced by ``[REDACTED]``."""
    pieces, done = [], 0
    for start, end in spans:
        pieces += (text[done:start], REDACTED)
        done = end
    return "".join((*pieces, text[done:])) if pieces else text


def _name_start(text: str, at: int) -> int:
    """Where the name holding ``text[at]`` begins (its first letter or underscore; at most
    MAX_NAME characters back, so a hostile run of stems stays linear)."""
    start, stop = at, max(at - MAX_NAME, 0)
    while start > stop and text[start - 1] in _NAME_CHARS:
        start -= 1
    while start < at and text[start] not in _NAME_START:
        start += 1
    return start


def _alternation(
    head: str, parts: Iterable[str], tail: str, flags: int = 0
) -> re.Pattern[str] | None:
    parts = list(parts)
    return re.compile(head + "|".join(parts) + tail, flags) if parts else None


def _pem_block(match: re.Match[str]) -> str:
    kind, block = match.group("kind"), match.group(0)
    newline = "\n" if "\n" in block or "\\n" not in block else "\\n"  # JSON text keeps \\n
    return f"-----BEGIN {kind}-----{newline}{REDACTED}{newline}-----END {kind}-----"


def is_key_material(value: str) -> bool:
    """Shaped like a key: 8+ characters mixing letters and digits (or 16+ of mixed case),
    no spaces, not a file name (``data/2024/q1.csv``)."""
    return bool(_KEY_MATERIAL.fullmatch(value)) and not _FILE_NAME.fullmatch(value)


_rules = Rules()
_remembered: dict[str, None] = {}  # oldest first
_remembered_longest_first: tuple[str, ...] = ()
_lock = threading.Lock()


def configure(
    assignments: Sequence[str] = DEFAULT_ASSIGNMENT_NAMES,
    env_names: Sequence[str] = DEFAULT_SECRET_NAMES,
) -> None:
    """Use these secret names from now on, in this process (``security.redact_assignments``
    and ``security.redact_env_names``)."""
    global _rules
    if (tuple(assignments), tuple(env_names)) != (_rules.patterns, _rules.env_names):
        _rules = Rules(assignments, env_names)


def is_secret_reference(ref: str, value: str) -> bool:
    """True when an interpolated ``{ref}`` names a secret: ``{db_password}``,
    ``{creds['token']}``, ``{cfg.api_key}`` (the value as with assignments)."""
    return any(_rules.takes(name, value) for name in re.findall(r"[A-Za-z_]\w*", ref))


def remember(values: Iterable[str]) -> None:
    """Redact these values from now on wherever text is stored or leaves the kernel (the
    secrets a user interpolated on purpose: sent once as asked, never stored)."""
    global _remembered_longest_first
    fresh = [
        v
        for v in values
        if isinstance(v, str) and len(v) >= MIN_REMEMBERED_LEN and v not in REDACTED
    ]
    if not fresh:
        return
    with _lock:
        for value in fresh:
            _remembered.pop(value, None)
            _remembered[value] = None
        while len(_remembered) > MAX_REMEMBERED:
            del _remembered[next(iter(_remembered))]
        _remembered_longest_first = tuple(sorted(_remembered, key=len, reverse=True))


def remember_interpolated(references: Iterable[tuple[str, str]]) -> None:
    """``remember`` the values of the secret-named ones among ``(reference, value)`` pairs."""
    remember(value for ref, value in references if is_secret_reference(ref, value))


def looks_like_key(value: str) -> bool:
    """True when ``value`` contains something shaped like an API key, token or private key."""
    return bool(KEY_PATTERN.search(value)) or ("PRIVATE KEY" in value and bool(_PEM.search(value)))


def secret_env_values(names: tuple[str, ...] | None = DEFAULT_SECRET_NAMES) -> list[str]:
    """Values of environment variables whose name contains KEY, TOKEN, SECRET… (None: the
    configured ``redact_env_names``), longest first.

    Scanning os.environ costs ~0.2 ms, so the result is cached until a variable is added
    or removed, or the value of a secret-named variable changes (a rotated key).
    """
    names = _rules.env_names if names is None else names
    cached = _cache.get(names)
    if cached is not None:
        size, secret_names, values = cached
        if size == len(os.environ) and all(os.environ.get(n) == v for n, v in secret_names):
            return values
    pairs = [
        (name, value)
        for name, value in os.environ.items()
        if any(part in name.upper() for part in names)
    ]
    values = [v for _, v in pairs if len(v) >= _MIN_SECRET_LEN and v not in REDACTED]
    values = sorted(set(values), key=len, reverse=True)
    _cache[names] = (len(os.environ), pairs, values)
    return values


_cache: dict[tuple[str, ...], tuple[int, list[tuple[str, str]], list[str]]] = {}


def redact(text: str, extra: Sequence[str] = ()) -> str:
    """``text`` with every secret replaced by ``[REDACTED]`` (see the module docstring);
    ``extra``: known secret values, e.g. ``secret_env_values()``."""
    if not text:
        return text
    for secret in (*extra, *_remembered_longest_first):
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return _rules.apply(text)


def redact_all(text: str, names: tuple[str, ...] | None = None) -> str:
    """``redact`` with the current values of secret-named environment variables (None: the
    configured ``redact_env_names``)."""
    return redact(text, secret_env_values(names))
