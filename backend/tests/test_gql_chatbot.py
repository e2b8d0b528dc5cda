"""GraphQL for the chatbot (CONTRACT.md, "GraphQL for the chatbot"): retries, versions, due dates,
bulk changes, and errors a program can act on."""

from typing import Any

import httpx
import pytest

from backend.tests.factories import auth_headers, post_graphql

pytestmark = pytest.mark.graphql_modes  # each test with compiled plans and with graphql-core alone

ALICE = auth_headers("alice")
ALICE_JSON = {**ALICE, "Content-Type": "application/json"}
BOB = auth_headers("bob")
TASK = "id version title completed dueDate"


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] = ALICE,
    status: int = 200,
) -> dict[str, Any]:
    return await post_graphql(client, query, variables, headers=headers, status=status)


def code(body: dict[str, Any]) -> str:
    value: str = body["errors"][0]["extensions"]["code"]
    return value


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **fields: Any) -> dict[str, Any]:
    body = await gql(
        client,
        f"mutation($input: CreateTaskInput!) {{ createTask(input: $input) {{ {TASK} }} }}",
        {"input": {"title": "A task", **fields}},
        headers=headers,
    )
    assert "errors" not in body, body
    task: dict[str, Any] = body["data"]["createTask"]
    return task


# --- Ids and versions ----------------------------------------------------------------------------


@pytest.mark.single_database
async def test_ids_are_strings_out_and_strings_or_numbers_in(client: httpx.AsyncClient) -> None:
    task = await create(client, title="by id")
    assert isinstance(task["id"], str)
    assert task["id"].isdigit()
    for given in (task["id"], int(task["id"])):
        found = await gql(client, "query($id: ID!) { task(id: $id) { title } }", {"id": given})
        assert found["data"]["task"]["title"] == "by id"
    literal = await gql(client, f"{{ task(id: {task['id']}) {{ title }} }}")
    assert literal["data"]["task"]["title"] == "by id"


@pytest.mark.single_database
@pytest.mark.parametrize("bad_id", ["abc", "-1", "0", "1.5", "99999999999", " 1", "١٢"])
async def test_an_id_that_is_not_one_is_bad_user_input_naming_it(client: httpx.AsyncClient, bad_id: str) -> None:
    body = await gql(client, "mutation($id: ID!) { deleteTask(id: $id) }", {"id": bad_id})
    assert code(body) == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["fields"] == [{"path": ["id"], "message": "must be a task id: 1-2147483647"}]


async def test_version_is_the_rest_etag(client: httpx.AsyncClient) -> None:
    task = await create(client)
    rest = await client.get(f"/api/tasks/{task['id']}", headers=ALICE)
    assert task["version"] == rest.headers["ETag"]
    changed = await gql(
        client, 'mutation($id: ID!) { updateTask(id: $id, input: {title: "new"}) { version } }', {"id": task["id"]}
    )
    assert changed["data"]["updateTask"]["version"] != task["version"]
    assert (
        changed["data"]["updateTask"]["version"]
        == (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).headers["ETag"]
    )


STALE_WRITES = {
    "updateTask": 'updateTask(id: $id, input: {title: "stale"}, expectedVersion: $v) { id }',
    "completeTask": "completeTask(id: $id, expectedVersion: $v) { id }",
    "toggleTask": "toggleTask(id: $id, expectedVersion: $v) { id }",
    "deleteTask": "deleteTask(id: $id, expectedVersion: $v)",
}


@pytest.mark.parametrize("mutation", STALE_WRITES)
async def test_a_stale_expected_version_changes_nothing(client: httpx.AsyncClient, mutation: str) -> None:
    task = await create(client, title="original")
    await gql(
        client, 'mutation($id: ID!) { updateTask(id: $id, input: {title: "moved on"}) { id } }', {"id": task["id"]}
    )
    stale = await gql(
        client,
        f"mutation($id: ID!, $v: String) {{ {STALE_WRITES[mutation]} }}",
        {"id": task["id"], "v": task["version"]},
    )
    assert code(stale) == "PRECONDITION_FAILED"
    after = await gql(client, "query($id: ID!) { task(id: $id) { title completed } }", {"id": task["id"]})
    assert after["data"]["task"] == {"title": "moved on", "completed": False}


