"""Compiled GraphQL execution: each validated operation planned once, then run without graphql-core's
per-field machinery.

A plan is built per (document, operation name), after parsing, validation, the request limits and
the rate charge (the extension runs last of the request rules). It keeps graphql-core's semantics by
using graphql-core for every decision that could differ:

- fields are grouped by graphql-core's `collect_fields` (fragments, aliases, merged response keys,
  @skip/@include); the grouping only depends on the variables through the @skip/@include outcomes,
  so it is kept per set of outcomes;
- variables are coerced by `get_variable_values` (a request whose variables do not fit is left to
  graphql-core, which reports it), arguments by `get_argument_values` per field at run time;
- leaves are serialized by their GraphQL type's `coerce_output_value`;
- the executor below follows graphql-core's `Executor` step by step (sibling query fields gathered,
  mutation fields one after the other, `located_error` at the response path, null propagation to the
  nearest nullable parent, errors under a nulled position dropped), so results, errors and their
  order are the same.

What it runs is what Strawberry's resolvers run: the field operations (backend/gql/operations.py),
the request's DataLoaders, and the projections of the service's rows (backend/gql/types.py).

Left to graphql-core, as before: introspection (__schema, __type); directives other than @skip and
@include, and any on the operation; subscriptions; experimental fragment arguments; interfaces, unions
and types with is_type_of; input objects inside lists or other input objects; a field with neither an
operation nor a projection; an operation over MAX_PLANNED_FIELDS fields; and, per request, variables
that do not fit and conditions graphql-core refuses (it reports them itself).
backend/tests/test_gql_compiled.py checks plans against graphql-core on the same requests.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from inspect import iscoroutine
from typing import TYPE_CHECKING, Any, Final

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    is_input_object_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    located_error,
)
from graphql.execution.collect_fields import (
    CollectFieldsContext,
    FieldDetails,
    FragmentDetails,
    collect_fields,
    collect_subfields,
    should_include_node,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from graphql.pyutils import Path, Undefined, gather_with_cancel, inspect, is_iterable
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types import ExecutionResult

from backend.gql import operations
from backend.gql.types import TASK_FIELDS, TASK_PAGE_FIELDS, USER_FIELDS

if TYPE_CHECKING:
    import strawberry

    from backend.gql.context import Context

MAX_PLANS: Final = 256  # operations kept (an LRU); documents are already bounded by the limits
MAX_VARIANTS: Final = 16  # per operation: sets of @skip/@include outcomes kept
MAX_PLANNED_FIELDS: Final = 1_000  # a larger plan (fragments spread many times) is left to graphql-core
# All plans together: a planned field takes about 1.7 kB, so the cache stays under some 35 MB whatever
# the documents (common operations plan tens of fields: the LRU's length is what limits them).
MAX_CACHED_FIELDS: Final = 20_000
MAX_VARIABLE_ERRORS: Final = 50  # graphql-core's default, which Strawberry keeps
INTROSPECTION_ROOTS: Final = frozenset({"__schema", "__type"})
CONDITIONS: Final = frozenset({"skip", "include"})

Resolver = Callable[["Context", Any, dict[str, Any]], Awaitable[Any]]

# Fields that run an operation, as Strawberry's resolvers do (same functions, same arguments).
FIELD_OPERATIONS: Final[dict[tuple[str, str], Resolver]] = {
    ("Query", "me"): lambda context, _root, _arguments: operations.me(context),
    ("Query", "task"): lambda context, _root, arguments: operations.task(context, **arguments),
    ("Query", "tasks"): lambda context, _root, arguments: operations.tasks(context, **arguments),
    ("User", "tasks"): lambda context, user, arguments: operations.tasks(context, user_id=user.id, **arguments),
    ("Task", "owner"): lambda context, task, _arguments: operations.owner(context, user_id=task.user_id),
    ("Mutation", "createTask"): lambda context, _root, arguments: operations.create_task(context, **arguments),
    ("Mutation", "updateTask"): lambda context, _root, arguments: operations.update_task(context, **arguments),
    ("Mutation", "completeTask"): lambda context, _root, arguments: operations.complete_task(context, **arguments),
    ("Mutation", "toggleTask"): lambda context, _root, arguments: operations.toggle_task(context, **arguments),
    ("Mutation", "deleteTask"): lambda context, _root, arguments: operations.delete_task(context, **arguments),
    ("Mutation", "completeTasks"): lambda context, _root, arguments: operations.complete_tasks(context, **arguments),
    ("Mutation", "deleteTasks"): lambda context, _root, arguments: operations.delete_tasks(context, **arguments),
}
# Every other field reads the domain object the way from_model does, by the field's Python name.
PROJECTIONS: Final[dict[str, Mapping[str, Callable[[Any], Any]]]] = {
    "Task": TASK_FIELDS,
    "TaskPage": TASK_PAGE_FIELDS,
    "User": USER_FIELDS,
}


class NotPlannable(Exception):
    """The operation uses something the planner leaves to graphql-core."""


# --- Plans -----------------------------------------------------------------------------------------

# Completes a field's value as graphql-core's complete_value does: (run, value, path of the field).
Completer = Callable[["Run", Any, Path | None], Any]
# A leaf (or a list of leaves) read from the row: response key, projection, regular completion.
Leaf = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]


class FieldPlan:
    """One response key of a selection set: its merged field nodes and how to produce its value."""

    __slots__ = (
        "complete",
        "convert_arguments",
        "field_def",
        "first_node",
        "has_arguments",
        "key",
        "leaf",
        "needs_path",
        "nodes",
        "parent_name",
        "project",
        "resolve",
        "return_type",
    )

    def __init__(
        self,
        key: str,
        nodes: list[FieldNode],
        parent_name: str,
        field_def: GraphQLField,
        *,
        project: Callable[[Any], Any] | None,
        resolve: Resolver | None,
        convert_arguments: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.key = key
        self.nodes = nodes
        self.first_node = nodes[0]
        self.parent_name = parent_name
        self.field_def = field_def
        self.return_type: GraphQLOutputType = field_def.type
        self.project = project
        self.resolve = resolve
        self.convert_arguments = convert_arguments
        self.has_arguments = bool(field_def.args or self.first_node.arguments)
        # Leaves are completed without a path (it is only built for an error); lists and objects need it.
        nullable_type = get_nullable_type(self.return_type)
        self.needs_path = not is_leaf_type(nullable_type)
        self.leaf: Leaf | None = None
        regular = _regular_completion(self.return_type)
        if project is not None and regular is not None:
            self.leaf = (key, project, regular)
        self.complete: Completer = _not_planned  # the planner sets it once the field exists


class SelectionPlan:
    """A selection set on one object type, fields grouped in response order."""

    __slots__ = ("fields", "leaves", "type_name")

    def __init__(self, type_name: str, fields: list[FieldPlan]) -> None:
        self.type_name = type_name
        self.fields = fields
        # Only leaves read from the row: projected in one loop (see _project_leaves).
        leaves = [field.leaf for field in fields]
        self.leaves: tuple[Leaf, ...] | None = None if None in leaves else tuple(leaves)  # type: ignore[arg-type]


class OperationPlan:
    """An operation of a document: its @skip/@include conditions and a selection plan per outcome."""

    def __init__(
        self,
        schema: GraphQLSchema,
        operation: OperationDefinitionNode,
        fragments: dict[str, FragmentDetails],
        conditions: list[Any],
        name_converter: Any,
        hide_suggestions: bool,
    ) -> None:
        self.schema = schema
        self.operation = operation
        self.fragments = fragments
        self.conditions = conditions
        self.name_converter = name_converter
        self.hide_suggestions = hide_suggestions
        self.serially = operation.operation == OperationType.MUTATION
        root_type = schema.get_root_type(operation.operation)
        assert root_type is not None  # validation refuses an operation the schema has no root for
        self.root_type = root_type
        # Per set of @skip/@include outcomes: the plan (None: not plannable) and how many fields it has.
        self._variants: dict[tuple[bool, ...], tuple[SelectionPlan | None, int]] = {}
        self.planned_fields = 0  # of all variants kept

    def root_selection(self, variables: VariableValues) -> SelectionPlan | None:
        """The plan for these variables' @skip/@include outcomes; None: let graphql-core run it."""
        context = self._collect_context(variables)
        try:
            outcome = tuple(should_include_node(context, node, variables) for node in self.conditions)
        except GraphQLError:  # a condition graphql-core refuses: it reports that itself
            return None
        variant = self._variants.get(outcome)
        if variant is None:
            builder = _Builder(self, variables)
            try:
                variant = (builder.root(), builder.planned)
            except (NotPlannable, RecursionError):
                variant = (None, 0)
            if len(self._variants) >= MAX_VARIANTS:
                self.planned_fields -= self._variants.pop(next(iter(self._variants)))[1]
            self._variants[outcome] = variant
            self.planned_fields += variant[1]
        return variant[0]

    def _collect_context(self, variables: VariableValues) -> CollectFieldsContext:
        return CollectFieldsContext(
            self.schema,
            self.fragments,
            variables,
            self.operation,
            self.root_type,
            {},
            self.hide_suggestions,
            [],
            False,
        )


