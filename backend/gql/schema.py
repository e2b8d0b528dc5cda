"""The Strawberry schema (target of `strawberry export-schema backend.gql.schema:schema`) and its router."""

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import strawberry
from cross_web import HTTPException as StrawberryHTTPException
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from graphql import GraphQLError, specified_rules
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaxTokensLimiter, SchemaExtension
from strawberry.extensions.max_aliases import create_validator as alias_limit_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_limit_rule
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionContext, ExecutionResult

from backend.config import Settings, get_settings
from backend.explorers import graphiql_response
from backend.gql.compiled import CompiledExecution, Planner
from backend.gql.context import get_context
from backend.gql.errors import ErrorPolicy, mask_uncoded
from backend.gql.extensions import (
    AuthenticationFirst,
    CachedParser,
    CloseDatabase,
    ExecutorWithoutSuggestions,
    RequestCost,
    Validation,
    document_validator,
)
from backend.gql.resolvers import Mutation, Query
from backend.gql.types import DateTime
from backend.http_errors import GRAPHQL_ERROR_RESPONSES, graphql_error_body


class TodoSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Strawberry logs every error with a traceback; ErrorPolicy logs only the unexpected ones."""
        return None


def build_schema(settings: Settings) -> strawberry.Schema:
    # The rule classes are built once: QueryDepthLimiter / MaxAliasesLimiter would create new ones
    # for every request (so the validation cache would never hit).
    limit_rules = (depth_limit_rule(settings.graphql_max_depth, None), alias_limit_rule(settings.graphql_max_aliases))
    rules: list[type[ASTValidationRule]] = [*specified_rules, MaybeNullValidationRule, OneOfInputValidationRule]
    if not settings.introspection_enabled:
        rules.append(NoSchemaIntrospectionCustomRule)
    hide_suggestions = not settings.introspection_enabled
    validate_document = document_validator(limit_rules, tuple(rules), hide_suggestions=hide_suggestions)
    extensions: list[Callable[[], SchemaExtension]] = [
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        CachedParser,
        functools.partial(Validation, validate_document),
        AuthenticationFirst,
        RequestCost,
        # After the request rules, so it only runs what they let through; ErrorPolicy renders its errors too.
        functools.partial(CompiledExecution, Planner(hide_suggestions=hide_suggestions)),
        ErrorPolicy,
        CloseDatabase,
    ]
    return TodoSchema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        scalar_overrides={datetime: DateTime},
        execution_context_class=ExecutorWithoutSuggestions if hide_suggestions else None,
    )


class TodoGraphQLRouter(GraphQLRouter[Any, None]):
    """Strawberry's router, with its plain-text HTTP errors turned into GraphQL errors with a code,
    and GraphiQL served from this app's own assets instead of a CDN."""

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return graphiql_response(request)

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        if result.errors:
            result.errors = [mask_uncoded(error) for error in result.errors]
        return await super().process_result(request, result)

    def encode_json(self, data: object) -> str | bytes:
        try:
            return orjson.dumps(data)
        except TypeError:  # text orjson refuses (a lone surrogate): json escapes it, so never a 500
            return super().encode_json(data)

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
            return JSONResponse(graphql_error_body(exc.reason, {"code": code}), status_code=exc.status_code)


def _graphql_operation_id(route: APIRoute) -> str:
    return f"graphql_{'_'.join(sorted(route.methods or ())).lower()}"


def create_graphql_router(settings: Settings) -> GraphQLRouter[Any, None]:
    router = TodoGraphQLRouter(
        build_schema(settings),
        context_getter=get_context,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        tags=["graphql"],
        generate_unique_id_function=_graphql_operation_id,
        responses=GRAPHQL_ERROR_RESPONSES,
    )
    # No subscriptions: Strawberry's websocket endpoint would only be a door that neither
    # authenticates nor rate-limits (its dependencies take an HTTP Request).
    router.routes[:] = [route for route in router.routes if not isinstance(route, APIWebSocketRoute)]
    for route in router.routes:
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            route.responses[200]["content"] = {"text/html": {}}  # the GraphiQL page (queries: JSON)
    return router


schema = build_schema(get_settings())