async def test_the_current_version_lets_the_write_through_with_or_without_quotes(client: httpx.AsyncClient) -> None:
    task = await create(client)
    first = await gql(
        client,
        "mutation($id: ID!, $v: String) { completeTask(id: $id, expectedVersion: $v) { completed version } }",
        {"id": task["id"], "v": task["version"]},
    )
    assert first["data"]["completeTask"]["completed"] is True
    bare = first["data"]["completeTask"]["version"].strip('"')
    toggled = await gql(
        client,
        "mutation($id: ID!, $v: String) { toggleTask(id: $id, expectedVersion: $v) { completed } }",
        {"id": task["id"], "v": bare},
    )
    assert toggled["data"]["toggleTask"]["completed"] is False


# --- Retries --------------------------------------------------------------------------------------


CREATE_KEYED = "mutation($input: CreateTaskInput!) { createTask(input: $input) { id title } }"


async def test_a_retried_create_with_its_key_returns_the_first_task(client: httpx.AsyncClient) -> None:
    first = await gql(client, CREATE_KEYED, {"input": {"title": "once", "idempotencyKey": "chat-1"}})
    again = await gql(client, CREATE_KEYED, {"input": {"title": "once", "idempotencyKey": "chat-1"}})
    assert again["data"] == first["data"]
    other_user = await gql(client, CREATE_KEYED, {"input": {"title": "once", "idempotencyKey": "chat-1"}}, headers=BOB)
    assert other_user["data"]["createTask"]["id"] != first["data"]["createTask"]["id"]
    listed = await gql(client, "{ tasks { total } }")
    assert listed["data"]["tasks"]["total"] == 1


async def test_a_key_with_other_input_is_bad_user_input_and_creates_nothing(client: httpx.AsyncClient) -> None:
    await gql(client, CREATE_KEYED, {"input": {"title": "first", "idempotencyKey": "k"}})
    body = await gql(client, CREATE_KEYED, {"input": {"title": "second", "idempotencyKey": "k"}})
    assert code(body) == "BAD_USER_INPUT"
    assert [field["path"] for field in body["errors"][0]["extensions"]["fields"]] == [["input", "idempotencyKey"]]
    assert (await gql(client, "{ tasks { total } }"))["data"]["tasks"]["total"] == 1


async def test_graphql_and_rest_share_the_keys(client: httpx.AsyncClient) -> None:
    """One storage: a key first used over REST replays over GraphQL."""
    rest = await client.post("/api/tasks", json={"title": "shared"}, headers={**ALICE, "Idempotency-Key": "both"})
    graphql = await gql(client, CREATE_KEYED, {"input": {"title": "shared", "idempotencyKey": "both"}})
    assert graphql["data"]["createTask"]["id"] == str(rest.json()["id"])


@pytest.mark.single_database
@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "must be 1-255 characters"),
        ("k" * 256, "must be 1-255 characters"),
        ("\ud800", "must be valid Unicode text"),
        ("a\nb", "must not contain control characters"),
    ],
)
async def test_an_idempotency_key_is_1_to_255_characters_of_text(
    client: httpx.AsyncClient, key: str, message: str
) -> None:
    body = await gql(client, CREATE_KEYED, {"input": {"title": "x", "idempotencyKey": key}})
    assert code(body) == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["fields"] == [{"path": ["input", "idempotencyKey"], "message": message}]
    tasks = await gql(client, "{ tasks { total } }")
    assert tasks["data"]["tasks"]["total"] == 0


