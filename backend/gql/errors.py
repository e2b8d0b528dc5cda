"""GraphQL's error policy, as a schema extension (the hook Strawberry's MaskErrors uses).

Domain errors keep their message and `extensions.code`. Request errors (parse, validation, variables:
no path) are BAD_USER_INPUT, with HTTP 400 when the operation never ran (as GraphQL over HTTP has it
for application/graphql-response+json). Anything else is logged and masked as INTERNAL. A missing
token, a spent rate budget and an unreachable database also set the HTTP status and headers.
"""

import logging
import re
from collections.abc import AsyncIterator, Sequence

from fastapi import Response
from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult

from backend.errors import DomainError, Unauthenticated, as_domain_error

logger = logging.getLogger(__name__)

# Errors that concern the whole request rather than one field: they decide the HTTP status.
REQUEST_LEVEL_CODES = frozenset({"UNAUTHENTICATED", "RATE_LIMITED", "SERVICE_UNAVAILABLE"})


def error_result(error: DomainError) -> ExecutionResult:
    """A result that ends the request before execution (extensions set it instead of raising)."""
    return ExecutionResult(data=None, errors=[GraphQLError(error.message, original_error=error)])


class ErrorPolicy(SchemaExtension):
    async def on_operation(self) -> AsyncIterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        context = self.execution_context.context
        errors: Sequence[GraphQLError] = result.errors
        if context.anonymous and never_ran(result.data, errors):
            # Without a token, a document that never ran (parse or validation errors) is 401, as on REST.
            errors = error_result(Unauthenticated("Missing bearer token")).errors or []
        result.errors = [apply_error_policy(error) for error in errors]
        request_error = request_level_error(result.errors)
        if request_error is not None:
            _set_http_status(context.response, request_error.status_code, request_error.headers)
        elif never_ran(result.data, result.errors):
            _set_http_status(context.response, 400)


def apply_error_policy(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(error, GraphQLSyntaxError):
        too_many_tokens = "tokens" in error.message and "Parsing aborted" in error.message
        return _with_code(error, "QUERY_TOO_COMPLEX" if too_many_tokens else "GRAPHQL_PARSE_FAILED")
    if error.path is None and not isinstance(original, DomainError):
        # Validation tagged its own errors; what is left never ran: variables that do not fit their types.
        return _with_fields(_with_code(error, "BAD_USER_INPUT"))
    if isinstance(original, GraphQLError) and original.nodes:
        # graphql-core refused an argument while executing (a null variable for a non-null argument):
        # its error points into the request document, so the request is at fault, not the server.
        refused = GraphQLError(error.message, error.nodes, error.source, error.positions, error.path)
        return _with_fields(_with_code(refused, "BAD_USER_INPUT"))
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


# graphql-core's words for a variable that does not fit ("Variable '$input' has invalid value at
# .tags[0]: ...") and an argument it refuses while executing ("Argument 'id' of non-null type ...").
_VARIABLE_ERROR = re.compile(r"^Variable '\$(?P<name>\w+)' [^:]*?(?: at (?P<at>[^:]+))?:")
_PATH_PART = re.compile(r"\.(\w+)|\[(\d+)\]")
_ARGUMENT_ERROR = re.compile(r"^Argument '(?P<name>\w+)'")


def _with_fields(error: GraphQLError) -> GraphQLError:
    """BAD_USER_INPUT names each invalid field: for a variable, its name and where inside it."""
    extensions = error.extensions or {}
    if extensions.get("code") != "BAD_USER_INPUT" or "fields" in extensions:
        return error
    path: list[str | int] = []
    if (variable := _VARIABLE_ERROR.match(error.message)) is not None:
        inside = _PATH_PART.findall(variable["at"] or "")
        path = [variable["name"], *(key or int(index) for key, index in inside)]
    elif (argument := _ARGUMENT_ERROR.match(error.message)) is not None:
        path = [argument["name"]]
    error.extensions = {**(error.extensions or {}), "fields": [{"path": path, "message": error.message}]}
    return error


def _with_code(error: GraphQLError, code: str) -> GraphQLError:
    if not (error.extensions or {}).get("code"):
        error.extensions = {**(error.extensions or {}), "code": code}
    return error


def _set_http_status(response: Response | None, status_code: int, headers: dict[str, str] | None = None) -> None:
    if response is not None:
        response.status_code = status_code
        response.headers.update(headers or {})


def never_ran(data: object, errors: Sequence[GraphQLError] | None) -> bool:
    """Parse, validation or variable errors: no resolver ran, so no error has a path."""
    return bool(errors) and data is None and all(error.path is None for error in errors or ())


def request_level_error(errors: Sequence[GraphQLError]) -> DomainError | None:
    """A failure of the whole request (no token, rate limit, database down): it sets the HTTP status."""
    for error in errors:
        if isinstance(error.original_error, DomainError) and error.original_error.code in REQUEST_LEVEL_CODES:
            return error.original_error
    return None


def mask_uncoded(error: GraphQLError) -> GraphQLError:
    """The last line of defence: an error that escaped ErrorPolicy (an exception Strawberry turned into
    a result after the operation ended) is logged and masked, never shown as it is."""
    if (error.extensions or {}).get("code"):
        return error
    logger.error("GraphQL error outside the error policy: %s", error.message, exc_info=error.original_error)
    return GraphQLError(
        "Internal server error", error.nodes, error.source, error.positions, error.path, extensions={"code": "INTERNAL"}
    )
