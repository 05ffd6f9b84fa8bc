"""What a secret looks like to the redaction pass: shapes found anywhere, and value tests.

``redact.py`` owns the names (``security.redact_assignments``) and the pass; this module owns
what needs no name:

* key shapes (``KEY_PATTERN``): OpenAI and Anthropic ``sk-``/``sk-proj-``/``sk-ant-``, GitHub
  ``ghp_``/``gho_``/``github_pat_``, GitLab ``glpat-``/``gldt-``/``glrt-``, Grafana ``glsa_``,
  Hugging Face ``hf_``, npm ``npm_``, PyPI ``pypi-AgEI``, Slack ``xox?-``/``xapp-`` and the
  secret part of a ``hooks.slack.com/services/T…/B…/…`` URL, AWS ``AKIA``/``ASIA`` ids,
  Google ``AIza`` and OAuth ``ya29.``, Stripe ``sk_live_``/``rk_live_``/``whsec_``, Groq
  ``gsk_``, Replicate ``r8_``, LangSmith ``lsv2_pt_``/``lsv2_sk_``, Perplexity ``pplx-``,
  SendGrid ``SG.…``, DigitalOcean ``dop_v1_``, JWTs, bearer tokens; found from one scan for
  rare prefixes (one glued to the last is found in the same pass);
* PEM private-key blocks (header and footer stay) and a URL's password
  (``postgresql://admin:[REDACTED]@host/db``);
* credentials in an ``Authorization``/``Proxy-Authorization`` header, whatever its quoting
  (``Authorization: Basic [REDACTED]``: the scheme stays), and the password of
  ``curl -u``/``--user user:pw`` (the user stays; only in a curl command, up to an unquoted
  ``;``, ``|``, ``&`` or line end, since ``sudo -u app:app`` is a user and a group; not a
  placeholder: ``YOUR_USER:YOUR_PASS``, ``<user:password>``);

and what a value given to a secret name must be to count (``is_key_material``,
``is_identifier``, ``is_word``, ``is_code``, ``reads_as_python``, ``is_label``). Every rule
waits behind a substring check or the prefix scan, and every run it matches is bounded, so no
text makes it quadratic.
"""

from __future__ import annotations

import bisect
import itertools
import re
import string
from collections.abc import Iterable

REDACTED = "[REDACTED]"
_ATOMIC_IDS = itertools.count(1)


def atomic(pattern: str) -> str:
    """``(?>pattern)``, which Python 3.10's ``re`` lacks (as it lacks ``X{m,n}+``): a
    lookahead takes what ``pattern`` matches first and a backreference consumes it, so nothing
    after it makes the engine retry ``pattern`` shorter (each group name is used once)."""
    name = f"_atomic{next(_ATOMIC_IDS)}"
    return f"(?=(?P<{name}>{pattern}))(?P={name})"


