"""OpenAI-style error bodies of the offline server (validation errors and injected faults)."""

from __future__ import annotations

FAULT_NOTE = "(offline server fault injection)"

HTML_503 = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"

_FAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("Permission denied", "invalid_request_error", "permission_denied"),
    404: (
        "The model does not exist or you do not have access to it",
        "invalid_request_error",
        "model_not_found",
    ),
    408: ("Request timed out", "invalid_request_error", "timeout"),
    409: ("Conflict: the resource is locked", "invalid_request_error", "conflict"),
    422: ("Unprocessable entity", "invalid_request_error", "unprocessable_entity"),
    429: ("Rate limit reached", "requests", "rate_limit_exceeded"),
}


class ApiError(Exception):
    """An OpenAI-style API error; becomes ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def fault_error(status: int) -> ApiError:
    """The error an injected fault with HTTP ``status`` answers with."""
    if status in _FAULT_ERRORS:
        message, type_, code = _FAULT_ERRORS[status]
    elif status >= 500:
        message = "The server had an error while processing your request"
        type_, code = "server_error", None
    else:
        message, type_, code = "Request failed", "invalid_request_error", None
    return ApiError(status, f"{message} {FAULT_NOTE}", type=type_, code=code)


def invalid_json() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
    )


def missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def wrong_key(key: str) -> ApiError:
    shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
    return ApiError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")


def not_found(method: str, path: str) -> ApiError:
    return ApiError(404, f"Invalid URL ({method} {path})")


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, f"Method {method} not allowed for {path}")