class _Builder:
    """Turns graphql-core's collected fields into FieldPlans, for one set of @skip/@include outcomes."""

    def __init__(self, plan: OperationPlan, variables: VariableValues) -> None:
        self.plan = plan
        self.variables = variables
        self.planned = 0

    def root(self) -> SelectionPlan:
        plan = self.plan
        collected = collect_fields(
            plan.schema, plan.fragments, self.variables, plan.root_type, plan.operation, plan.hide_suggestions
        )
        return self.selection(plan.root_type, collected.grouped_field_set)

    def selection(self, parent_type: GraphQLObjectType, grouped: Mapping[str, list[FieldDetails]]) -> SelectionPlan:
        fields = [self.field(parent_type, key, details) for key, details in grouped.items()]
        return SelectionPlan(parent_type.name, fields)

    def field(self, parent_type: GraphQLObjectType, key: str, details: list[FieldDetails]) -> FieldPlan:
        self.planned += 1
        if self.planned > MAX_PLANNED_FIELDS:
            raise NotPlannable("too many fields")
        nodes = [detail.node for detail in details]
        name = nodes[0].name.value
        field_def = self.plan.schema.get_field(parent_type, name)
        if field_def is None or name in INTROSPECTION_ROOTS:
            raise NotPlannable(name)
        resolve = FIELD_OPERATIONS.get((parent_type.name, name))
        project = None if resolve is not None else self.projection(parent_type, name, field_def)
        field = FieldPlan(
            key,
            nodes,
            parent_type.name,
            field_def,
            project=project,
            resolve=resolve,
            convert_arguments=self.argument_converter(field_def) if resolve is not None else dict,
        )
        field.complete = self.completer(field, field.return_type, details)
        return field

    def projection(self, parent_type: GraphQLObjectType, name: str, field_def: GraphQLField) -> Callable[[Any], Any]:
        if name == "__typename":
            type_name = parent_type.name
            return lambda _source: type_name
        definition = field_def.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        projection = PROJECTIONS.get(parent_type.name, {})
        python_name = getattr(definition, "python_name", "")
        if python_name not in projection:
            raise NotPlannable(f"{parent_type.name}.{name}")
        return projection[python_name]

    def argument_converter(self, field_def: GraphQLField) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """graphql-core's argument values under the resolver's Python names; an input object as the dict
        of its fields the client sent, under their Python names (what `provided_fields` gives)."""
        definition = field_def.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
        converter = self.plan.name_converter
        python_names = {converter.from_argument(argument): argument.python_name for argument in definition.arguments}
        inputs: dict[str, dict[str, str]] = {}
        for name, argument in field_def.args.items():
            argument_type = get_nullable_type(argument.type)
            if is_input_object_type(argument_type):
                inputs[name] = self.input_names(argument_type)
            elif is_input_object_type(get_named_type(argument.type)):
                raise NotPlannable(f"list of {argument_type}")

        def convert(arguments: dict[str, Any]) -> dict[str, Any]:
            converted = {}
            for name, value in arguments.items():
                fields = inputs.get(name)
                if fields is not None and value is not None:
                    value = {fields[field]: field_value for field, field_value in value.items()}
                converted[python_names[name]] = value
            return converted

        return convert

    def input_names(self, input_type: GraphQLInputObjectType) -> dict[str, str]:
        definition = input_type.extensions[GraphQLCoreConverter.DEFINITION_BACKREF]
        python_names = {self.plan.name_converter.from_field(field): field.python_name for field in definition.fields}
        names = {}
        for name, field in input_type.fields.items():
            if is_input_object_type(get_named_type(field.type)):
                raise NotPlannable(f"nested input {input_type.name}.{name}")
            names[field.out_name or name] = python_names[name]
        return names

    def completer(self, field: FieldPlan, type_: GraphQLOutputType, details: list[FieldDetails]) -> Completer:
        """complete_value for one return type, with the selection planned once."""
        if is_non_null_type(type_):
            inner_type = type_.of_type
            if is_leaf_type(inner_type):
                return _non_null_leaf_completer(field, inner_type)
            return _non_null_completer(field, self.completer(field, inner_type, details))
        if is_list_type(type_):
            item_type = type_.of_type
            return _list_completer(field, item_type, self.completer(field, item_type, details))
        if is_leaf_type(type_):
            return _leaf_completer(type_)
        if is_object_type(type_) and type_.is_type_of is None:
            grouped = collect_subfields(
                self.plan.schema,
                self.plan.fragments,
                self.variables,
                self.plan.operation,
                type_,
                details,
                self.plan.hide_suggestions,
            ).grouped_field_set
            return _object_completer(self.selection(type_, grouped))
        raise NotPlannable(str(type_))


