"""What a secret looks like to the redaction pass: shapes found anywhere, and value tests.

``redact.py`` owns the names (``security.redact_assignments``) and the pass; this module owns
what needs no name:

* key shapes (``KEY_PATTERN``): OpenAI and Anthropic ``sk-``/``sk-proj-``/``sk-ant-``, GitHub
  ``ghp_``/``gho_``/``github_pat_``, GitLab ``glpat-``, Hugging Face ``hf_``, npm ``npm_``,
  Slack ``xox?-``, AWS ``AKIA``/``ASIA`` ids, Google ``AIza`` and OAuth ``ya29.``, Stripe
  ``sk_live_``/``rk_live_``, JWTs, bearer tokens; found from one scan for rare prefixes;
* PEM private-key blocks (header and footer stay) and a URL's password
  (``postgresql://admin:[REDACTED]@host/db``);
* credentials in an ``Authorization``/``Proxy-Authorization`` header, whatever its quoting
  (``Authorization: Basic [REDACTED]``: the scheme stays), and the password of
  ``curl -u``/``--user user:pw`` (the user stays; only on a curl command line, since
  ``docker -u app:app`` is a user and a group);

and what a value given to a secret name must be to count (``is_key_material``,
``is_identifier``, ``is_word``, ``is_code``). Every rule waits behind a substring check or the
prefix scan, and every run it matches is bounded, so no text makes it quadratic.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
_ATOMIC_IDS = itertools.count(1)


def atomic(pattern: str) -> str:
    """``(?>pattern)``, which Python 3.10's ``re`` lacks (as it lacks ``X{m,n}+``): a
    lookahead takes what ``pattern`` matches first and a backreference consumes it, so nothing
    after it makes the engine retry ``pattern`` shorter (each group name is used once)."""
    name = f"_atomic{next(_ATOMIC_IDS)}"
    return f"(?=(?P<{name}>{pattern}))(?P={name})"


KEY_PATTERN = re.compile(
    r"\b(?:sk|rk|pk)-(?!learn\b)[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys incl. sk-proj-, sk-ant-
    r"|\bBearer\s+(?:(?=[\w.~+/\-]*\d)[\w.~+/\-]{8,}|[\w.~+/\-]{20,})=*"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{20,})"  # GitHub
    r"|\bglpat-[\w\-]{20,}"  # GitLab personal access tokens
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|\bnpm_[A-Za-z0-9]{36,}"  # npm
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bAIza[0-9A-Za-z_\-]{35}"  # Google API keys
    r"|\bya29\.[\w\-]{20,}"  # Google OAuth access tokens
    r"|\b[rs]k_(?:live|test)_[0-9A-Za-z]{10,}"  # Stripe
    r"|\beyJ"  # JWT: header.payload.signature
    + atomic(r"[\w\-]{8,1024}")
    + r"\.eyJ"
    + atomic(r"[\w\-]{8,}")
    + r"\."
    + atomic(r"[\w\-]*")
)
# Every shape's prefix in one scan, by a rare letter of it (a scan on common first letters is
# 5 times slower; alternatives sharing a first letter are grouped), and how far before each
# hit a shape may start: sk-, hf_, npm_, eyJ (1), glpat-, ya29., AKIA… (0), github_pat_ (5).
_PREFIXES = re.compile(
    r"k[-_]|f_|pm_|Bearer|g(?:h[pousr]_|lpat-)|b_pat_|xox|A(?:KIA|SIA|Iza)|y(?:a29\.|J)"
)
_BACK = (1, 0, 5)
_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----[\s\S]*?"
    r"(?:-----END (?P=kind)-----|\Z)"
)
_URL_PASSWORD = re.compile(r"://(?P<user>[^\s:/?#@\[\]\"'<>]*):[^\s/?#\"'<>]+@")
_AUTH_HEADER = re.compile(  # Authorization: Basic …, "Authorization": "Token …", -H '…',
    # META["HTTP_AUTHORIZATION"] = "Basic …"
    r"(?<![A-Za-z0-9])Authorization(?:\\?[\"'])?\]?[ \t]*[:=][ \t]*(?:\\?[\"'])?"
    r"(?:Basic|Bearer|Token)[ \t]+(?P<cred>" + atomic(r"[\w.~+/:\-]{4,1023}") + "=*)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|[a-z]+")  # Bearer YOUR_KEY; "Basic scheme" in prose
_CURL_USER = re.compile(  # -u user:pw, --user=user:pw, "-u", "user:pw", -u 'user:two words'
    r"(?<![\w-])(?:-u|-U|--user|--proxy-user)(?:[ \t]+|=|[\"'],[ \t]*)(?:"
    r"(?P<q>[\"'])[^\s:'\"]{0,256}:(?P<qpw>" + atomic(r"[^'\"\n]{1,1023}") + ")"
    r"|[^\s:'\"]{0,256}:(?P<pw>" + atomic(r"[^\s'\"]{1,1023}") + "))"
)
_CURL_FLAG = re.compile(r"-[uU]")  # a regex finds these 2 characters twice as fast as find
_LINE_END = re.compile(r"(?<!\\)(?<!\\\r)\n")  # not a \ continuation
_CURL_BACK = 2048  # how far back a curl command line (with its \ continuations) is looked for

_NOT_SECRET = re.compile(  # numbers, constants, $VAR, placeholders: (not set), …, <token>,
    # and tokenizer special tokens ([PAD], [CLS], <|endoftext|>)
    r"-?\d{1,5}(?:\.\d+)?|None|True|False|null|true|false|~|\$\{?\w+\}?|\([^()]*\)|[.…*]+|<[^<>]*>"
    r"|\[[A-Z_]{1,16}\]"
)
_KEY_MATERIAL = re.compile(r"(?=\S*\d)(?=\S*[A-Za-z])\S{8,}|(?=\S*[a-z])(?=\S*[A-Z])[\w+/=\-]{16,}")
_FILE_NAME = re.compile(r"\S*\.[A-Za-z]{1,8}")
_SEGMENT = r"(?:[a-z]+\d{0,4}|\d{1,8})"  # user, v2, 2024: a word, perhaps numbered, or a number
_IDENTIFIER = re.compile(rf"{_SEGMENT}(?:[_.\-]{_SEGMENT}){{1,15}}")
_WORD = re.compile(r"[A-Za-z]{1,7}")
_CODE = re.compile(  # getpass.getpass(), os.environ["X"], tokens[i], [a, b], config.password,
    # and a line that goes on: get(, (, \\
    r"[A-Za-z_][\w.]*(?:\(.*\)|\[.*\])|[\[({].*[\])}]|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|.*[\[({\\]"
)


def is_key_material(value: str) -> bool:
    """Shaped like a key: 8+ characters mixing letters and digits (or 16+ of mixed case),
    no spaces, not a file name (``data/2024/q1.csv``) nor an identifier (``user_profile_v2``)."""
    return (
        bool(_KEY_MATERIAL.fullmatch(value))
        and not _FILE_NAME.fullmatch(value)
        and not is_identifier(value)
    )


def is_identifier(value: str) -> bool:
    """Lowercase words and numbers joined by ``_``, ``-`` or ``.`` (``customer_id_2024``,
    ``event-type-v3``, ``orders.by_region``): a name, not key material."""
    return bool(_IDENTIFIER.fullmatch(value))


def is_word(value: str) -> bool:
    """A short dictionary-like word (letters only, under 8): ``the``, ``Hello``."""
    return bool(_WORD.fullmatch(value))


def is_code(value: str) -> bool:
    """An unquoted value that is an expression: a call, subscript, display or attribute, or
    the start of one continued on the next line."""
    return bool(_CODE.fullmatch(value))


def is_placeholder(value: str) -> bool:
    """No value at all: a number, constant, ``$VAR``, ``<token>``, ``(not set)``, ``[PAD]``…"""
    return not value.strip() or value == REDACTED or bool(_NOT_SECRET.fullmatch(value))


def without_names(text: str) -> str:
    """``text`` with every secret that needs no name redacted (see the module docstring)."""
    if "PRIVATE KEY" in text:
        text = _PEM.sub(_pem_block, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(r"://\g<user>:" + REDACTED + "@", text)
    text = spliced(text, _shape_spans(text))
    text = spliced(text, _header_spans(text))
    return spliced(text, _curl_spans(text))


def looks_like_key(value: str) -> bool:
    """True when ``value`` contains something shaped like an API key, token or private key."""
    return bool(KEY_PATTERN.search(value)) or ("PRIVATE KEY" in value and bool(_PEM.search(value)))


def spliced(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each of ``spans`` (in order, apart) replaced by ``[REDACTED]``."""
    pieces, done = [], 0
    for start, end in spans:
        pieces += (text[done:start], REDACTED)
        done = end
    return "".join((*pieces, text[done:])) if pieces else text


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


