"""Secret redaction: the one pass every text takes before it leaves the kernel or is stored.

``redact(text)`` replaces with ``[REDACTED]``, the cheapest check first:

* known values: those passed in (``secret_env_values()``: secret-named environment
  variables) and those the user interpolated from a secret-named reference (``remember``);
* what needs no name (``redact_rules``): PEM private-key blocks, a URL's password, key shapes
  (``sk-``, ``ghp_``, ``hf_``, ``gsk_``, ``AKIA…``, Slack webhooks, JWTs…: ``redact_rules``),
  ``Authorization: Basic [REDACTED]`` and ``curl -u user:pw`` (in that curl command only);
* values given to a secret-looking name (``security.redact_assignments``): string literals
  in code and JSON (``db_password = "…"``, ``'''…'''``, ``connect(password="…")``,
  ``{"api_key": "…"}``; not a label's next string: ``st.text_input("Password:", type=…)``),
  YAML (``password: …``), env files, shells and URLs (``PASSWORD=…``, ``?access_token=…``;
  in JSON text a value ends at a backslash, an escape), INI lines (``password = …``: the
  rest of the line, less a `` ; ``/`` #`` comment; not Python: ``getpass.getpass()``, ``pw
  if pw else None``, ``await f()``, a bare name without digits such as ``pw`` unless under a
  ``[section]``) and headers in a quoted string (``"X-Api-Key: …"``, ``-H '…'``; not
  ``{api_key}``, ``%s``, nor one word of a message: ``"password: required"``).

Names: a plain entry (``password``) matches a name that ends in it (``db_password``,
``dbPassword``, ``db-password``, ``PGPASSWORD``, ``X-Api-Key``; of ``self.x.db_password`` the
last part), whatever its value; but a name ending in ``token`` does not take a short word
(letters only, under 8: ``token = 'the'``, ``token = "Hello"`` in NLP code; ``"a8f3k2"`` still
counts). An entry with ``*`` (``*_key``) matches by glob and asks more of the value: key
material (8+ characters mixing letters and digits, or 16+ of mixed case; not a file name nor
an identifier of lowercase words and numbers: ``cache_key = "user_profile_v2"`` stays), so an
Azure-style 32-hex key is redacted as ``AZURE_OPENAI_KEY = "…"`` but a bare MD5 is not. A bare
``key`` is never a secret name (``key = "name"``, dict loops). Not secrets: numbers and
``None``/``True`` (``max_tokens = 100``, ``password_min_length = 8``), ``$VAR`` references, a
variable passed on (``connect(password=pw)``), and hashes, UUIDs or base64 without a secret
name or a key shape; a URL without a password is left whole.

The names are process-wide: each Session built or reloaded calls ``configure``. The pass is
idempotent (``redact(redact(t)) == redact(t)``): the call log's request hash relies on it.
Cost: every rule waits behind a substring check or one scan for rare prefixes and stems, and
a name is looked at from its stem, not by trying every identifier (~19 µs per KB of
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

from .redact_rules import KEY_PATTERN as KEY_PATTERN  # re-exported, as before the split
from .redact_rules import (
    REDACTED,
    Lines,
    atomic,
    first_on_line,
    is_code,
    is_key_material,
    is_label,
    is_placeholder,
    is_word,
    reads_as_python,
    spliced,
    without_names,
)
from .redact_rules import looks_like_key as looks_like_key  # config_secrets uses it

DEFAULT_SECRET_NAMES = ("KEY", "TOKEN", "SECRET", "PASSWORD")
DEFAULT_ASSIGNMENT_NAMES = (
    *("password", "passwd", "pwd", "passphrase", "secret", "token", "api_key"),
    *("*_key", "*_token", "*_secret"),
)
_WORD_TOLERANT = frozenset({"token"})  # entries whose names do not take a short word
ANY, NOT_A_WORD, KEY_LIKE = 3, 2, 1  # what a name's value must be to count (0: not a secret)
_MIN_SECRET_LEN = 6  # an environment value shorter than this is too likely to be a word
MIN_REMEMBERED_LEN = 4  # an interpolated secret value shorter than this is not remembered
MAX_REMEMBERED = 256
MAX_NAME = 128  # a longer name is not looked at; values, up to 1024 (4096 quoted)

_LITERAL = (  # a string literal: """…""", '''…''', "…", '…', or \"…\" (inside JSON text);
    # optional r/b/f prefix
    r"[rRbBuUfF]{0,2}(?:"
    r'"""(?P<tdq>' + atomic(r'(?:[^"\\]|\\[\s\S]|"(?!"")){0,4096}') + r')"""'
    r"|'''(?P<tsq>" + atomic(r"(?:[^'\\]|\\[\s\S]|'(?!'')){0,4096}") + r")'''"
    r"|\"(?P<dq>" + atomic(r"(?:[^\"\\\n]|\\.){0,4096}") + r")\""
    r"|'(?P<sq>" + atomic(r"(?:[^'\\\n]|\\.){0,4096}") + r")'"
    r"|\\\"(?P<jq>" + atomic(r"(?:[^\"\\\n]|\\[^\"\n]){0,4096}") + r")\\\")"
)
_QUOTED = ("tdq", "tsq", "dq", "sq", "jq")
_NAME_GROUP = r"(?P<name>[A-Za-z_]" + atomic(r"[A-Za-z0-9_.\-]{0,127}") + ")"
_NAMED = re.compile(  # from the start of a name holding a stem: what it is given
    _NAME_GROUP + r"(?P<kq>\\?[\"'])?\]?(?:"
    # name = "…", name: str = "…", "name": "…", x["name"] = "…", f(name="…"), name == "…"
    r"[ \t]*(?::[ \t]*[A-Za-z_][\w.\[\], |]{0,60}?[ \t]*)?(?:==|:=|=|:)[ \t]*"
    + _LITERAL
    # PASSWORD=hunter2, export db_token=…, ?access_token=…&, "host=h password=p", --pwd=…
    # (not a backslash: in JSON text it starts an escape, \" or \n, that must stay whole)
    + r"|=(?!=)(?P<v>[^\s'\"`$(\[{<>,)\\]"
    + atomic(r"[^\s'\"`;&|,)(\[<>\\]{0,1023}")
    + r")(?P<after>[,)(\[]?)"
    # "X-Api-Key: …" (a header in a quoted string: -H '…', JSON text \"…\r\n\"; not {key}, %s)
    r"|:[ \t]+(?P<h>[^\s'\"\\{%]"
    + atomic(r"[^\s'\"\\]{0,1022}")
    + r")(?=[ \t]*(?:\\?[\"']|\\[rn])))"
)
_LINE_VALUE = re.compile(  # a name first on its line (not in a string): what the line gives it
    # password: hunter2 (YAML: one unquoted word on the rest of its line)
    _NAME_GROUP
    + r"(?::[ \t]+(?P<y>[^\s'\"#\[{&*!|>%@`$]"
    + atomic(r"\S{0,1023}")
    + r")[ \t]*(?:#[^\r\n]*)?\r?$"
    # password = hunter2, aws_secret_access_key = wJalr… (INI: spaces, no quotes)
    r"|(?:[ \t]+=(?!=)[ \t]*|=[ \t]+)(?P<ini>[^\s'\"`]" + atomic(r"[^\r\n]{0,1023}") + r")\r?$)",
    re.MULTILINE,
)
_NAME_RUN = re.compile(r"[A-Za-z_]" + atomic(r"[A-Za-z0-9_.\-]{0,127}") + r"(?![A-Za-z0-9_.\-])")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_NAME_START = frozenset(string.ascii_letters + "_")
_INI_COMMENT = re.compile(r"[ \t]+[#;]")
_PLAIN_NAME = re.compile(r"[A-Za-z_]\w*")
_LABEL_QUOTE = ("dq", "sq", "jq")  # what closes a label's string: "Password:"
_ONE_WORD = re.compile(r"[A-Za-z]+\.?")  # "password: required": a message, not a header
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
        """What a value given to ``name`` must be to be a secret: ANY (a plain entry names
        it), NOT_A_WORD (one of ``_WORD_TOLERANT`` does), KEY_LIKE (a glob does); 0: none."""
        found = self._levels.get(name)
        if found is None:
            norm = normal_name(name)
            word = self._word.search(norm) if self._word else None
            found = (NOT_A_WORD if word.group() in _WORD_TOLERANT else ANY) if word else 0
            found = found or (KEY_LIKE if self._glob and self._glob.match(norm) else 0)
            found = ANY if norm.endswith("secret_access_key") else found
            if len(self._levels) > 4096:
                self._levels.clear()
            self._levels[name] = found
        return found

    def takes(self, name: str, value: str) -> bool:
        """True when ``value``, given to ``name``, is a secret."""
        level = self.level(name)
        if not level or is_placeholder(value):
            return False
        if level == KEY_LIKE:
            return is_key_material(value)
        return level == ANY or not is_word(value)

    def apply(self, text: str) -> str:
        """The structural part of the pass (everything but known values)."""
        text = without_names(text)
        # A value redacted inside a line read as code may have held what made it code (then
        # the line is INI text): look again, so that one pass reaches the fixed point.
        for _ in range(3):
            if "=" not in text and ":" not in text:
                break
            lines = Lines(text)
            text = spliced(text, self._named_spans(text, lines))
            if not lines.recheck:
                break
        return text

    def _named_spans(self, text: str, lines: Lines) -> Iterable[tuple[int, int]]:
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
            span = self._span_at(text, start, lines)
            if span:
                lines.recheck = lines.recheck or span[0] < lines.code_until
                yield span
                done = span[1]

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

    def _span_at(self, text: str, start: int, lines: Lines) -> tuple[int, int] | None:
        """Where the secret given to the name at ``start`` is, or None."""
        match = _NAMED.match(text, start)
        if match:
            return self._secret_span(match, text)
        line = _LINE_VALUE.match(text, start) if first_on_line(text, start) else None
        return self._line_span(line, lines) if line else None

    def _secret_span(self, match: re.Match[str], text: str) -> tuple[int, int] | None:
        """Where in ``match`` a secret value is, or None."""
        group = next((g for g in _QUOTED if match.group(g) is not None), None)
        name, start = match.group("name"), match.start()
        if group in _LABEL_QUOTE and is_label(text, start, match.end("name"), match.start(group)):
            return None  # "Password:", type="password": that literal is not its value
        if group is None and not match.group("kq"):
            if match.group("v") is not None:
                passed_on = match.group("after") and _EXPRESSION.fullmatch(match.group("v"))
                group = None if passed_on else "v"  # f(password=pw)
            elif match.group("h") is not None:  # a header only inside its quotes, and one
                # word is a message ("password: required") unless a header's name has a -
                message = "-" not in name and _ONE_WORD.fullmatch(match.group("h"))
                group = "h" if text[start - 1 : start] in ("'", '"') and not message else None
        if group is None or not self.takes(name, match.group(group)):
            return None
        return match.span(group)

    def _line_span(self, match: re.Match[str], lines: Lines) -> tuple[int, int] | None:
        """The value of a YAML (``password: …``) or INI (``password = …``) line, or None."""
        name, value = match.group("name"), match.group("y")
        if value is not None:  # `password: str` is a type
            taken = not _TYPE_NAME.match(value) and self.takes(name, value)
            return match.span("y") if taken else None
        value, start = match.group("ini"), match.start("ini")
        comment = _INI_COMMENT.search(value)
        value = (value[: comment.start()] if comment else value).rstrip()
        passed_on = _PLAIN_NAME.fullmatch(value) and self.level(value)  # api_key = openai_key
        if not self.takes(name, value):
            return None
        if passed_on or is_code(value) or (reads_as_python(value) and not lines.in_section(start)):
            lines.code_until = start + len(value)  # password = pw if pw else None
            return None
        return start, start + len(value)


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


def secret_env_values(names: tuple[str, ...] | None = DEFAULT_SECRET_NAMES) -> list[str]:
    """Values of environment variables whose name contains KEY, TOKEN, SECRET… (None: the
    configured ``redact_env_names``), longest first.

    Scanning os.environ costs ~0.2 ms, so the result is cached until the set of variable
    names changes (one removed and another added included: ~4 µs to compare) or the value
    of a secret-named variable changes (a rotated key).
    """
    names = _rules.env_names if names is None else names
    cached = _cache.get(names)
    present = tuple(os.environ)
    if cached is not None:
        seen, secret_names, values = cached
        if seen == present and all(os.environ.get(n) == v for n, v in secret_names):
            return values
    pairs = [
        (name, value)
        for name, value in os.environ.items()
        if any(part in name.upper() for part in names)
    ]
    values = [v for _, v in pairs if len(v) >= _MIN_SECRET_LEN and v not in REDACTED]
    values = sorted(set(values), key=len, reverse=True)
    _cache[names] = (present, pairs, values)
    return values


_cache: dict[tuple[str, ...], tuple[tuple[str, ...], list[tuple[str, str]], list[str]]] = {}


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
