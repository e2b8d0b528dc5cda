"""The request rules GraphQL adds around Strawberry's execution, each a schema extension.

In order: only introspection runs without a token; validation (cached, suggestions withheld while
introspection is off); every root field and every list charged to the caller's rate budget before
anything runs; the request's database access closed when the operation ends. Extensions end a request
by setting its result, never by raising: the error policy (backend/gql/errors.py) then renders it.
"""

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    ListValueNode,
    SelectionNode,
    SelectionSetNode,
    VariableNode,
    get_operation_ast,
    parse,
    validate,
)
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from backend.errors import RateLimited, Unauthenticated
from backend.gql.errors import error_result
from backend.rate_limit import enforce_rate_limit

INTROSPECTION_FIELDS = frozenset({"__schema", "__type", "__typename"})
# Fields below the root that run a query of their own (batched per level, still a query each).
LIST_FIELDS = frozenset({"tasks"})
# Mutations on many tasks: each id counts.
BULK_FIELDS = frozenset({"completeTasks", "deleteTasks"})
MAX_COST = 1_000  # far above anything the depth and alias limits let through; a bound on the walk


class CachedParser(SchemaExtension):
    """Each document text parsed once (an LRU of 512), like Strawberry's ParserCache, except that a
    text that does not parse is left to Strawberry: it parses it again inside the operation and
    reports the error there, where ErrorPolicy sees it (a hook that raises would bypass the policy)."""

    def on_parse(self) -> Iterator[None]:
        execution_context = self.execution_context
        if execution_context.query:
            with contextlib.suppress(GraphQLError):
                execution_context.graphql_document = _parse(execution_context.query, **execution_context.parse_options)
        yield


_parse = functools.lru_cache(maxsize=512)(parse)


class AuthenticationFirst(SchemaExtension):
    """A request without a token may only introspect (GraphiQL's docs): anything else is 401 before
    any argument is checked, as on REST. (One that does not parse or validate is 401 too: see ErrorPolicy.)"""

    def on_execute(self) -> Iterator[None]:
        execution_context = self.execution_context
        document = execution_context.graphql_document
        if execution_context.context.anonymous and (
            document is None or not _introspection_only(document, execution_context.operation_name)
        ):
            execution_context.result = error_result(Unauthenticated("Missing bearer token"))
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


def document_validator(
    limit_rules: tuple[type[ASTValidationRule], ...],
    rules: tuple[type[ASTValidationRule], ...],
    *,
    hide_suggestions: bool,
) -> Callable[[GraphQLSchema, DocumentNode], list[GraphQLError]]:
    """Validation with a distinct code per kind of failure. The limits (depth, aliases) run first: they
    also bound the cost of the other rules, some of which grow with the square of the aliases."""

    @functools.lru_cache(maxsize=512)
    def validate_document(graphql_schema: GraphQLSchema, document: DocumentNode) -> list[GraphQLError]:
        too_complex = validate(graphql_schema, document, limit_rules, hide_suggestions=hide_suggestions)
        if too_complex:
            return [_coded(error, "QUERY_TOO_COMPLEX") for error in too_complex]
        invalid = validate(graphql_schema, document, rules, hide_suggestions=hide_suggestions)
        return [_coded(error, "GRAPHQL_VALIDATION_FAILED") for error in invalid]

    return validate_document


def _coded(error: GraphQLError, code: str) -> GraphQLError:
    error.extensions = {**(error.extensions or {}), "code": code}
    return error


class ExecutorWithoutSuggestions(StrawberryGraphQLCoreExecutionContext):
    """Variable coercion errors without "Did you mean ...?" (enum values would enumerate the schema)."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        return super().build(*args, **{**kwargs, "hide_suggestions": True})


class RequestCost(SchemaExtension):
    """Charge what the request will do: one unit per root field, per nested list and per id of a bulk
    mutation, before it runs.

    Authentication already charged one unit for the request itself. A budget that cannot cover the
    rest in full answers 429 and nothing runs.
    """

    async def on_execute(self) -> AsyncIterator[None]:
        execution_context = self.execution_context
        document = execution_context.graphql_document
        if execution_context.result is None and document is not None:
            cost = request_cost(document, execution_context.operation_name, execution_context.variables or {})
            try:
                await enforce_rate_limit(execution_context.context.request, cost=cost - 1)
            except RateLimited as exc:
                execution_context.result = error_result(exc)
        yield


class CloseDatabase(SchemaExtension):
    """When the operation ends, the request's database access closes (see `Database.close`)."""

    async def on_operation(self) -> AsyncIterator[None]:
        yield
        await self.execution_context.context.db.close()


def request_cost(document: DocumentNode, operation_name: str | None, variables: Mapping[str, Any]) -> int:
    """Root fields plus nested lists the operation selects, fragments followed, @skip/@include applied."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return 1
    fragments = _fragments(document)

    def cost(selection_set: SelectionSetNode, *, root: bool) -> int:
        total = 0
        for selection in selection_set.selections:
            if total >= MAX_COST or not _included(selection, variables):
                continue
            if isinstance(selection, FieldNode):
                name = selection.name.value
                if root and name in BULK_FIELDS:
                    total += max(1, _ids_given(selection, variables))
                else:
                    charged = (root and name not in INTROSPECTION_FIELDS) or (not root and name in LIST_FIELDS)
                    total += int(charged)
                if selection.selection_set is not None:
                    total += cost(selection.selection_set, root=False)
            elif isinstance(selection, InlineFragmentNode):
                total += cost(selection.selection_set, root=root)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
                total += cost(fragments[selection.name.value].selection_set, root=root)
        return min(total, MAX_COST)

    return max(1, cost(operation.selection_set, root=True))


def _ids_given(field: FieldNode, variables: Mapping[str, Any]) -> int:
    """How many ids a bulk mutation names, as a literal list or a variable (a single id counts one)."""
    for argument in field.arguments or ():
        if argument.name.value == "ids":
            value = argument.value
            if isinstance(value, VariableNode):
                given = variables.get(value.name.value)
                return len(given) if isinstance(given, list) else 1
            return len(value.values) if isinstance(value, ListValueNode) else 1
    return 1


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


def _included(selection: SelectionNode, variables: Mapping[str, Any]) -> bool:
    """@skip(if:) and @include(if:), literal or variable, as execution will apply them."""
    for directive in selection.directives or ():
        name = directive.name.value
        if name in ("skip", "include"):
            condition = _condition(directive, variables)
            if (name == "skip" and condition is True) or (name == "include" and condition is False):
                return False
    return True


def _condition(directive: DirectiveNode, variables: Mapping[str, Any]) -> object:
    for argument in directive.arguments or ():
        if argument.name.value == "if":
            value = argument.value
            return variables.get(value.name.value) if isinstance(value, VariableNode) else getattr(value, "value", None)
    return None


def _introspection_only(document: DocumentNode, operation_name: str | None) -> bool:
    """Whether the chosen operation selects nothing but introspection at its root (fragments followed)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return False
    fragments = _fragments(document)
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
