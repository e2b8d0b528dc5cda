"""The Strawberry schema (target of `strawberry export-schema backend.gql.schema:schema`) and router."""

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import strawberry
from cross_web import HTTPException as StrawberryHTTPException
from fastapi import Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionContext, ExecutionResult

from backend.config import Settings, get_settings
from backend.errors import ERROR_RESPONSES, DomainError, as_domain_error, error_body
from backend.gql.context import get_context
from backend.gql.resolvers import Mutation, Query
from backend.gql.types import DateTime

logger = logging.getLogger(__name__)

# HTTP statuses for errors that concern the whole request rather than one field.
_REQUEST_LEVEL_CODES = {"UNAUTHENTICATED", "RATE_LIMITED", "SERVICE_UNAVAILABLE"}


class ErrorPolicy(SchemaExtension):
    """Domain errors keep their message and `extensions.code`; anything else is masked as INTERNAL.

    Parse, validation and variable errors (raised before any resolver, so without a path) are
    the client's: BAD_USER_INPUT, and HTTP 400 since the operation never ran (as GraphQL over
    HTTP has it for application/graphql-response+json). Missing auth, rate limits and an
    unreachable database also set the HTTP status and headers.
    """

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        result.errors = [self._apply(error) for error in result.errors]
        if _never_ran(result.data, result.errors):
            self._set_http_status(400)

    def _apply(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if original is None or error.path is None:
            if not (error.extensions or {}).get("code"):
                error.extensions = {**(error.extensions or {}), "code": "BAD_USER_INPUT"}
            return error
        domain_error = as_domain_error(original)
        if domain_error is None:
            logger.error("unexpected error in GraphQL resolver", exc_info=original)
            return GraphQLError(
                "Internal server error",
                error.nodes,
                error.source,
                error.positions,
                error.path,
                extensions={"code": "INTERNAL"},
            )
        if domain_error.code in _REQUEST_LEVEL_CODES:
            self._set_http_status(domain_error.status_code, domain_error.headers)
        if domain_error is original:
            return error
        return GraphQLError(
            domain_error.message,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            original_error=domain_error,
        )

    def _set_http_status(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        response: Response | None = getattr(self.execution_context.context, "response", None)
        if response is not None:
            response.status_code = status_code
            response.headers.update(headers or {})


class InBandParserCache(ParserCache):
    """ParserCache whose syntax and token-limit errors reach ErrorPolicy like validation errors do.

    ParserCache raises them from its hook, outside the operation, where no extension sees them
    (no code, HTTP 200). Left unparsed, the document is parsed again by Strawberry, in-band.
    """

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(context.query, **context.parse_options)
        yield


class QuietSchema(strawberry.Schema):
    """Strawberry logs every error with a traceback; ErrorPolicy logs only the unexpected ones."""

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        return None


def build_schema(settings: Settings) -> strawberry.Schema:
    extensions: list[Callable[[], SchemaExtension]] = [
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        functools.partial(InBandParserCache, maxsize=512),
        functools.partial(QueryDepthLimiter, max_depth=settings.graphql_max_depth),
        functools.partial(MaxAliasesLimiter, max_alias_count=settings.graphql_max_aliases),
        functools.partial(ValidationCache, maxsize=512),
        ErrorPolicy,
    ]
    if not settings.introspection_enabled:
        extensions.insert(0, DisableIntrospection)
    return QuietSchema(query=Query, mutation=Mutation, extensions=extensions, scalar_overrides={datetime: DateTime})


def _never_ran(data: object, errors: Sequence[GraphQLError] | None) -> bool:
    """Parse, validation or variable errors: no resolver ran, so no error has a path."""
    return bool(errors) and data is None and all(error.path is None for error in errors or ())


def _whole_request_failure(result: ExecutionResult) -> tuple[str, str] | None:
    """(code, message) when the response is an HTTP error rather than a GraphQL result with field errors."""
    errors = result.errors or []
    for error in errors:
        if isinstance(error.original_error, DomainError) and error.original_error.code in _REQUEST_LEVEL_CODES:
            return error.original_error.code, error.original_error.message
    if _never_ran(result.data, errors):
        return "BAD_USER_INPUT", "; ".join(error.message for error in errors)
    return None


class TodoGraphQLRouter(GraphQLRouter[Any, None]):
    """Strawberry's router, with its plain-text HTTP errors turned into the API's JSON errors."""

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        """A failure of the whole request (400, 401, 429, 503) also carries REST's `error` and `detail`."""
        body = await super().process_result(request, result)
        failure = _whole_request_failure(result)
        if failure is None:
            return body
        code, detail = failure
        return {"error": code, "detail": detail, **body}  # type: ignore[typeddict-unknown-key]

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return super().parse_json(data)
        except (UnicodeDecodeError, RecursionError) as exc:  # invalid UTF-8, absurd nesting: not a 500
            raise StrawberryHTTPException(400, "Unable to parse request body as JSON") from exc

    async def run(self, request: Any, context: Any = strawberry.UNSET, root_value: Any = strawberry.UNSET) -> Any:
        try:
            return await super().run(request, context=context, root_value=root_value)
        except StrawberryHTTPException as exc:
            code = "NOT_FOUND" if exc.status_code == 404 else "BAD_REQUEST"
            body = error_body(code, exc.reason, errors=[{"message": exc.reason, "extensions": {"code": code}}])
            return JSONResponse(body, status_code=exc.status_code)


def create_graphql_router(settings: Settings) -> GraphQLRouter[Any, None]:
    router = TodoGraphQLRouter(
        build_schema(settings),
        context_getter=get_context,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        tags=["graphql"],
        responses={status: ERROR_RESPONSES[status] for status in (400, 401, 413, 429, 503)},
    )
    # No subscriptions: Strawberry's websocket endpoint would only be a door that neither
    # authenticates nor rate-limits (its dependencies take an HTTP Request).
    router.routes[:] = [route for route in router.routes if not isinstance(route, APIWebSocketRoute)]
    for route in router.routes:
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            route.responses[200]["content"] = {"text/html": {}}  # the GraphiQL page (queries: JSON)
    return router


schema = build_schema(get_settings())