async def test_complete_task_sets_and_a_retry_changes_nothing(client: httpx.AsyncClient) -> None:
    task = await create(client)
    for _ in range(2):
        body = await gql(
            client, "mutation($id: ID!) { completeTask(id: $id) { completed version } }", {"id": task["id"]}
        )
        assert body["data"]["completeTask"]["completed"] is True
    undone = await gql(
        client, "mutation($id: ID!) { completeTask(id: $id, completed: false) { completed } }", {"id": task["id"]}
    )
    assert undone["data"]["completeTask"]["completed"] is False
    flipped = [
        (await gql(client, "mutation($id: ID!) { toggleTask(id: $id) { completed } }", {"id": task["id"]}))["data"][
            "toggleTask"
        ]["completed"]
        for _ in range(2)
    ]
    assert flipped == [True, False]


@pytest.mark.single_database
async def test_arguments_with_a_default_take_it_when_sent_null(client: httpx.AsyncClient) -> None:
    task = await create(client)
    completed = await gql(
        client,
        "mutation($id: ID!, $c: Boolean) { completeTask(id: $id, completed: $c) { completed } }",
        {"id": task["id"], "c": None},
    )
    assert completed["data"]["completeTask"]["completed"] is True
    page = await gql(
        client,
        "query($p: Int, $l: Int, $s: TaskStatus, $o: SortOrder) "
        "{ tasks(page: $p, limit: $l, status: $s, order: $o, sort: null) { page limit total } }",
        {"p": None, "l": None, "s": None, "o": None},
    )
    assert page["data"]["tasks"] == {"page": 1, "limit": 20, "total": 1}


# --- Many at once ---------------------------------------------------------------------------------


async def test_complete_tasks_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    mine = [await create(client, title=f"t{n}") for n in range(3)]
    theirs = await create(client, BOB, title="bob's")
    ids = [task["id"] for task in mine]
    refused = await gql(
        client,
        "mutation($ids: [ID!]!) { completeTasks(ids: $ids) { id } }",
        {"ids": [*ids, theirs["id"], "2147483647"]},
    )
    assert code(refused) == "NOT_FOUND"
    assert refused["errors"][0]["extensions"]["ids"] == [theirs["id"], "2147483647"]
    pending = await gql(client, "{ tasks(status: PENDING) { total } }")
    assert pending["data"]["tasks"]["total"] == 3  # nothing changed
    done = await gql(
        client,
        "mutation($ids: [ID!]!) { completeTasks(ids: $ids) { id completed } }",
        {"ids": [ids[2], ids[0], ids[2]]},
    )
    assert done["data"]["completeTasks"] == [{"id": ids[2], "completed": True}, {"id": ids[0], "completed": True}]
    bob = await gql(client, "{ tasks { items { completed } } }", headers=BOB)
    assert bob["data"]["tasks"]["items"] == [{"completed": False}]


async def test_delete_tasks_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    mine = [await create(client, title=f"t{n}") for n in range(3)]
    theirs = await create(client, BOB)
    refused = await gql(
        client, "mutation($ids: [ID!]!) { deleteTasks(ids: $ids) }", {"ids": [mine[0]["id"], theirs["id"]]}
    )
    assert code(refused) == "NOT_FOUND"
    assert refused["errors"][0]["extensions"]["ids"] == [theirs["id"]]
    assert (await gql(client, "{ tasks { total } }"))["data"]["tasks"]["total"] == 3
    deleted = await gql(
        client, "mutation($ids: [ID!]!) { deleteTasks(ids: $ids) }", {"ids": [mine[0]["id"], int(mine[1]["id"])]}
    )
    assert deleted["data"]["deleteTasks"] == [mine[0]["id"], mine[1]["id"]]
    remaining = await gql(client, "{ tasks { items { id } } }")
    assert remaining["data"]["tasks"]["items"] == [{"id": mine[2]["id"]}]
    assert (await gql(client, "{ tasks { total } }", headers=BOB))["data"]["tasks"]["total"] == 1


