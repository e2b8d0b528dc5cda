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


# CONTRACT.md, "GraphQL for the chatbot": root field -> (its arguments with their types, its type)
LIST_ARGUMENTS = {
    "status": "TaskStatus",
    "priority": "Priority",
    "tag": "String",
    "search": "String",
    "sort": "TaskSort",
    "order": "SortOrder",
    "page": "Int",
    "limit": "Int",
    "dueBefore": "DateTime",
    "dueAfter": "DateTime",
    "overdue": "Boolean",
    "hasDueDate": "Boolean",
}
CONTRACT_QUERIES = {
    "me": ({}, "User!"),
    "task": ({"id": "ID!"}, "Task"),
    "tasks": (LIST_ARGUMENTS, "TaskPage!"),
}
CONTRACT_MUTATIONS = {
    "createTask": ({"input": "CreateTaskInput!"}, "Task!"),
    "updateTask": ({"id": "ID!", "input": "UpdateTaskInput!", "expectedVersion": "String"}, "Task!"),
    "completeTask": ({"id": "ID!", "completed": "Boolean", "expectedVersion": "String"}, "Task!"),
    "toggleTask": ({"id": "ID!", "expectedVersion": "String"}, "Task!"),
    "deleteTask": ({"id": "ID!", "expectedVersion": "String"}, "Boolean!"),
    "completeTasks": ({"ids": "[ID!]!", "completed": "Boolean"}, "[Task!]!"),
    "deleteTasks": ({"ids": "[ID!]!"}, "[ID!]!"),
}


def signatures(root: GraphQLObjectType | None) -> dict[str, tuple[dict[str, str], str]]:
    assert root is not None
    return {
        name: ({arg: str(value.type) for arg, value in field.args.items()}, str(field.type))
        for name, field in root.fields.items()
    }


def test_contract_names_and_signatures_are_present() -> None:
    assert CONTRACT_TYPES <= set(schema._schema.type_map)
    # "the first version's arguments" may be nullable with a default (null takes the default).
    queries = signatures(schema._schema.query_type)
    queries["tasks"] = ({arg: kind.removesuffix("!") for arg, kind in queries["tasks"][0].items()}, "TaskPage!")
    assert queries == CONTRACT_QUERIES
    assert signatures(schema._schema.mutation_type) == CONTRACT_MUTATIONS
    mutation = schema._schema.mutation_type
    assert mutation is not None
    for name in ("completeTask", "completeTasks"):  # `completed: Boolean = true`
        assert mutation.fields[name].args["completed"].default_value is True
    user = schema._schema.type_map["User"]
    assert isinstance(user, GraphQLObjectType)
    assert {arg: str(value.type).removesuffix("!") for arg, value in user.fields["tasks"].args.items()} == (
        LIST_ARGUMENTS
    )
    task = schema._schema.type_map["Task"]
    assert isinstance(task, GraphQLObjectType)
    assert (str(task.fields["id"].type), str(task.fields["version"].type)) == ("ID!", "String!")
    create_input = schema._schema.type_map["CreateTaskInput"]
    assert isinstance(create_input, GraphQLInputObjectType)
    assert str(create_input.fields["idempotencyKey"].type) == "String"


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
