"""Pure ASGI middleware: UTF-8 request targets, body size limit, security headers (no BaseHTTPMiddleware)."""

from urllib.parse import unquote_to_bytes

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import DomainError, PayloadTooLarge
from backend.http_errors import domain_error_response, is_graphql_path

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class HttpHardeningMiddleware:
    """One pure ASGI layer for the request checks and response headers every route needs.

    - A path or query string whose percent-decoded bytes are not UTF-8 is a 400: Starlette would
      decode it with replacement characters, and `?search=%FF` would quietly search for U+FFFD.
    - A body over the limit is a 413 before anything parses it: a declared Content-Length at
      once, a chunked body as it arrives (the handler's read fails).
    - Security headers on every response.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _refusal(scope, self.max_body_bytes)
        if refusal is not None:
            response = domain_error_response(refusal, graphql=is_graphql_path(scope["path"]))
            await response(scope, receive, _with_security_headers(send))
            return
        await self.app(scope, _limited(receive, self.max_body_bytes), _with_security_headers(send))


def _refusal(scope: Scope, max_body_bytes: int) -> DomainError | None:
    if not _is_utf8_target(scope):
        return DomainError("The request path or query string is not valid UTF-8")
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                return DomainError("Invalid Content-Length header")
            if int(value) > max_body_bytes:
                return PayloadTooLarge(f"Request body over {max_body_bytes} bytes")
            break
    return None


def _is_utf8_target(scope: Scope) -> bool:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    try:
        unquote_to_bytes(raw_path).decode()
        unquote_to_bytes(query).decode()
    except UnicodeDecodeError:
        return False
    return True


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # An HTTPException: FastAPI turns any other error raised while reading a body into a 400.
                raise HTTPException(413, f"Request body over {limit} bytes")
        return message

    return limited_receive


def _with_security_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).raw.extend(SECURITY_HEADERS)
        await send(message)

    return send_with_headers
