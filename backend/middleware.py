"""Pure ASGI middleware: UTF-8 request targets, the body limit, requests served first come first
served, security headers (no BaseHTTPMiddleware)."""

import asyncio
from collections.abc import Collection
from urllib.parse import unquote_to_bytes

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import DomainError, PayloadTooLarge
from backend.http_errors import CLIENT_CLOSED_REQUEST, domain_error_response, is_graphql_path

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
      once, a chunked body as it arrives.
    - At most `max_concurrent` requests are served at a time, the others wait their turn in order
      of arrival, so the wait is first come, first served from the door to the database (the
      database's own admission is too). Served together without it, every request shares the CPU
      with all the others in flight, and under load latency spreads far beyond its mean. The body
      is read before the turn is taken: a client sending it slowly holds no place. Probes skip the
      queue.
    - Security headers on every response.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_concurrent: int, unqueued_paths: Collection[str] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._turns = asyncio.Semaphore(max_concurrent)
        self._unqueued_paths = frozenset(unqueued_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        refusal = _refusal(scope, self.max_body_bytes)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return
        body = await _read_body(receive, self.max_body_bytes)
        if isinstance(body, DomainError):
            await self._refuse(body, scope, receive, send)
            return
        if body is None:  # the client went away: nothing to answer, nothing went wrong here
            await Response(status_code=CLIENT_CLOSED_REQUEST)(scope, receive, send)
            return
        if scope["path"] in self._unqueued_paths:
            await self.app(scope, _replaying(body, receive), send)
            return
        async with self._turns:
            await self.app(scope, _replaying(body, receive), send)

    async def _refuse(self, refusal: DomainError, scope: Scope, receive: Receive, send: Send) -> None:
        response = domain_error_response(refusal, graphql=is_graphql_path(scope["path"]))
        await response(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> list[Message] | DomainError | None:
    """The request's body messages; a PayloadTooLarge past `limit`; None when the client disconnects."""
    messages: list[Message] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        received += len(message.get("body", b""))
        if received > limit:
            return PayloadTooLarge(f"Request body over {limit} bytes")
        messages.append(message)
        if not message.get("more_body", False):
            return messages


def _replaying(body: list[Message], receive: Receive) -> Receive:
    """The body as it arrived, then the client's own messages (a disconnect)."""
    pending = list(body)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


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


def _with_security_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).raw.extend(SECURITY_HEADERS)
        await send(message)

    return send_with_headers