def plan_operation(
    schema: "strawberry.Schema", document: DocumentNode, operation_name: str | None, *, hide_suggestions: bool
) -> OperationPlan:
    """The plan of a validated operation, or NotPlannable."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation not in (OperationType.QUERY, OperationType.MUTATION):
        raise NotPlannable("operation")
    if operation.directives:
        raise NotPlannable("operation directives")
    definitions = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    if any(definition.variable_definitions for definition in definitions.values()):
        raise NotPlannable("fragment variables")
    conditions: list[Any] = []
    _check_selections(operation.selection_set, definitions, conditions, set())
    fragments = {name: FragmentDetails(definition) for name, definition in definitions.items()}
    return OperationPlan(
        schema._schema, operation, fragments, conditions, schema.config.name_converter, hide_suggestions
    )


def _check_selections(
    selection_set: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    conditions: list[Any],
    visited: set[str],
) -> None:
    """Refuse what the planner does not handle; list every node carrying @skip/@include."""
    for selection in selection_set.selections:
        directives = selection.directives or ()
        if any(directive.name.value not in CONDITIONS for directive in directives):
            raise NotPlannable("directive")
        if directives:
            conditions.append(selection)
        if isinstance(selection, FieldNode):
            if selection.name.value in INTROSPECTION_ROOTS:
                raise NotPlannable("introspection")
            if selection.selection_set is not None:
                _check_selections(selection.selection_set, fragments, conditions, visited)
        elif isinstance(selection, InlineFragmentNode):
            _check_selections(selection.selection_set, fragments, conditions, visited)
        elif isinstance(selection, FragmentSpreadNode):
            if selection.arguments:
                raise NotPlannable("fragment arguments")
            name = selection.name.value
            if name not in visited and name in fragments:
                visited.add(name)
                _check_selections(fragments[name].selection_set, fragments, conditions, visited)


# --- Completion (graphql-core's complete_value, specialised per return type once) ------------------


def _leaf_completer(leaf_type: Any) -> Completer:
    coerce = leaf_type.coerce_output_value

    def complete_leaf(_run: "Run", value: Any, _path: Path | None) -> Any:
        if isinstance(value, Exception):
            raise value
        if value is None or value is Undefined:
            return None
        coerced = coerce(value)
        if coerced is Undefined or coerced is None:
            raise TypeError(_leaf_message(leaf_type, value, coerced))
        return coerced

    return complete_leaf


def _not_planned(_run: "Run", _value: Any, _path: Path | None) -> Any:
    raise AssertionError("field completed before it was planned")


def _leaf_message(leaf_type: Any, value: Any, coerced: Any) -> str:
    return (
        f"Expected `{inspect(leaf_type)}.coerce_output_value({inspect(value)})` to return non-nullable value,"
        f" returned: {inspect(coerced)}"
    )


def _non_null_message(field: FieldPlan) -> str:
    return f"Cannot return null for non-nullable field {field.parent_name}.{field.first_node.name.value}."


def _non_null_leaf_completer(field: FieldPlan, leaf_type: Any) -> Completer:
    """NonNull around a leaf, in one step (the common case: most fields are `String!`, `ID!`, ...)."""
    coerce = leaf_type.coerce_output_value
    null_message = _non_null_message(field)

    def complete_non_null_leaf(_run: "Run", value: Any, _path: Path | None) -> Any:
        if isinstance(value, Exception):
            raise value
        if value is None or value is Undefined:
            raise TypeError(null_message)
        coerced = coerce(value)
        if coerced is Undefined or coerced is None:
            raise TypeError(_leaf_message(leaf_type, value, coerced))
        return coerced

    return complete_non_null_leaf


def _non_null_completer(field: FieldPlan, inner: Completer) -> Completer:
    null_message = _non_null_message(field)

    def complete_non_null(run: "Run", value: Any, path: Path | None) -> Any:
        completed = inner(run, value, path)
        if completed is None:
            raise TypeError(null_message)
        return completed

    return complete_non_null


def _object_completer(selection: SelectionPlan) -> Completer:
    def complete_object(run: "Run", value: Any, path: Path | None) -> Any:
        if isinstance(value, Exception):
            raise value
        if value is None or value is Undefined:
            return None
        return execute_fields(run, selection, value, path)

    return complete_object


def _list_completer(field: FieldPlan, item_type: GraphQLOutputType, complete_item: Completer) -> Completer:
    not_iterable = (
        f"Expected Iterable, but did not find one for field '{field.parent_name}.{field.first_node.name.value}'."
    )
    item_needs_path = not is_leaf_type(get_nullable_type(item_type))

    def complete_list(run: "Run", value: Any, path: Path | None) -> Any:
        if isinstance(value, Exception):
            raise value
        if value is None or value is Undefined:
            return None
        if not is_iterable(value):
            raise GraphQLError(not_iterable)
        assert path is not None
        return _complete_items(run, field, item_type, complete_item, item_needs_path, value, path)

    return complete_list


def _complete_items(
    run: "Run",
    field: FieldPlan,
    item_type: GraphQLOutputType,
    complete_item: Completer,
    item_needs_path: bool,
    items: Iterable[Any],
    path: Path,
) -> Any:
    """graphql-core's complete_iterable_value (items are never awaitable here: they are rows)."""
    completed_results: list[Any] = []
    awaitable_indices: list[int] = []
    try:
        for index, item in enumerate(items):
            item_path = Path(path, index, None) if item_needs_path else None
            try:
                completed_item = complete_item(run, item, item_path)
                if iscoroutine(completed_item):
                    item_path = item_path or Path(path, index, None)
                    completed_item = _await_list_item(run, field, item_type, completed_item, item_path)
                    awaitable_indices.append(index)
            except Exception as raw_error:
                run.handle_field_error(raw_error, item_type, field, item_path or Path(path, index, None))
                completed_item = None
            completed_results.append(completed_item)
    except Exception:
        run.settle_in_background([completed_results[index] for index in awaitable_indices])
        raise
    if not awaitable_indices:
        return completed_results
    return _gather_items(completed_results, awaitable_indices)


