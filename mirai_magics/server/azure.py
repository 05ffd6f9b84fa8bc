"""Azure OpenAI's URL shapes, for an offline server that behaves like an Azure resource.

``OfflineServer(azure_api_version="2024-10-21")`` (``mirai serve --azure-api-version …``)
answers what an Azure OpenAI resource answers, and nothing else:

- the classic form, ``/openai/deployments/{deployment}/chat/completions`` and
  ``…/embeddings``, ``/openai/models``: each with ``?api-version=`` set to that version and
  the key in an ``api-key`` header (what the SDK's AzureOpenAI sends);
- the v1 form, ``/openai/v1/chat/completions``, ``…/embeddings``, ``…/models``: the key in
  ``api-key`` or ``Authorization: Bearer``, no api-version needed (what OpenAI sends there).

A classic path without that api-version, and any other path (``/v1/…`` too), is a 404, as
Azure answers it. Each maps to the plain ``/v1/…`` route the rest of the server knows.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from .errors import ApiError
from .http import Request

_CLASSIC = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)(?P<rest>/.+)$")
_DEPLOYMENT_ROUTES = ("/chat/completions", "/embeddings")
_V1 = "/openai/v1/"


def is_classic(path: str) -> bool:
    """A path of the classic (deployments, api-version) form."""
    return path.startswith("/openai/") and not path.startswith(_V1)


def plain_path(path: str) -> str | None:
    """The ``/v1/…`` route an Azure path stands for, or None when Azure has no such path."""
    path = path.rstrip("/")
    if path.startswith(_V1):
        return "/v1/" + path[len(_V1) :]
    if path == "/openai/models" or path.startswith("/openai/models/"):
        return "/v1" + path[len("/openai") :]
    match = _CLASSIC.match(path)
    if match and match["rest"] in _DEPLOYMENT_ROUTES:
        return "/v1" + match["rest"]
    return None


def route(req: Request, api_version: str) -> str:
    """The ``/v1/…`` route of ``req``, or the 404 Azure answers (unknown path, api-version
    missing or not ``api_version``)."""
    plain = plain_path(req.path)
    if plain is None:
        raise _not_found()
    if is_classic(req.path):
        versions = parse_qs(req.query).get("api-version", [])
        if versions != [api_version]:
            raise _not_found()
    return plain


def presented_key(req: Request) -> str:
    """The key sent: ``api-key`` (classic and v1), or a bearer token (v1 only)."""
    key = req.headers.get("api-key", "").strip()
    if key or is_classic(req.path):
        return key
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def access_denied() -> ApiError:
    return ApiError(
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
        code="401",
    )


def _not_found() -> ApiError:
    return ApiError(404, "Resource not found", code="404")