@pytest.mark.single_database
async def test_at_most_100_ids_at_once(client: httpx.AsyncClient) -> None:
    body = await gql(
        client, "mutation($ids: [ID!]!) { deleteTasks(ids: $ids) }", {"ids": [str(n) for n in range(1, 102)]}
    )
    assert code(body) == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["fields"][0]["path"] == ["ids"]


# --- Errors a program can act on ------------------------------------------------------------------


@pytest.mark.single_database
@pytest.mark.parametrize(
    ("query", "variables", "expected"),
    [
        pytest.param("{ tasks { total ", None, "GRAPHQL_PARSE_FAILED", id="syntax"),
        pytest.param("{ tsk { id } }", None, "GRAPHQL_VALIDATION_FAILED", id="unknown field"),
        pytest.param(
            "query($s: TaskStatus) { tasks(status: $s) { total } }", {"s": "DONE"}, "BAD_USER_INPUT", id="variable"
        ),
        pytest.param(
            "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(31)) + " }", None, "QUERY_TOO_COMPLEX", id="aliases"
        ),
        pytest.param("{ me { " + "id " * 2100 + "} }", None, "QUERY_TOO_COMPLEX", id="tokens"),
        pytest.param(
            "{ me " + "{ tasks { items { owner " * 3 + "{ tasks { items { id } } }" + " } } }" * 3 + " }",
            None,
            "QUERY_TOO_COMPLEX",
            id="depth",
        ),
    ],
)
async def test_failures_before_execution_have_distinct_codes(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None, expected: str
) -> None:
    body = await gql(client, query, variables, status=400)
    assert body["data"] is None
    assert {error["extensions"]["code"] for error in body["errors"]} == {expected}


@pytest.mark.single_database
async def test_bad_user_input_names_every_invalid_field(client: httpx.AsyncClient) -> None:
    body = await gql(
        client, 'mutation { createTask(input: {title: "  ", tags: [""], description: "' + "d" * 1001 + '"}) { id } }'
    )
    assert code(body) == "BAD_USER_INPUT"
    paths = sorted(field["path"] for field in body["errors"][0]["extensions"]["fields"])
    assert paths == [["input", "description"], ["input", "tags"], ["input", "title"]]
    variable = await gql(
        client,
        "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }",
        {"i": {"title": "ok", "dueDate": "soon"}},
        status=400,
    )
    assert variable["errors"][0]["extensions"]["fields"][0]["path"] == ["i", "dueDate"]
    listing = await gql(client, "{ tasks(limit: 0) { total } }")
    assert listing["errors"][0]["extensions"]["fields"] == [
        {"path": ["limit"], "message": "Input should be greater than or equal to 1"}
    ]


@pytest.mark.single_database
@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "2/minute"}])
async def test_rate_limited_carries_retry_after(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await gql(client, "{ me { id } }")
    body = await gql(client, "{ me { id } }", status=429)
    assert code(body) == "RATE_LIMITED"
    assert 1 <= body["errors"][0]["extensions"]["retryAfter"] <= 60


@pytest.mark.single_database
@pytest.mark.parametrize(
    ("request_keywords", "status"),
    [
        pytest.param({"json": {"query": "{ me { id } }"}, "headers": {}}, 401, id="no token"),
        pytest.param({"content": b"{oops", "headers": ALICE_JSON}, 400, id="not JSON"),
        pytest.param({"json": [{"query": "{ me { id } }"}], "headers": ALICE}, 400, id="batch"),
        pytest.param({"content": b"x" * 70_000, "headers": ALICE_JSON}, 413, id="too large"),
    ],
)
async def test_whole_request_failures_are_graphql_bodies_too(
    client: httpx.AsyncClient, request_keywords: dict[str, Any], status: int
) -> None:
    response = await client.post("/graphql", **request_keywords)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"data", "errors", "extensions"}
    assert body["errors"][0]["extensions"]["code"]


def test_datetime_says_which_specification_it_follows() -> None:
    from backend.gql.schema import schema

    assert 'scalar DateTime @specifiedBy(url: "https://datatracker.ietf.org/doc/html/rfc3339")' in str(schema)