async def _await_list_item(
    run: "Run", field: FieldPlan, item_type: GraphQLOutputType, completed: Awaitable[Any], item_path: Path
) -> Any:
    try:
        return await completed
    except Exception as raw_error:
        run.handle_field_error(raw_error, item_type, field, item_path)
        return None


async def _gather_items(completed_results: list[Any], awaitable_indices: list[int]) -> list[Any]:
    if len(awaitable_indices) == 1:
        index = awaitable_indices[0]
        completed_results[index] = await completed_results[index]
    else:
        awaited = await gather_with_cancel(*(completed_results[index] for index in awaitable_indices))
        for index, result in zip(awaitable_indices, awaited, strict=True):
            completed_results[index] = result
    return completed_results


# --- Execution (graphql-core's execute_fields / execute_field) -------------------------------------


class Run:
    """One request's execution: its context, variables and the errors collected so far."""

    __slots__ = ("_background", "_error_positions", "context", "errors", "hide_suggestions", "variables")

    def __init__(self, context: "Context", variables: VariableValues, *, hide_suggestions: bool) -> None:
        self.context = context
        self.variables = variables
        self.hide_suggestions = hide_suggestions
        self.errors: list[GraphQLError] = []
        self._error_positions: set[Path | None] = set()
        self._background: set[asyncio.Future[Any]] = set()

    async def execute(self, root: SelectionPlan, *, serially: bool) -> ExecutionResult:
        try:
            if serially:
                data: dict[str, Any] | None = await _execute_fields_serially(self, root)
            else:
                completed = execute_fields(self, root, None, None)
                data = await completed if iscoroutine(completed) else completed
        except GraphQLError as error:
            self.add_error(error, None)
            data = None
        return ExecutionResult(data=data, errors=self.errors or None)

    def handle_field_error(
        self, raw_error: Exception, return_type: GraphQLOutputType, field: FieldPlan, path: Path
    ) -> None:
        error = located_error(raw_error, field.nodes, path.as_list())
        if is_non_null_type(return_type):
            raise error
        self.add_error(error, path)

    def add_error(self, error: GraphQLError, path: Path | None) -> None:
        """graphql-core's CollectedErrors.add: nothing is added under a position already nulled."""
        positions = self._error_positions
        at = path
        while at is not None:
            if at in positions:
                return
            at = at.prev
        if None in positions:
            return
        positions.add(path)
        self.errors.append(error)

    def settle_in_background(self, awaitables: list[Any]) -> None:
        """Pending siblings of a field that failed synchronously still run to their end (as in graphql-core)."""
        if awaitables:
            future = asyncio.gather(*awaitables, return_exceptions=True)
            self._background.add(future)
            future.add_done_callback(self._background.discard)


