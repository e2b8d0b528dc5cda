"""Pure ASGI middleware: body size limit, UTF-8 request targets, security headers (no BaseHTTPMiddleware)."""

from urllib.parse import unquote_to_bytes

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import DomainError, PayloadTooLarge, domain_error_response

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class BodySizeLimitMiddleware:
    """Refuses bodies over the limit with 413 before anything parses them.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as
    it arrives and the handler's read fails with a 413.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await domain_error_response(DomainError("Invalid Content-Length header"))(scope, receive, send)
                    return
                if int(value) > self.max_body_bytes:
                    too_large = PayloadTooLarge(f"Request body over {self.max_body_bytes} bytes")
                    await domain_error_response(too_large)(scope, receive, send)
                    return
                break
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException: FastAPI turns any other error raised while reading a body into a 400.
                    raise HTTPException(413, f"Request body over {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class Utf8RequestTargetMiddleware:
    """400 for a path or query string whose percent-decoded bytes are not UTF-8.

    Starlette decodes them with replacement characters: `?search=%FF` would quietly search for
    U+FFFD instead of telling the client that its request is malformed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_utf8_target(scope):
            malformed = DomainError("The request path or query string is not valid UTF-8")
            await domain_error_response(malformed)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_utf8_target(scope: Scope) -> bool:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    try:
        unquote_to_bytes(raw_path).decode()
        unquote_to_bytes(query).decode()
    except UnicodeDecodeError:
        return False
    return True


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.raw.append((name, value))
            await send(message)

        await self.app(scope, receive, send_with_headers)
