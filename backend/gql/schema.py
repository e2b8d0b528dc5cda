"""The Strawberry schema (target of `strawberry export-schema backend.gql.schema:schema`) and router."""

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import strawberry
from cross_web import HTTPException as StrawberryHTTPException
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from graphql import GraphQLError
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as alias_limit_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_limit_rule
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from backend.config import Settings, get_settings
from backend.errors import ERROR_RESPONSES, DomainError, as_domain_error, error_body
from backend.explorers import graphiql_response
from backend.gql.context import get_context
from backend.gql.resolvers import Mutation, Query
from backend.gql.types import DateTime

logger = logging.getLogger(__name__)

# HTTP statuses for errors that concern the whole request rather than one field.
_REQUEST_LEVEL_CODES = {"UNAUTHENTICATED", "RATE_LIMITED", "SERVICE_UNAVAILABLE"}


class TodoSchema(strawberry.Schema):
    """Applies the API's error policy to every result, whatever stage produced the errors.

    Domain errors keep their message and `extensions.code`; request errors (parse, validation,
    variables: no path) are BAD_USER_INPUT, with HTTP 400 when the operation never ran (as GraphQL
    over HTTP has it for application/graphql-response+json); anything else is logged and masked as
    INTERNAL. Missing auth, rate limits and an unreachable database also set the HTTP status and headers.
    """

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        result = await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed_operation_types,
            operation_extensions,
        )
        if result.errors:
            result.errors = [_apply_error_policy(error, context_value) for error in result.errors]
            if _never_ran(result.data, result.errors):
                _set_http_status(context_value, 400)
        return result

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Strawberry logs every error with a traceback; the policy logs only the unexpected ones."""
        return None


def _apply_error_policy(error: GraphQLError, context: Any) -> GraphQLError:
    original = error.original_error
    if error.path is None and not isinstance(original, DomainError):
        return _with_code(error, "BAD_USER_INPUT")
    domain_error = as_domain_error(original) if original is not None else None
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
        _set_http_status(context, domain_error.status_code, domain_error.headers)
    if domain_error is original:
        return error
    return GraphQLError(
        domain_error.message, error.nodes, error.source, error.positions, error.path, original_error=domain_error
    )


def _with_code(error: GraphQLError, code: str) -> GraphQLError:
    if not (error.extensions or {}).get("code"):
        error.extensions = {**(error.extensions or {}), "code": code}
    return error


def _set_http_status(context: Any, status_code: int, headers: dict[str, str] | None = None) -> None:
    response: Response | None = getattr(context, "response", None)
    if response is not None:
        response.status_code = status_code
        response.headers.update(headers or {})


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


def build_schema(settings: Settings) -> strawberry.Schema:
    # The rule classes are built once: ValidationCache keys on them, and QueryDepthLimiter /
    # MaxAliasesLimiter would create new ones for every request (so the cache would never hit).
    rules: list[type[ASTValidationRule]] = [
        depth_limit_rule(settings.graphql_max_depth, None),
        alias_limit_rule(settings.graphql_max_aliases),
    ]
    if not settings.introspection_enabled:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[Callable[[], SchemaExtension]] = [
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        functools.partial(ParserCache, maxsize=512),
        functools.partial(AddValidationRules, rules),
        functools.partial(ValidationCache, maxsize=512),
    ]
    return TodoSchema(query=Query, mutation=Mutation, extensions=extensions, scalar_overrides={datetime: DateTime})


class TodoGraphQLRouter(GraphQLRouter[Any, None]):
    """Strawberry's router, with its plain-text HTTP errors turned into the API's JSON errors,
    and GraphiQL served from this app's own assets instead of a CDN."""

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return graphiql_response(request)

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


def _graphql_operation_id(route: APIRoute) -> str:
    return f"graphql_{'_'.join(sorted(route.methods or ())).lower()}"


def create_graphql_router(settings: Settings) -> GraphQLRouter[Any, None]:
    router = TodoGraphQLRouter(
        build_schema(settings),
        context_getter=get_context,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        tags=["graphql"],
        generate_unique_id_function=_graphql_operation_id,
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
