"""Domain errors shared by both transports, and the REST handlers that render them."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from backend.observability import REQUEST_ID_HEADER, request_id_bound, request_id_of

logger = logging.getLogger(__name__)

RETRY_AFTER_DB_SECONDS = 5
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request the client abandoned; it never reaches anyone


class DomainError(Exception):
    """An expected outcome the client must see: status, a stable code and a readable message."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    default_message: ClassVar[str] = "Bad request"

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)

    @property
    def extensions(self) -> dict[str, Any]:
        # graphql-core copies `extensions` of the original error into the GraphQL error.
        return {"code": self.code}


# RFC 6750 3: error_description holds only %x20-21 / %x23-5B / %x5D-7E. Everything else, `%` included,
# is percent-encoded (UTF-8), so text taken from a token can never break or forge the header.
_AUTH_PARAM_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) not in '"\\%')


def auth_param_value(text: str) -> str:
    return quote(text, safe=_AUTH_PARAM_SAFE)


class Unauthenticated(DomainError):
    status_code = 401
    code = "UNAUTHENTICATED"
    default_message = "Missing bearer token"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        description = auth_param_value(self.message)
        self.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{description}"'


class Forbidden(DomainError):
    status_code = 403
    code = "FORBIDDEN"
    default_message = "You may only access your own tasks"


class QuotaExceeded(DomainError):
    status_code = 403
    code = "QUOTA_EXCEEDED"
    default_message = "Task quota reached: delete tasks before creating more"


class NotFound(DomainError):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "Task not found"


class Conflict(DomainError):
    status_code = 409
    code = "CONFLICT"
    default_message = "A request with this Idempotency-Key is still in progress"


class PreconditionFailed(DomainError):
    status_code = 412
    code = "PRECONDITION_FAILED"
    default_message = "The task has changed since you read it (If-Match does not match its ETag)"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body too large"


class InvalidInput(DomainError):
    status_code = 422
    code = "BAD_USER_INPUT"
    default_message = "Invalid input"


class RateLimited(DomainError):
    status_code = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests: retry in {retry_after} s", headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "The database is unavailable; retry shortly"

    def __init__(self, message: str | None = None, *, retry_after: int = RETRY_AFTER_DB_SECONDS) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def as_domain_error(exc: BaseException) -> DomainError | None:
    """Map infrastructure failures the client can retry (database down, pool exhausted) to 503."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, PoolTimeoutError):
        return ServiceUnavailable("The server is busy; retry shortly")
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    ):
        return ServiceUnavailable()
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | OSError):
        return ServiceUnavailable()
    if isinstance(exc, DBAPIError) and _is_connection_failure(exc.orig):
        return ServiceUnavailable()
    return None


def _is_connection_failure(orig: BaseException | None) -> bool:
    # asyncpg's connection and timeout errors (class 08, 57P0x, query_canceled) reach
    # SQLAlchemy as a generic DBAPIError.
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "57P", "53")) or sqlstate == "57014"


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def domain_error_response(exc: DomainError, *, graphql: bool = False) -> JSONResponse:
    body = error_body(exc.code, exc.message)
    if graphql:  # GraphQL clients look for `errors[].extensions.code`, even on a non-200 answer
        body["errors"] = [{"message": exc.message, "extensions": exc.extensions}]
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _is_graphql(request: Request) -> bool:
    return request.url.path.startswith("/graphql")


def readable_validation_errors(errors: Sequence[Any]) -> str:
    """`body.title: must not be blank; query.limit: ...` out of pydantic's error list."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
        if error.get("type") == "json_invalid":
            parts.append("Request body is not valid JSON")
            continue
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "Invalid input"


def _jsonable_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        for error in errors
    ]


async def _handle_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return domain_error_response(exc, graphql=_is_graphql(request))


async def _handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    return JSONResponse(
        error_body("BAD_USER_INPUT", readable_validation_errors(errors), errors=_jsonable_errors(errors)),
        status_code=422,
    )


_HTTP_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


async def _handle_http_exception(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    domain_error = as_domain_error(exc)
    if domain_error is not None:
        logger.warning("%s %s: %s (%s)", request.method, request.url.path, domain_error.message, exc.__class__.__name__)
        return domain_error_response(domain_error, graphql=_is_graphql(request))
    # This handler runs outside the request's middleware, so the request id comes from the scope.
    request_id = request_id_of(request)
    with request_id_bound(request_id):
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("INTERNAL", "Internal server error"), status_code=500, headers={REQUEST_ID_HEADER: request_id}
    )


async def _handle_client_disconnect(request: Request, _exc: Exception) -> Response:
    # The client went away while its body was read: nothing to answer, nothing went wrong here.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _handle_client_disconnect)
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    # Infrastructure failures get their own handlers: the catch-all `Exception` handler runs in
    # ServerErrorMiddleware, which re-raises after responding (a traceback per 503).
    for infrastructure_error in (DBAPIError, PoolTimeoutError, OSError, TimeoutError):
        app.add_exception_handler(infrastructure_error, _handle_unexpected)
    app.add_exception_handler(Exception, _handle_unexpected)


class ErrorResponse(BaseModel):
    """Every error body: a stable machine code and a readable `detail`."""

    error: str = Field(description="Stable code, the same as GraphQL's extensions.code", examples=["NOT_FOUND"])
    detail: str = Field(description="What went wrong, for people", examples=["Task not found"])


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Each invalid field (absent when the input is refused as a whole)"
    )


def _documented(description: str, model: type[BaseModel] = ErrorResponse) -> dict[str, Any]:
    return {"model": model, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Malformed request: a body that is not JSON, a path or query string that is not UTF-8"),
    401: _documented("Missing, malformed, expired or otherwise invalid bearer token"),
    403: _documented("The user id in the path is not yours; or, creating a task, the task quota is reached"),
    404: _documented("No such task, or not yours"),
    413: _documented("Request body over 64 KiB"),
    422: _documented("Invalid input", ValidationErrorResponse),
    429: _documented("Rate limit exceeded; see Retry-After"),
    503: _documented("Database unavailable; see Retry-After"),
}
