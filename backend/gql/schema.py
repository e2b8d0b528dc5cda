"""The Strawberry schema (target of `strawberry export-schema backend.gql.schema:schema`) and router."""

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import strawberry
from cross_web import HTTPException as StrawberryHTTPException
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
    get_operation_ast,
    specified_rules,
    validate,
)
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaxTokensLimiter, ParserCache, SchemaExtension
from strawberry.extensions.max_aliases import create_validator as alias_limit_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_limit_rule
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from backend.config import Settings, get_settings
from backend.errors import DomainError, Unauthenticated, as_domain_error
from backend.explorers import graphiql_response
from backend.gql.context import get_context
from backend.gql.resolvers import Mutation, Query
from backend.gql.types import DateTime
from backend.http_errors import ERROR_RESPONSES, error_body

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
        if result.errors and _never_ran(result.data, result.errors) and getattr(context_value, "anonymous", False):
            # Without a token, a document that never ran (parse or validation errors) is 401, as on REST.
            result.errors = [GraphQLError("Missing bearer token", original_error=Unauthenticated())]
        if result.errors:
            result.errors = [_apply_error_policy(error) for error in result.errors]
            request_error = _request_level_error(result.errors)
            if request_error is not None:
                _set_http_status(context_value, request_error.status_code, request_error.headers)
            elif _never_ran(result.data, result.errors):
                _set_http_status(context_value, 400)
        return result

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Strawberry logs every error with a traceback; the policy logs only the unexpected ones."""
        return None


def _apply_error_policy(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if error.path is None and not isinstance(original, DomainError):
        return _with_code(error, "BAD_USER_INPUT")
    if isinstance(original, GraphQLError) and original.nodes:
        # graphql-core refused an argument while executing (a null variable for a non-null argument):
        # its error points into the request document, so the request is at fault, not the server.
        return _with_code(
            GraphQLError(error.message, error.nodes, error.source, error.positions, error.path), "BAD_USER_INPUT"
        )
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


def _request_level_error(errors: Sequence[GraphQLError]) -> DomainError | None:
    """A failure of the whole request (no token, rate limit, database down): it sets the HTTP status."""
    for error in errors:
        if isinstance(error.original_error, DomainError) and error.original_error.code in _REQUEST_LEVEL_CODES:
            return error.original_error
    return None


def _whole_request_failure(result: ExecutionResult) -> tuple[str, str] | None:
    """(code, message) when the response is an HTTP error rather than a GraphQL result with field errors."""
    errors = result.errors or []
    request_error = _request_level_error(errors)
    if request_error is not None:
        return request_error.code, request_error.message
    if _never_ran(result.data, errors):
        return "BAD_USER_INPUT", "; ".join(error.message for error in errors)
    return None


INTROSPECTION_FIELDS = frozenset({"__schema", "__type", "__typename"})


def _introspection_only(document: DocumentNode, operation_name: str | None) -> bool:
    """Whether the chosen operation selects nothing but introspection at its root (fragments followed)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return False
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    visited: set[str] = set()

    def only_introspection(selection_set: SelectionSetNode) -> bool:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value not in INTROSPECTION_FIELDS:
                    return False
            elif isinstance(selection, InlineFragmentNode):
                if not only_introspection(selection.selection_set):
                    return False
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visited:
                    continue
                visited.add(name)
                fragment = fragments.get(name)
                if fragment is None or not only_introspection(fragment.selection_set):
                    return False
        return True

    return only_introspection(operation.selection_set)


class AuthenticationFirst(SchemaExtension):
    """A request without a token may only introspect (GraphiQL's docs): anything else is 401 before
    any argument is checked, as on REST. (A document that does not parse or validate is 401 too: see
    TodoSchema.execute.)"""

    def on_execute(self) -> Iterator[None]:
        execution_context = self.execution_context
        document = execution_context.graphql_document
        if execution_context.context.anonymous and (
            document is None or not _introspection_only(document, execution_context.operation_name)
        ):
            raise Unauthenticated("Missing bearer token")
        yield


class Validation(SchemaExtension):
    """graphql-core's validation with the API's limits, cached per document.

    Replaces Strawberry's own step so that suggestions ("Did you mean 'task'?") can be withheld: with
    introspection off they would enumerate the schema.
    """

    def __init__(self, validate_document: Callable[[GraphQLSchema, DocumentNode], list[GraphQLError]]) -> None:
        self._validate_document = validate_document

    def on_validate(self) -> Iterator[None]:
        execution_context = self.execution_context
        assert execution_context.graphql_document is not None
        execution_context.pre_execution_errors = self._validate_document(
            execution_context.schema._schema, execution_context.graphql_document
        )
        yield


def _document_validator(
    rules: tuple[type[ASTValidationRule], ...], *, hide_suggestions: bool
) -> Callable[[GraphQLSchema, DocumentNode], list[GraphQLError]]:
    @functools.lru_cache(maxsize=512)
    def validate_document(graphql_schema: GraphQLSchema, document: DocumentNode) -> list[GraphQLError]:
        return validate(graphql_schema, document, rules, hide_suggestions=hide_suggestions)

    return validate_document


class ExecutorWithoutSuggestions(StrawberryGraphQLCoreExecutionContext):
    """Variable coercion errors without "Did you mean ...?" (enum values would enumerate the schema)."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        return super().build(*args, **{**kwargs, "hide_suggestions": True})


def build_schema(settings: Settings) -> strawberry.Schema:
    # The rule classes are built once: QueryDepthLimiter / MaxAliasesLimiter would create new ones
    # for every request (so the validation cache would never hit).
    rules: list[type[ASTValidationRule]] = [
        *specified_rules,
        depth_limit_rule(settings.graphql_max_depth, None),
        alias_limit_rule(settings.graphql_max_aliases),
        MaybeNullValidationRule,
        OneOfInputValidationRule,
    ]
    if not settings.introspection_enabled:
        rules.append(NoSchemaIntrospectionCustomRule)
    hide_suggestions = not settings.introspection_enabled
    validate_document = _document_validator(tuple(rules), hide_suggestions=hide_suggestions)
    extensions: list[Callable[[], SchemaExtension]] = [
        functools.partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        functools.partial(ParserCache, maxsize=512),
        AuthenticationFirst,
        functools.partial(Validation, validate_document),
    ]
    return TodoSchema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        scalar_overrides={datetime: DateTime},
        execution_context_class=ExecutorWithoutSuggestions if hide_suggestions else None,
    )


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