_SHAPES = (  # each begins where a word does (KEY_PATTERN puts one \b before them all)
    r"(?:sk|rk|pk)-(?!learn\b)[A-Za-z0-9_\-]{8,}",  # OpenAI-style keys incl. sk-proj-, sk-ant-
    r"Bearer\s+(?:(?=[\w.~+/\-]*\d)[\w.~+/\-]{8,}|[\w.~+/\-]{20,})=*",
    r"gh[pousr]_[A-Za-z0-9]{16,}|github_pat_\w{20,}",  # GitHub
    r"gl(?:pat|dt|rt)-[\w\-]{20,}|glsa_\w{32,}",  # GitLab personal/deploy/runner; Grafana
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"npm_[A-Za-z0-9]{36,}",  # npm
    r"xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[A-Za-z0-9\-]{10,}",  # Slack
    r"hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/(?P<hook>[A-Za-z0-9]{16,})",
    r"(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"ya29\.[\w\-]{20,}",  # Google OAuth access tokens
    r"[rs]k_(?:live|test)_[0-9A-Za-z]{10,}|whsec_[A-Za-z0-9]{24,}",  # Stripe, its webhooks
    r"gsk_[A-Za-z0-9]{40,}",  # Groq
    r"r8_[A-Za-z0-9]{30,}",  # Replicate
    r"lsv2_(?:pt|sk)_\w{20,}",  # LangSmith
    r"pplx-[A-Za-z0-9]{40,}",  # Perplexity
    r"pypi-AgEI[\w\-]{50,}",  # PyPI
    r"SG\.[\w\-]{22}\.[\w\-]{43}",  # SendGrid
    r"dop_v1_[a-f0-9]{32,}",  # DigitalOcean (64 hex; shorter if cut)
    r"eyJ"  # JWT: header.payload.signature
    + atomic(r"[\w\-]{8,1024}")
    + r"\.eyJ"
    + atomic(r"[\w\-]{8,}")
    + r"\."
    + atomic(r"[\w\-]*"),
)
KEY_PATTERN = re.compile(r"\b(?:" + "|".join(_SHAPES) + ")")
_GLUED = re.compile("(?:" + "|".join(_SHAPES) + ")")  # right after a shape: no \b needed
# Every shape's prefix in one scan, by a rare part of it (a scan on common first letters is
# 5 times slower; alternatives sharing a first letter are grouped; named groups, 10 times), and
# how far before that part a shape starts, by its first two characters (0 if not listed).
_PREFIXES = re.compile(
    r"k[-_]|f_|p(?:m_|plx-|ypi-|_v1_)|Bearer|g(?:h[pousr]_|l(?:pat|dt|rt)-|lsa_|sk_)|b_pat_"
    r"|x(?:ox|app-)|A(?:KIA|SIA|Iza)|y(?:a29\.|J)|SG\.|8_|2_(?:pt|sk)_|ks\.slack\.com/|whsec_"
)
_JSON_BREAKS = ("\\n", "\\r", "\\t")  # in JSON text, where a line or word ends
_BACK = {  # sk- sk_live_ hf_ npm_ eyJ r8_ (1), dop_v1_ (2), lsv2_ hooks. (3), github_pat_ (5)
    **dict.fromkeys(("k-", "k_", "f_", "pm", "yJ", "8_"), 1),
    **{"p_": 2, "2_": 3, "ks": 3, "b_": 5},
}
_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----[\s\S]*?"
    r"(?:-----END (?P=kind)-----|\Z)"
)
_URL_PASSWORD = re.compile(r"://(?P<user>[^\s:/?#@\[\]\"'<>]*):[^\s/?#\"'<>]+@")
_AUTH_HEADER = re.compile(  # Authorization: Basic …, "Authorization": "Token …", -H '…',
    # META["HTTP_AUTHORIZATION"] = "Basic …"
    r"(?:(?<![A-Za-z0-9])|(?<=\\[nrt]))Authorization"  # (after \n, \t in JSON text too)
    r"(?:\\?[\"'])?\]?[ \t]*[:=][ \t]*(?:\\?[\"'])?"
    r"(?:Basic|Bearer|Token)[ \t]+(?P<cred>" + atomic(r"[\w.~+/:\-]{4,1023}") + "=*)",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|[a-z]+")  # Bearer YOUR_KEY; "Basic scheme" in prose
_CURL_USER = re.compile(  # -u user:pw, --user=user:pw, "-u", "user:pw", -u 'user:two words'
    r"(?<![\w-])(?:-u|-U|--user|--proxy-user)(?:[ \t]+|=|[\"'],[ \t]*)(?:"
    r"(?P<q>[\"'])[^\s:'\"<>]{0,256}:(?P<qpw>" + atomic(r"[^'\"\n]{1,1023}") + ")"
    r"|[^\s:'\"<>]{0,256}:(?P<pw>" + atomic(r"[^\s'\"<>]{1,1023}") + "))"
)  # (not <user:password> in curl's help)
_CURL_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # -u YOUR_USER:YOUR_PASS, as with Bearer
_COMMAND_PART = re.compile(  # a quoted word, or what ends a shell command: ; | & or a line end
    r"'[^'\n]*'|\\\"(?:[^\"\\\n]|\\[^\"\n])*\\\"|\"(?:[^\"\\\n]|\\.)*\""
    r"|(?P<end>[;|]|&(?![\w=;])|(?<!\\)(?<!\\\r)\n|(?<!\\)\\[nr])"  # (JSON text: \\n)
)
_CURL_FLAG = re.compile(r"-[uU]")  # a regex finds these 2 characters twice as fast as find
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
_BARE_NAME = re.compile(r"[A-Za-z_]\w*")
_MIXED = re.compile(r"(?=.*\d)(?=.*[A-Za-z])")  # letters and digits: hunter2, not pw
_PYTHON = re.compile(  # in an INI-looking value, what only code has
    r"\b(?:await|lambda|if|else|or|and|not|yield|for|in|is)\b|\w[(\[]|[A-Za-z_]\w*\.[A-Za-z_]\w"
    r"|\s(?:[-+*/%@&|^<>]|\*\*|//|<<|>>|[<>=!]=)(?:\s|$)"
)
_LABEL_END = re.compile(r":[ \t]*")  # between a label's name and its closing quote
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "_- \t")
_INI_BLOCK = re.compile(
    r"^[ \t]*\[[\w.\-: \"]{1,128}\][ \t]*\r?$"
    r"(?:\n[ \t]*(?:[#;][^\n]*|[\w.\-]{1,128}[ \t]*[=:][^\n]*)?$)*",
    re.MULTILINE,
)
_CODE = re.compile(  # getpass.getpass(), os.environ["X"], tokens[i], [a, b], config.password,
    # and a line that goes on: get(, (, \\
    r"[A-Za-z_][\w.]*(?:\(.*\)|\[.*\])|[\[({].*[\])}]|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|.*[\[({\\]"
)


def reads_as_python(value: str) -> bool:
    """An unquoted value that reads as Python more than as INI text: a keyword (``await``,
    ``if``, ``or``…), a call, subscript, attribute or operator, or a bare name without digits
    (``pw``, ``key_from_vault``; ``hunter2`` mixes letters and digits)."""
    if _BARE_NAME.fullmatch(value):
        return not _MIXED.match(value)
    return bool(_PYTHON.search(value))