def execute_fields(run: Run, selection: SelectionPlan, source: Any, path: Path | None) -> Any:
    """A selection set's fields; those that wait (operations) run concurrently, as graphql-core gathers them."""
    if selection.leaves is not None:
        projected = _project_leaves(selection.leaves, source)
        if projected is not None:
            return projected
    results: dict[str, Any] = {}
    awaitable_keys: list[str] = []
    type_name = selection.type_name
    try:
        for field in selection.fields:
            completed = _execute_field(run, field, source, path, type_name)
            results[field.key] = completed
            if iscoroutine(completed):
                awaitable_keys.append(field.key)
    except Exception:
        run.settle_in_background([results[key] for key in awaitable_keys])
        raise
    if not awaitable_keys:
        return results
    return _gather_fields(results, awaitable_keys)


class _Irregular(Exception):
    """A value the general path must complete (it reports it as graphql-core does)."""


def _regular_completion(type_: GraphQLOutputType) -> Callable[[Any], Any] | None:
    """For a leaf or a list of leaves: its completion when the value is regular (present where required,
    serializable), raising _Irregular otherwise; None for other types."""
    non_null = is_non_null_type(type_)
    nullable_type = get_nullable_type(type_)
    if is_leaf_type(nullable_type):
        coerce = nullable_type.coerce_output_value

        def complete_leaf(value: Any) -> Any:
            if value is None:
                if non_null:
                    raise _Irregular
                return None
            if isinstance(value, Exception):
                raise _Irregular
            coerced = coerce(value)
            if coerced is None or coerced is Undefined:
                raise _Irregular
            return coerced

        return complete_leaf
    if is_list_type(nullable_type) and is_leaf_type(get_nullable_type(nullable_type.of_type)):
        complete_item = _regular_completion(nullable_type.of_type)
        assert complete_item is not None

        def complete_list(value: Any) -> Any:
            if value is None:
                if non_null:
                    raise _Irregular
                return None
            if isinstance(value, Exception) or not is_iterable(value):
                raise _Irregular
            return [complete_item(item) for item in value]

        return complete_list
    return None