def _header_spans(text: str) -> Iterable[tuple[int, int]]:
    """The credentials of Authorization headers (not a placeholder: ``Bearer YOUR_KEY``),
    matched where ``uthorization`` is (a case-blind scan of the text is 20 times slower)."""
    done = 0
    for at in _hits(text, ("uthorization", "UTHORIZATION")):
        match = _AUTH_HEADER.match(text, at - 1) if at - 1 >= done else None
        if match and not _PLACEHOLDER.fullmatch(match.group("cred")):
            yield match.span("cred")
            done = match.end()


def _curl_spans(text: str) -> Iterable[tuple[int, int]]:
    """The passwords of ``-u user:pw`` on a curl command line (the user stays), matched where
    ``-u``/``-U`` is: ``-u`` itself, ``--user`` (1 back), ``--proxy-user`` (7 back)."""
    done = 0
    for hit in _CURL_FLAG.finditer(text):
        at = hit.start()
        for start in (at, at - 1, at - 7):
            match = _CURL_USER.match(text, start) if start >= done else None
            if match:
                group = "qpw" if match.group("q") else "pw"
                if not is_placeholder(match.group(group)) and _on_curl_line(text, start):
                    yield match.span(group)
                done = match.end()
                break


def _hits(text: str, needles: tuple[str, ...]) -> list[int]:
    """Where any of ``needles`` starts in ``text``, in order."""
    hits: list[int] = []
    for needle in needles:
        at = text.find(needle)
        while at >= 0:
            hits.append(at)
            at = text.find(needle, at + 1)
    return sorted(hits)


def _on_curl_line(text: str, at: int) -> bool:
    """True when the command line holding ``text[at]`` (``\\``-continued lines included,
    at most ``_CURL_BACK`` characters back) runs curl."""
    curl = text.rfind("curl", max(at - _CURL_BACK, 0), at)
    return curl >= 0 and _LINE_END.search(text, curl, at) is None


def _pem_block(match: re.Match[str]) -> str:
    kind, block = match.group("kind"), match.group(0)
    newline = "\n" if "\n" in block or "\\n" not in block else "\\n"  # JSON text keeps \\n
    return f"-----BEGIN {kind}-----{newline}{REDACTED}{newline}-----END {kind}-----"