class Lines:
    """What one pass learns of a text's lines: its INI ``[section]`` blocks (a header and the
    ``key = value``, comment and blank lines under it; found once, when first asked), and
    where the last INI-looking line read as code ends (a value redacted before that may have
    held what made it code: then the pass looks again)."""

    def __init__(self, text: str):
        self._text, self._blocks = text, None
        self.code_until, self.recheck = -1, False

    def in_section(self, at: int) -> bool:
        """True when ``text[at]`` is in a section's block."""
        if self._blocks is None:
            found = _INI_BLOCK.finditer(self._text) if "[" in self._text else ()
            self._blocks = [m.span() for m in found]
        i = bisect.bisect_right(self._blocks, (at, len(self._text))) - 1
        return i >= 0 and self._blocks[i][0] <= at < self._blocks[i][1]


def first_on_line(text: str, at: int) -> bool:
    """True when only blanks, or a YAML list's ``- ``, come before ``text[at]`` on its line."""
    before = _blanks_before(text, at)
    if before < at and before and text[before - 1] == "-":
        before = _blanks_before(text, before - 1)
    return before == 0 or text[before - 1] == "\n"


def is_label(text: str, start: int, name_end: int, value_start: int) -> bool:
    """True when the name at ``start`` ends a label, a string closed right after its colon
    (``"Password:", …``, ``'Enter your token: ' + tok``), so the literal at ``value_start`` is
    not its value: that literal's quote also opens the name's string, before at most 64 words
    and spaces (quotes are not counted: an apostrophe in a comment would tip the count)."""
    quote_at = value_start - (2 if text[value_start - 2 : value_start] == '\\"' else 1)
    if not _LABEL_END.fullmatch(text, name_end, quote_at):
        return False
    at = start
    while at > start - 64 and at > 0 and text[at - 1] in _LABEL_CHARS:
        at -= 1
    return text.endswith(text[quote_at:value_start], 0, at)


def _blanks_before(text: str, at: int) -> int:
    while at and text[at - 1] in " \t":
        at -= 1
    return at


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
    """Where key shapes are: their prefixes found in one scan, each shape matched there (one
    glued to the last needs no word boundary: the next pass would find it after the
    ``[REDACTED]``; nor one after ``\\n`` in JSON text); of a Slack webhook URL, its secret
    part."""
    done = -1
    for hit in _PREFIXES.finditer(text):
        start = hit.start() - _BACK.get(text[hit.start() : hit.start() + 2], 0)
        if start < max(done, 0):
            continue
        glued = start == done or text[start - 2 : start] in _JSON_BREAKS  # \\nsk-… in JSON
        match = (_GLUED if glued else KEY_PATTERN).match(text, start)
        if match:
            yield match.span("hook") if match.group("hook") else match.span()
            done = match.end()


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
    """The passwords of ``-u user:pw`` in a curl command (the user stays), matched where
    ``-u``/``-U`` is: ``-u`` itself, ``--user`` (1 back), ``--proxy-user`` (7 back)."""
    done, command = 0, (-1, -1, False)
    for hit in _CURL_FLAG.finditer(text):
        at = hit.start()
        for start in (at, at - 1, at - 7):
            match = _CURL_USER.match(text, start) if start >= done else None
            if match:
                group = "qpw" if match.group("q") else "pw"
                pw = match.group(group)
                if not is_placeholder(pw) and not _CURL_PLACEHOLDER.fullmatch(pw):
                    command = _curl_command(text, start, command)
                    if command[0] <= start < command[1]:
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


def _curl_command(text: str, at: int, last: tuple[int, int, bool]) -> tuple[int, int, bool]:
    """Where the curl command before ``text[at]`` (at most ``_CURL_BACK`` characters back)
    starts and ends (at an unquoted ``;``, ``|``, ``&`` or line end; ``\\``-continued lines go
    on), and whether it ended there or at that bound. ``last``, the one found before, is kept
    while it holds both, so each part of the text is scanned about once (many ``-u``, one
    curl: still linear)."""
    curl = text.rfind("curl", max(at - _CURL_BACK, 0), at)
    if curl < 0:
        return -1, -1, False
    if last[0] <= curl < last[1] and (last[2] or at < last[1]):
        return last
    stop = min(curl + _CURL_BACK, len(text))
    ends = (m.start() for m in _COMMAND_PART.finditer(text, curl, stop) if m.group("end"))
    end = next(ends, None)
    return (curl, stop, False) if end is None else (curl, end, True)


def _pem_block(match: re.Match[str]) -> str:
    kind, block = match.group("kind"), match.group(0)
    newline = "\n" if "\n" in block or "\\n" not in block else "\\n"  # JSON text keeps \\n
    return f"-----BEGIN {kind}-----{newline}{REDACTED}{newline}-----END {kind}-----"