def _project_leaves(leaves: tuple[Leaf, ...], source: Any) -> dict[str, Any] | None:
    """The leaves of a row in one loop, when every value is regular.

    Anything else returns None, and the general path, which completes and reports each field as
    graphql-core does, runs instead: projections are pure, so reading them twice changes nothing.
    """
    try:
        return {key: complete(project(source)) for key, project, complete in leaves}
    except Exception:
        return None


def _execute_field(run: Run, field: FieldPlan, source: Any, path: Path | None, type_name: str) -> Any:
    if field.resolve is not None:
        return _execute_resolved_field(run, field, source, path, type_name)
    field_path = Path(path, field.key, type_name) if field.needs_path else None
    try:
        completed = field.complete(run, field.project(source), field_path)  # type: ignore[misc]
        if iscoroutine(completed):
            assert field_path is not None
            completed = _await_completed(run, field, completed, field_path)
    except Exception as raw_error:
        run.handle_field_error(raw_error, field.return_type, field, field_path or Path(path, field.key, type_name))
        completed = None
    return completed


async def _gather_fields(results: dict[str, Any], awaitable_keys: list[str]) -> dict[str, Any]:
    if len(awaitable_keys) == 1:
        key = awaitable_keys[0]
        results[key] = await results[key]
    else:
        awaited = await gather_with_cancel(*(results[key] for key in awaitable_keys))
        results.update(zip(awaitable_keys, awaited, strict=True))
    return results


