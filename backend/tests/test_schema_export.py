"""schema.graphql is generated from the code; it must not drift, and everything in it is described."""

from pathlib import Path

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLScalarType,
)
from strawberry.printer import print_schema

from backend.gql.schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"
CONTRACT_TYPES = {
    "Query",
    "Mutation",
    "Task",
    "TaskPage",
    "User",
    "TaskStatus",
    "TaskSort",
    "Priority",
    "SortOrder",
    "CreateTaskInput",
    "UpdateTaskInput",
    "DateTime",
}


def test_schema_file_matches_the_code() -> None:
    assert SCHEMA_FILE.read_text() == print_schema(schema) + "\n", "run `make schema` and commit schema.graphql"


def test_contract_names_are_present() -> None:
    assert CONTRACT_TYPES <= set(schema._schema.type_map)
    query = schema._schema.query_type
    mutation = schema._schema.mutation_type
    assert query is not None
    assert mutation is not None
    assert set(query.fields) == {"me", "task", "tasks"}
    assert set(mutation.fields) == {"createTask", "updateTask", "completeTask", "deleteTask"}
    tasks_args = query.fields["tasks"].args
    assert set(tasks_args) == {"status", "priority", "tag", "search", "sort", "order", "page", "limit"}
    user = schema._schema.type_map["User"]
    assert isinstance(user, GraphQLObjectType)
    assert set(user.fields["tasks"].args) == set(tasks_args)


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    missing: list[str] = []
    for name, graphql_type in schema._schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Boolean", "Float", "ID"}:
            continue
        if not graphql_type.description:
            missing.append(name)
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in graphql_type.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                missing.extend(
                    f"{name}.{field_name}({arg_name})" for arg_name, arg in field.args.items() if not arg.description
                )
        elif isinstance(graphql_type, GraphQLInputObjectType):
            missing.extend(f"{name}.{field}" for field, value in graphql_type.fields.items() if not value.description)
        elif isinstance(graphql_type, GraphQLEnumType):
            missing.extend(f"{name}.{value}" for value, spec in graphql_type.values.items() if not spec.description)
        elif isinstance(graphql_type, GraphQLScalarType):
            pass
    assert missing == []
