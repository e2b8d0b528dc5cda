"""GraphQL: operations on the shared service layer, loaders, authentication first, introspection.

The cases REST shares are in test_parity.py; refused documents and requests in test_hostile_input.py.
"""

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from backend.tests.factories import auth_headers, post_graphql

# Each test with compiled plans and with graphql-core alone, on one database.
pytestmark = [pytest.mark.single_database, pytest.mark.graphql_modes]

ALICE = auth_headers("alice", email="alice@example.com", name="Alice")
BOB = auth_headers("bob")

TASK_FIELDS = "id userId title description completed priority tags dueDate createdAt updatedAt"


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] = ALICE,
    expected_status: int = 200,
) -> dict[str, Any]:
    return await post_graphql(client, query, variables, headers=headers, status=expected_status)


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **fields: Any) -> dict[str, Any]:
    body = await gql(
        client,
        f"mutation($input: CreateTaskInput!) {{ createTask(input: $input) {{ {TASK_FIELDS} }} }}",
        {"input": {"title": "A task", **fields}},
        headers,
    )
    assert "errors" not in body, body
    task: dict[str, Any] = body["data"]["createTask"]
    return task


def error_code(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def test_create_and_read(client: httpx.AsyncClient) -> None:
    task = await create(
        client, title=" Read ", priority="HIGH", tags=["a", "A", "b"], dueDate="2030-01-01T10:00:00+02:00"
    )
    assert task["title"] == "Read"
    assert task["priority"] == "HIGH"
    assert task["tags"] == ["a", "b"]
    assert task["dueDate"] == "2030-01-01T08:00:00Z"
    assert task["userId"] == "alice"
    assert task["createdAt"].endswith("Z")
    body = await gql(client, f"query($id: ID!) {{ task(id: $id) {{ {TASK_FIELDS} }} }}", {"id": task["id"]})
    assert body["data"]["task"] == task


async def test_rest_and_graphql_see_the_same_task(client: httpx.AsyncClient) -> None:
    task = await create(client, title="shared")
    rest = (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json()
    assert (rest["title"], rest["user_id"], rest["priority"]) == ("shared", "alice", "medium")


async def test_update_complete_delete(client: httpx.AsyncClient) -> None:
    task = await create(client, description="d", dueDate="2030-01-01T00:00:00Z")
    updated = await gql(
        client,
        'mutation($id: ID!) { updateTask(id: $id, input: {title: "new", description: null}) '
        "{ title description dueDate updatedAt } }",
        {"id": task["id"]},
    )
    assert updated["data"]["updateTask"]["title"] == "new"
    assert updated["data"]["updateTask"]["description"] is None
    assert updated["data"]["updateTask"]["dueDate"] == task["dueDate"]
    assert updated["data"]["updateTask"]["updatedAt"] > task["updatedAt"]

    # completeTask sets (true unless told otherwise): sending it twice leaves the task completed.
    for _ in range(2):
        done = await gql(client, "mutation($id: ID!) { completeTask(id: $id) { completed } }", {"id": task["id"]})
        assert done["data"]["completeTask"]["completed"] is True
    reopened = await gql(
        client, "mutation($id: ID!) { completeTask(id: $id, completed: false) { completed } }", {"id": task["id"]}
    )
    assert reopened["data"]["completeTask"]["completed"] is False

    deleted = await gql(client, "mutation($id: ID!) { deleteTask(id: $id) }", {"id": task["id"]})
    assert deleted["data"]["deleteTask"] is True
    gone = await gql(client, "query($id: ID!) { task(id: $id) { id } }", {"id": task["id"]})
    assert gone["data"]["task"] is None


async def test_lists_are_scoped_filtered_and_paged(client: httpx.AsyncClient) -> None:
    await create(client, BOB, title="bob's")
    for index in range(3):
        await create(client, title=f"t{index}", completed=index == 0, tags=["Work"] if index else [])
    body = await gql(
        client,
        "{ all: tasks(limit: 2) { total page limit hasNext items { title userId } } "
        "pending: tasks(status: PENDING, sort: TITLE, order: ASC) { total items { title } } "
        'tagged: tasks(tag: "work") { total } '
        'searched: tasks(search: "T1") { items { title } } '
        "page2: tasks(limit: 2, page: 2) { hasNext items { title } } }",
    )
    data = body["data"]
    assert (data["all"]["total"], data["all"]["page"], data["all"]["limit"], data["all"]["hasNext"]) == (3, 1, 2, True)
    assert {item["userId"] for item in data["all"]["items"]} == {"alice"}
    assert [item["title"] for item in data["pending"]["items"]] == ["t1", "t2"]
    assert data["tagged"]["total"] == 2
    assert [item["title"] for item in data["searched"]["items"]] == ["t1"]
    assert (data["page2"]["hasNext"], len(data["page2"]["items"])) == (False, 1)


async def test_bad_literal_is_a_request_error(client: httpx.AsyncClient) -> None:
    body = await gql(
        client, 'mutation { createTask(input: {title: "ok", dueDate: "soon"}) { id } }', expected_status=400
    )
    # A literal the scalar refuses fails validation: the document is wrong, the operation never ran.
    assert error_code(body) == "GRAPHQL_VALIDATION_FAILED"
    assert "dueDate" in body["errors"][0]["message"] or "DateTime" in body["errors"][0]["message"]
    assert body["data"] is None
    assert (await gql(client, "{ tasks { total } }"))["data"]["tasks"]["total"] == 0


async def test_me_and_nested_user_tasks(client: httpx.AsyncClient) -> None:
    task = await create(client)
    body = await gql(client, "{ me { id email name tasks { total items { id owner { id email } } } } }")
    me = body["data"]["me"]
    assert (me["id"], me["email"], me["name"]) == ("alice", "alice@example.com", "Alice")
    assert me["tasks"]["items"] == [{"id": task["id"], "owner": {"id": "alice", "email": "alice@example.com"}}]


async def test_loaders_run_one_query_per_level(client: httpx.AsyncClient, count_queries: Callable[[], Any]) -> None:
    for index in range(5):
        await create(client, title=f"t{index}")
    query = "{ tasks(limit: 5) { items { id owner { id tasks(limit: 5) { items { id owner { id } } } } } } }"
    with count_queries() as statements:
        body = await gql(client, query)
    assert "errors" not in body
    # tasks page (short page: no COUNT) + owners + owner.tasks (one key) + their owners (cached by the loader)
    assert len(statements) <= 3, statements


async def test_sibling_fields_share_the_session_safely(client: httpx.AsyncClient) -> None:
    await create(client)
    aliases = " ".join(f"a{i}: tasks(page: {i + 1}, limit: 1) {{ total }}" for i in range(10))
    body = await gql(client, f"{{ {aliases} me {{ id }} }}")
    assert "errors" not in body
    assert body["data"]["a0"]["total"] == 1


async def test_failing_field_does_not_break_its_siblings_session(client: httpx.AsyncClient) -> None:
    await create(client)
    body = await gql(client, "{ me { id } tasks(limit: 0) { total } other: tasks { total } }")
    assert error_code(body) == "BAD_USER_INPUT"
    again = await gql(client, "{ tasks { total } }")
    assert again["data"]["tasks"]["total"] == 1


# --- Transport: auth and introspection (documents and requests refused: test_hostile_input.py) ---


async def test_data_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ __typename tasks { total } }"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_graphiql_page_loads_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


# --- Order of answers: authentication first, nothing enumerated, never INTERNAL -----------------

ANONYMOUS_DOCUMENTS = {
    "invalid input": 'mutation { createTask(input: {title: "   "}) { id } }',
    "bad argument": "{ tasks(limit: 0) { total } }",
    "unknown field": "{ tsk { id } }",
    "syntax error": "{ tasks { total ",
    "unknown variable type": "query($x: Nope) { tasks { total } }",
    "data next to introspection": "{ __typename tasks { total } }",
    "data in a fragment": "query { ...F } fragment F on Query { __typename me { id } }",
}


@pytest.mark.parametrize("case", ANONYMOUS_DOCUMENTS)
async def test_without_a_token_everything_but_introspection_is_401_first(client: httpx.AsyncClient, case: str) -> None:
    response = await client.post("/graphql", json={"query": ANONYMOUS_DOCUMENTS[case]})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert error_code(response.json()) == "UNAUTHENTICATED"
    assert (await gql(client, "{ tasks { total } }"))["data"]["tasks"]["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "{ __typename }",
        "{ __schema { queryType { name } } __typename }",
        "query Docs { ...F } fragment F on Query { __schema { queryType { name } } }",
        '{ __type(name: "Task") { name } ... on Query { __typename } }',
    ],
)
async def test_without_a_token_introspection_still_runs(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post("/graphql", json={"query": query})
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()
    assert response.json()["data"]


@pytest.mark.parametrize("settings_overrides", [{"graphql_introspection": False}])
@pytest.mark.parametrize("query", ["{ __schema { types { name } } }", '{ __type(name: "Task") { name } }'])
async def test_introspection_can_be_switched_off(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post("/graphql", json={"query": query}, headers=ALICE)
    assert response.status_code == 400, response.text
    assert error_code(response.json()) == "GRAPHQL_VALIDATION_FAILED"
    assert "introspection" in response.json()["errors"][0]["message"]
    # Without a token only introspection may run, and it is off: the request is not authenticated.
    anonymous = await client.post("/graphql", json={"query": query})
    assert anonymous.status_code == 401, anonymous.text
    assert error_code(anonymous.json()) == "UNAUTHENTICATED"
    graphiql = await client.get("/graphql", headers={"Accept": "text/html"})
    assert graphiql.status_code == 404
    assert (await client.post("/graphql", json={"query": "{ me { id } }"}, headers=ALICE)).status_code == 200


SUGGESTIVE = {
    "field": ("{ tsk { id } }", None),
    "argument": ("{ tasks(sortt: TITLE) { total } }", None),
    "enum literal": ("{ tasks(status: PENDIN) { total } }", None),
    "enum variable": ("query($s: TaskStatus!) { tasks(status: $s) { total } }", {"s": "PENDIN"}),
    "input field": ('mutation { createTask(input: {titel: "x"}) { id } }', None),
    "type": ("query($s: TaskStatu) { tasks { total } }", None),
}


@pytest.mark.parametrize("settings_overrides", [{"graphql_introspection": False}, {"graphql_introspection": True}])
@pytest.mark.parametrize("case", SUGGESTIVE)
async def test_suggestions_only_while_introspection_is_on(
    client: httpx.AsyncClient, settings_overrides: dict[str, Any], case: str
) -> None:
    query, variables = SUGGESTIVE[case]
    body = await gql(client, query, variables, expected_status=400)
    messages = " ".join(error["message"] for error in body["errors"])
    assert ("Did you mean" in messages) is settings_overrides["graphql_introspection"], messages


def _sample_value(type_name: str) -> str:
    return {"Int": "1", "ID": '"1"', "String": '"x"', "Boolean": "true", "CreateTaskInput": '{title: "x"}'}.get(
        type_name, "{}"
    )


def _null_argument_documents() -> list[Any]:
    """For every argument of every field: the field called with that argument as a variable sent null."""
    from graphql import get_named_type, is_non_null_type, is_object_type

    from backend.gql.schema import schema

    graphql_schema = schema._schema
    documents = []
    for root, operation in ((graphql_schema.query_type, "query"), (graphql_schema.mutation_type, "mutation")):
        assert root is not None
        for field_name, field in root.fields.items():
            owners = [("", field_name, field)]
            if field_name == "me":  # reach User.tasks too
                user_type = get_named_type(field.type)
                assert is_object_type(user_type)
                owners = [("me ", name, nested) for name, nested in user_type.fields.items() if nested.args]
            for prefix, name, owner_field in owners:
                selection = "" if not is_object_type(get_named_type(owner_field.type)) else "{ __typename }"
                for arg_name, arg in owner_field.args.items():
                    nullable = str(arg.type.of_type) if is_non_null_type(arg.type) else str(arg.type)
                    others = [
                        f"{other}: {_sample_value(str(get_named_type(other_arg.type)))}"
                        for other, other_arg in owner_field.args.items()
                        if other != arg_name and is_non_null_type(other_arg.type) and other_arg.default_value is None
                    ]
                    arguments = ", ".join([f"{arg_name}: $v", *others])
                    call = f"{name}({arguments}) {selection}"
                    body = f"{prefix}{{ {call} }}" if prefix else call
                    documents.append(pytest.param(f"{operation}($v: {nullable}) {{ {body} }}", id=f"{name}.{arg_name}"))
    return documents


@pytest.mark.parametrize("query", _null_argument_documents())
async def test_a_null_variable_is_never_internal(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post("/graphql", json={"query": query, "variables": {"v": None}}, headers=ALICE)
    assert response.status_code in (200, 400), response.text
    codes = {error["extensions"]["code"] for error in response.json().get("errors", [])}
    assert "INTERNAL" not in codes, response.text