async def _execute_fields_serially(run: Run, root: SelectionPlan) -> dict[str, Any]:
    """Mutation fields one after the other, in document order; a failure stops the rest."""
    results: dict[str, Any] = {}
    for field in root.fields:
        completed = _execute_field(run, field, None, None, root.type_name)
        results[field.key] = await completed if iscoroutine(completed) else completed
    return results


def _execute_resolved_field(run: Run, field: FieldPlan, source: Any, path: Path | None, type_name: str) -> Any:
    field_path = Path(path, field.key, type_name)
    try:
        arguments = (
            get_argument_values(field.field_def, field.first_node, run.variables, None, run.hide_suggestions)
            if field.has_arguments
            else {}
        )
        resolve = field.resolve
        assert resolve is not None
        result = resolve(run.context, source, field.convert_arguments(arguments))
        return _complete_awaitable(run, field, result, field_path)
    except Exception as raw_error:
        run.handle_field_error(raw_error, field.return_type, field, field_path)
        return None


async def _complete_awaitable(run: Run, field: FieldPlan, result: Awaitable[Any], path: Path) -> Any:
    try:
        completed = field.complete(run, await result, path)
        if iscoroutine(completed):
            completed = await completed
    except Exception as raw_error:
        run.handle_field_error(raw_error, field.return_type, field, path)
        completed = None
    return completed


