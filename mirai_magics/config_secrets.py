"""Secrets a config file must not hold: key-named fields, key-shaped values, credential headers.

Each layer's YAML is checked on its own, before the layers merge, so the error names the
file and line that wrote it. Refused:

* a field named like a key anywhere (``api_key``, ``token``, ``password``…, :data:`KEY_NAMES`);
* a string value shaped like one (``sk-…``, ``Bearer …``, a PEM private key: ``looks_like_key``);
* under ``endpoints.<name>.default_headers`` / ``default_query``, any value of a name that
  carries credentials (:func:`carries_credentials`: ``Authorization``, ``x-api-key``,
  ``Ocp-Apim-Subscription-Key``, ``access_token``, ``Cookie``…), whatever it looks like; and
  a header or query value, or a ``base_url``, holding what the redaction pass hides
  (``Basic dXNl…``, ``https://user:pw@proxy/v1``, ``?api_key=…``).

The config expands no ``${ENV}`` references, so the one way in for a key is the environment
variable an ``api_key_env_var`` names: the SDK sends it itself (``Authorization: Bearer …``,
or Azure's ``api-key`` header when the endpoint has ``api_version``).
"""

from __future__ import annotations

import re
from typing import Any

from .redact import looks_like_key, redact

KEY_NAMES = frozenset({"api_key", "apikey", "api-key", "secret", "secret_key", "password", "token"})
KEY_HINT = "set the environment variable named by security.api_key_env_var instead"
KEY_PROBLEM = "API keys must not be in the config file"
# header / query names that carry credentials: these whole names, or a name whose last part
# (split at - and _) is one of these: x-api-key, Ocp-Apim-Subscription-Key, X-Auth-Token,
# client_secret; not x-max-tokens, X-Token-Budget, tokenizer
CREDENTIAL_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "code", "sig"})
CREDENTIAL_LAST = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "credential"}
    | {"credentials", "cookie", "signature", "sig"}
)
SENT_MAPS = ("default_headers", "default_query")  # of an entry of endpoints:
_PARTS = re.compile(r"[-_\s]+")
_SCHEME = re.compile(r"(?i)(?:basic|bearer|token|digest)\s+\S{8,}")  # an Authorization value

Path = tuple[Any, ...]
Secret = tuple[Path, str, str]  # (key path, problem, hint)


def carries_credentials(name: str) -> bool:
    """True for a header or query parameter name that carries a credential."""
    low = name.strip().lower()
    parts = [p for p in _PARTS.split(low) if p]
    return low in CREDENTIAL_NAMES or (bool(parts) and parts[-1] in CREDENTIAL_LAST)


def secret_in(data: Any) -> Secret | None:
    """The first secret written in one layer's data: its key path, the problem and the fix."""
    found = _walk(data, ())
    if found is None:
        return None
    where, problem = found
    return where, problem, hint_for(where)


def hint_for(where: Path) -> str:
    """What to do instead: the key comes from the variable that ``api_key_env_var`` names."""
    if len(where) < 2 or where[0] != "endpoints":
        return KEY_HINT
    hint = f"set the environment variable named by endpoints.{where[1]}.api_key_env_var"
    if _is_sent_name(where[:-1]):
        hint += (
            " (the SDK sends it as Authorization: Bearer, or as api-key with api_version;"
            " the config expands no ${ENV} references)"
        )
    return hint


def _is_sent_name(path: Path) -> bool:
    """True when the keys under ``path`` are header or query names an endpoint sends."""
    return len(path) == 3 and path[0] == "endpoints" and path[2] in SENT_MAPS


def _walk(node: Any, path: Path) -> tuple[Path, str] | None:
    """The path of the first key-named field or key-shaped value under ``node``, and why."""
    if isinstance(node, dict):
        sent = _is_sent_name(path)
        for key, value in node.items():
            where = (*path, str(key))
            if (sent and carries_credentials(str(key))) or str(key).lower() in KEY_NAMES:
                return where, KEY_PROBLEM
            if (found := _walk(value, where)) is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if (found := _walk(value, (*path, i))) is not None:
                return found
    elif isinstance(node, str) and (looks_like_key(node) or _sent_secret(path, node)):
        return path, "value looks like an API key; keys must not be in the config file"
    return None


def _sent_secret(path: Path, value: str) -> bool:
    """A credential in what an endpoint sends: a header or query value, or the base URL
    (``https://user:pw@proxy/v1``, ``?api_key=…``), that the redaction pass would hide."""
    sent = len(path) == 4 and _is_sent_name(path[:3])
    url = len(path) == 3 and path[0] == "endpoints" and path[2] == "base_url"
    url = url or path == ("endpoint", "base_url")
    return (sent and _SCHEME.match(value.strip()) is not None) or (
        (sent or url) and redact(value) != value
    )
