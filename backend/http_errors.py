"""The HTTP rendering of errors: the exception handlers and the error models in the OpenAPI document.

REST bodies are `{"error": CODE, "detail": "..."}`. A failure of a whole /graphql request answered
here (no token, rate limit, body too large, database down) is a GraphQL response instead: only
`errors`, each with `extensions.code`, whatever the HTTP status.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from backend.errors import DomainError, as_domain_error, readable_validation_errors
from backend.observability import REQUEST_ID_HEADER, request_id_bound, request_id_of

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request the client abandoned; it never reaches anyone


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def graphql_error_body(message: str, extensions: dict[str, Any]) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": extensions}]}


def domain_error_response(exc: DomainError, *, graphql: bool = False) -> JSONResponse:
    body = graphql_error_body(exc.message, exc.extensions) if graphql else error_body(exc.code, exc.message)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def is_graphql_path(path: str) -> bool:
    return path == "/graphql" or path.startswith("/graphql/")


def _is_graphql(request: Request) -> bool:
    return is_graphql_path(request.url.path)


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


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, detail = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR"), str(exc.detail)
    body = graphql_error_body(detail, {"code": code}) if _is_graphql(request) else error_body(code, detail)
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    domain_error = as_domain_error(exc)
    if domain_error is not None:
        logger.warning("%s %s: %s (%s)", request.method, request.url.path, domain_error.message, exc.__class__.__name__)
        return domain_error_response(domain_error, graphql=_is_graphql(request))
    # This handler runs outside the request's middleware, so the request id comes from the scope.
    request_id = request_id_of(request)
    with request_id_bound(request_id):
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "Internal server error"
    body = (
        graphql_error_body(message, {"code": "INTERNAL"}) if _is_graphql(request) else error_body("INTERNAL", message)
    )
    return JSONResponse(body, status_code=500, headers={REQUEST_ID_HEADER: request_id})


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


class GraphQLErrorExtensions(BaseModel, extra="allow"):
    code: str = Field(description="Stable code, the same as REST's `error`", examples=["UNAUTHENTICATED"])


class GraphQLError(BaseModel, extra="allow"):
    message: str = Field(description="What went wrong, for people")
    extensions: GraphQLErrorExtensions


class GraphQLErrorResponse(BaseModel):
    """A GraphQL request refused as a whole: the spec's response shape, with `data` null or absent."""

    data: None = None
    errors: list[GraphQLError] = Field(min_length=1)
    extensions: dict[str, Any] | None = None


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


# /graphql answers errors in GraphQL's own shape (CONTRACT.md, "GraphQL for the chatbot").
GRAPHQL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Unparsable, invalid or too complex operation; a body that is not JSON", GraphQLErrorResponse),
    404: _documented("A GET without a query while GraphiQL is off", GraphQLErrorResponse),
    **{
        status: _documented(ERROR_RESPONSES[status]["description"], GraphQLErrorResponse)
        for status in (401, 413, 429, 503)
    },
}