async def _await_completed(run: Run, field: FieldPlan, completed: Awaitable[Any], path: Path) -> Any:
    try:
        return await completed
    except Exception as raw_error:
        run.handle_field_error(raw_error, field.return_type, field, path)
        return None


# --- The hook ----------------------------------------------------------------------------------------


class Planner:
    """Plans of one schema, an LRU of MAX_PLANS operations (a document is keyed by identity: the
    parser's cache hands out the same DocumentNode for the same text)."""

    def __init__(
        self, *, hide_suggestions: bool, max_plans: int = MAX_PLANS, max_fields: int = MAX_CACHED_FIELDS
    ) -> None:
        self.hide_suggestions = hide_suggestions
        self.max_plans = max_plans
        self.max_fields = max_fields
        self._plans: dict[tuple[int, str | None], tuple[DocumentNode, OperationPlan | None]] = {}

    def plan(
        self, schema: "strawberry.Schema", document: DocumentNode, operation_name: str | None
    ) -> OperationPlan | None:
        key = (id(document), operation_name)
        cached = self._plans.pop(key, None)
        if cached is None or cached[0] is not document:
            try:
                plan: OperationPlan | None = plan_operation(
                    schema, document, operation_name, hide_suggestions=self.hide_suggestions
                )
            except (NotPlannable, RecursionError):
                plan = None
            cached = (document, plan)
            if len(self._plans) >= self.max_plans:
                del self._plans[next(iter(self._plans))]
        self._plans[key] = cached  # most recently used last
        return cached[1]

    def root_selection(self, plan: OperationPlan, variables: VariableValues) -> SelectionPlan | None:
        """The plan's selection for these variables, the cache trimmed if it grew."""
        planned_fields = plan.planned_fields
        root = plan.root_selection(variables)
        if plan.planned_fields > planned_fields:
            self._trim()
        return root

    def _trim(self) -> None:
        """Least recently used plans dropped while all of them hold more than max_fields fields (the
        most recent, the one running, stays)."""
        total = sum(plan.planned_fields for _, plan in self._plans.values() if plan is not None)
        while total > self.max_fields and len(self._plans) > 1:
            _, dropped = self._plans.pop(next(iter(self._plans)))
            total -= dropped.planned_fields if dropped is not None else 0

    async def execute(
        self,
        schema: "strawberry.Schema",
        document: DocumentNode,
        operation_name: str | None,
        raw_variables: object,
        context: "Context",
    ) -> ExecutionResult | None:
        """The operation's result, or None when graphql-core should run it."""
        if raw_variables is not None and not isinstance(raw_variables, dict):
            return None
        plan = self.plan(schema, document, operation_name)
        if plan is None:
            return None
        variables = get_variable_values(
            plan.schema,
            plan.operation.variable_definitions or (),
            raw_variables or {},
            max_errors=MAX_VARIABLE_ERRORS,
            hide_suggestions=self.hide_suggestions,
        )
        if isinstance(variables, list):  # graphql-core reports variables that do not fit, exactly
            return None
        root = self.root_selection(plan, variables)
        if root is None:
            return None
        run = Run(context, variables, hide_suggestions=self.hide_suggestions)
        return await run.execute(root, serially=plan.serially)


class CompiledExecution(SchemaExtension):
    """Runs a plannable operation from its plan and sets the result, so Strawberry skips graphql-core.

    Placed after the request rules: a request they ended already has a result and is left alone.
    """

    def __init__(self, planner: Planner) -> None:
        self._planner = planner

    async def on_execute(self) -> Any:
        execution_context = self.execution_context
        document = execution_context.graphql_document
        context = execution_context.context
        if execution_context.result is None and document is not None and context.settings.graphql_compiled:
            result = await self._planner.execute(
                execution_context.schema,
                document,
                execution_context.operation_name,
                execution_context.variables,
                context,
            )
            if result is not None:
                execution_context.result = result
        yield
