"""REST and GraphQL answer alike: one table of cases, each asserted on /api/tasks and on GraphQL.

Invalid input is REST's 422 and GraphQL's BAD_USER_INPUT in the same words where the same rule
refuses it; a task that is not yours looks missing on both; the same filters list the same tasks.
Cases only one transport can express stay in test_routes_tasks.py, test_gql_tasks.py and
test_hostile_input.py.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
import pytest

from backend.db import Database
from backend.gql.schema import schema
from backend.services import tasks as task_service
from backend.tests.factories import auth_headers, create_task, principal

pytestmark = pytest.mark.single_database

ALICE = auth_headers("alice")


async def rest_request(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> httpx.Response:
    # json.dumps escapes lone surrogates (httpx's own encoder would refuse them): the server decides.
    content = None if body is None else json.dumps(body).encode()
    return await client.request(method, path, content=content, headers={**ALICE, "Content-Type": "application/json"})


async def graphql_request(client: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> httpx.Response:
    content = json.dumps({"query": query, "variables": variables}).encode()
    return await client.post("/graphql", content=content, headers={**ALICE, "Content-Type": "application/json"})


def tasks_query(arguments: dict[str, Any], selection: str) -> str:
    """`tasks(...)` with each argument passed as a variable of the type the schema declares for it."""
    if not arguments:
        return f"{{ tasks {{ {selection} }} }}"
    declared = schema._schema.query_type.fields["tasks"].args  # type: ignore[union-attr]
    variables = ", ".join(f"${name}: {declared[name].type}" for name in arguments)
    passed = ", ".join(f"{name}: ${name}" for name in arguments)
    return f"query({variables}) {{ tasks({passed}) {{ {selection} }} }}"


async def titles_on_both(
    client: httpx.AsyncClient, rest_params: dict[str, str], graphql_arguments: dict[str, Any]
) -> tuple[list[str], list[str]]:
    rest = await client.get("/api/tasks", params=rest_params, headers=ALICE)
    assert rest.status_code == 200, rest.text
    graphql = await graphql_request(client, tasks_query(graphql_arguments, "total items { title }"), graphql_arguments)
    assert "errors" not in graphql.json(), graphql.text
    page = graphql.json()["data"]["tasks"]
    assert rest.headers["X-Total-Count"] == str(page["total"])
    return [task["title"] for task in rest.json()], [task["title"] for task in page["items"]]


# --- Invalid input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """One invalid input: REST's JSON and GraphQL's variable side by side.

    `says` is a fragment of REST's detail. Where GraphQL's input reaches the same rule (the shared
    schemas), GraphQL answers 200 with the rule's own message, which REST's detail contains too.
    Where GraphQL's type system refuses the variable first, it answers 400 and `graphql_says` is a
    fragment of its wording.
    """

    rest: Any
    graphql: Any
    says: str
    graphql_says: str | None = None


def assert_refused_alike(rest: httpx.Response, graphql: httpx.Response, invalid: Invalid) -> None:
    assert rest.status_code == 422, rest.text
    assert rest.json()["error"] == "BAD_USER_INPUT"
    assert invalid.says in rest.json()["detail"]
    body = graphql.json()
    assert body.get("data") is None, graphql.text
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    if invalid.graphql_says is None:
        assert graphql.status_code == 200, graphql.text  # a field error, by GraphQL's convention
        assert error["message"] in rest.json()["detail"]
    else:
        assert graphql.status_code == 400, graphql.text
        assert invalid.graphql_says in error["message"]


MANY_TAGS = [f"t{number}" for number in range(11)]
HUGE = 10**40

# name: a task to create (REST body, GraphQL CreateTaskInput)
INVALID_CREATES: dict[str, Invalid] = {
    "no title": Invalid({}, {}, "title: Field required", "required field 'title'"),
    "empty title": Invalid({"title": ""}, {"title": ""}, "must not be blank"),
    "blank title": Invalid({"title": "   "}, {"title": "   "}, "must not be blank"),
    "title over 200 characters": Invalid({"title": "x" * 201}, {"title": "x" * 201}, "at most 200 characters"),
    "null title": Invalid({"title": None}, {"title": None}, "title: must be a string", "'String!' not to be None"),
    "number as title": Invalid({"title": 5}, {"title": 5}, "title: must be a string", "String cannot represent"),
    "huge number as title": Invalid({"title": HUGE}, {"title": HUGE}, "title: must be a string", "String cannot"),
    "NUL in a title": Invalid({"title": "a\x00b"}, {"title": "a\x00b"}, "must not contain control characters"),
    "lone surrogate in a title": Invalid({"title": "\ud800"}, {"title": "\ud800"}, "must be valid Unicode text"),
    "description over 1000 characters": Invalid(
        {"title": "ok", "description": "d" * 1001}, {"title": "ok", "description": "d" * 1001}, "at most 1000"
    ),
    "lone surrogate in a description": Invalid(
        {"title": "ok", "description": "\udfff"}, {"title": "ok", "description": "\udfff"}, "valid Unicode text"
    ),
    "string as completed": Invalid(
        {"title": "ok", "completed": "yes"}, {"title": "ok", "completed": "yes"}, "completed", "Boolean cannot"
    ),
    "number as completed": Invalid(
        {"title": "ok", "completed": 1}, {"title": "ok", "completed": 1}, "completed", "Boolean cannot"
    ),
    "huge number as completed": Invalid(
        {"title": "ok", "completed": HUGE}, {"title": "ok", "completed": HUGE}, "completed", "Boolean cannot"
    ),
    "null completed": Invalid({"title": "ok", "completed": None}, {"title": "ok", "completed": None}, "completed"),
    "unknown priority": Invalid(
        {"title": "ok", "priority": "urgent"}, {"title": "ok", "priority": "URGENT"}, "priority", "'Priority' enum"
    ),
    "null priority": Invalid({"title": "ok", "priority": None}, {"title": "ok", "priority": None}, "priority"),
    "null tags": Invalid({"title": "ok", "tags": None}, {"title": "ok", "tags": None}, "list of strings"),
    "number as a tag": Invalid({"title": "ok", "tags": [1]}, {"title": "ok", "tags": [1]}, "tags", "String cannot"),
    "empty tag": Invalid({"title": "ok", "tags": [""]}, {"title": "ok", "tags": [""]}, "1-32 characters"),
    "tag over 32 characters": Invalid({"title": "ok", "tags": ["x" * 33]}, {"title": "ok", "tags": ["x" * 33]}, "1-32"),
    "eleven tags": Invalid({"title": "ok", "tags": MANY_TAGS}, {"title": "ok", "tags": MANY_TAGS}, "at most 10"),
    "line break in a tag": Invalid({"title": "ok", "tags": ["a\nb"]}, {"title": "ok", "tags": ["a\nb"]}, "control"),
    "NUL in a tag": Invalid({"title": "ok", "tags": ["a\x00"]}, {"title": "ok", "tags": ["a\x00"]}, "control"),
    "words as due date": Invalid(
        {"title": "ok", "due_date": "tomorrow"}, {"title": "ok", "dueDate": "tomorrow"}, "due_date", "'DateTime'"
    ),
    "impossible due date": Invalid(
        {"title": "ok", "due_date": "2026-13-45"}, {"title": "ok", "dueDate": "2026-13-45"}, "due_date", "'DateTime'"
    ),
    "number as due date": Invalid(
        {"title": "ok", "due_date": 1700000000}, {"title": "ok", "dueDate": 1700000000}, "ISO-8601", "ISO-8601"
    ),
    "due date out of range": Invalid(
        {"title": "ok", "due_date": "0001-01-01T00:00:00+01:00"},
        {"title": "ok", "dueDate": "0001-01-01T00:00:00+01:00"},
        "out of range",
    ),
}
CREATE = "mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }"


@pytest.mark.parametrize("case", INVALID_CREATES)
async def test_an_invalid_create_is_refused_alike_and_stores_nothing(client: httpx.AsyncClient, case: str) -> None:
    invalid = INVALID_CREATES[case]
    rest = await rest_request(client, "POST", "/api/tasks", invalid.rest)
    graphql = await graphql_request(client, CREATE, {"input": invalid.graphql})
    assert_refused_alike(rest, graphql, invalid)
    assert await titles_on_both(client, {}, {}) == ([], [])


# name: the fields to change (REST PATCH body, GraphQL UpdateTaskInput)
INVALID_UPDATES: dict[str, Invalid] = {
    "null title": Invalid({"title": None}, {"title": None}, "title: may not be null"),
    "blank title": Invalid({"title": " "}, {"title": " "}, "title: must not be blank"),
    "description over 1000 characters": Invalid({"description": "d" * 1001}, {"description": "d" * 1001}, "1000"),
    "null priority": Invalid({"priority": None}, {"priority": None}, "priority: may not be null"),
    "null completed": Invalid({"completed": None}, {"completed": None}, "completed: may not be null"),
    "null tags": Invalid({"tags": None}, {"tags": None}, "tags: may not be null"),
}
UPDATE = "mutation($id: ID!, $input: UpdateTaskInput!) { updateTask(id: $id, input: $input) { id } }"


@pytest.mark.parametrize("case", INVALID_UPDATES)
async def test_an_invalid_update_is_refused_alike_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, case: str
) -> None:
    invalid = INVALID_UPDATES[case]
    task = await create_task(db, "alice", title="keep", description="kept", tags=["kept"])
    rest = await rest_request(client, "PATCH", f"/api/tasks/{task.id}", invalid.rest)
    graphql = await graphql_request(client, UPDATE, {"id": str(task.id), "input": invalid.graphql})
    assert_refused_alike(rest, graphql, invalid)
    assert await task_service.get_task(db, principal("alice"), task_id=task.id) == task


# name: list arguments (REST query parameters, GraphQL arguments)
INVALID_LISTS: dict[str, Invalid] = {
    "page 0": Invalid({"page": "0"}, {"page": 0}, "page: Input should be greater than or equal to 1"),
    "limit 0": Invalid({"limit": "0"}, {"limit": 0}, "limit: Input should be greater than or equal to 1"),
    "limit over 100": Invalid({"limit": "101"}, {"limit": 101}, "limit: Input should be less than or equal to 100"),
    "page over a million": Invalid({"page": "2000000"}, {"page": 2_000_000}, "less than or equal to 1000000"),
    "huge page": Invalid({"page": "9" * 40}, {"page": HUGE}, "page", "non 32-bit signed integer"),
    "huge limit": Invalid({"limit": "9" * 40}, {"limit": HUGE}, "limit", "non 32-bit signed integer"),
    "page not a number": Invalid({"page": "abc"}, {"page": "abc"}, "page: Input should be a valid integer", "Int"),
    "unknown status": Invalid({"status": "bogus"}, {"status": "BOGUS"}, "status", "'TaskStatus' enum"),
    "unknown priority": Invalid({"priority": "urgent"}, {"priority": "URGENT"}, "priority", "'Priority' enum"),
    "unknown sort": Invalid({"sort": "bogus"}, {"sort": "BOGUS"}, "sort", "'TaskSort' enum"),
    "unknown order": Invalid({"order": "sideways"}, {"order": "SIDEWAYS"}, "order", "'SortOrder' enum"),
    "NUL in a tag": Invalid({"tag": "\x00"}, {"tag": "\x00"}, "tag: must not contain control characters"),
    "NUL in a search": Invalid({"search": "a\x00b"}, {"search": "a\x00b"}, "search: must not contain control"),
    "search over 200 characters": Invalid({"search": "x" * 201}, {"search": "x" * 201}, "at most 200 characters"),
}


@pytest.mark.parametrize("case", INVALID_LISTS)
async def test_invalid_list_arguments_are_refused_alike(client: httpx.AsyncClient, case: str) -> None:
    invalid = INVALID_LISTS[case]
    rest = await client.get("/api/tasks", params=invalid.rest, headers=ALICE)
    graphql = await graphql_request(client, tasks_query(invalid.graphql, "total"), invalid.graphql)
    assert_refused_alike(rest, graphql, invalid)


# --- Another user's task looks missing ---------------------------------------------------------


class Operation(NamedTuple):
    method: str
    suffix: str
    body: dict[str, Any] | None
    graphql: str


OPERATIONS: dict[str, Operation] = {
    "read": Operation("GET", "", None, "query($id: ID!) { task(id: $id) { id } }"),
    "replace": Operation(
        "PUT", "", {"title": "stolen"}, 'mutation($id: ID!) { updateTask(id: $id, input: {title: "stolen"}) { id } }'
    ),
    "update": Operation(
        "PATCH", "", {"title": "stolen"}, 'mutation($id: ID!) { updateTask(id: $id, input: {title: "stolen"}) { id } }'
    ),
    "complete": Operation("PATCH", "/complete", None, "mutation($id: ID!) { completeTask(id: $id) { id } }"),
    "toggle": Operation("PATCH", "/complete", None, "mutation($id: ID!) { toggleTask(id: $id) { id } }"),
    "delete": Operation("DELETE", "", None, "mutation($id: ID!) { deleteTask(id: $id) }"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_another_users_task_answers_like_a_missing_one(
    client: httpx.AsyncClient, db: Database, operation: str
) -> None:
    method, suffix, body, document = OPERATIONS[operation]
    theirs = await create_task(db, "bob", title="bob's")
    answers: dict[str, tuple[httpx.Response, httpx.Response]] = {}
    for whose, task_id in (("theirs", theirs.id), ("missing", theirs.id + 10_000)):
        rest = await rest_request(client, method, f"/api/tasks/{task_id}{suffix}", body)
        answers[whose] = (rest, await graphql_request(client, document, {"id": str(task_id)}))

    for rest, graphql in answers.values():
        assert rest.status_code == 404, rest.text
        assert rest.json()["error"] == "NOT_FOUND"
        if operation == "read":
            assert graphql.json() == {"data": {"task": None}}
        else:
            [error] = graphql.json()["errors"]
            assert (error["extensions"]["code"], error["message"]) == ("NOT_FOUND", rest.json()["detail"])
    (their_rest, their_graphql), (missing_rest, missing_graphql) = answers["theirs"], answers["missing"]
    assert their_rest.json() == missing_rest.json()
    assert their_graphql.json() == missing_graphql.json()
    assert await task_service.get_task(db, principal("bob"), task_id=theirs.id) == theirs
    assert await titles_on_both(client, {}, {}) == ([], [])


# --- Filters, sorts and pages -----------------------------------------------------------------


async def seed(db: Database) -> None:
    """Alice's four tasks, oldest first, and one of Bob's that no filter of hers may show."""
    await create_task(db, "alice", title="Buy milk", priority="high", tags=["Home"], due_date=due(2))
    await create_task(db, "alice", title="Write report", description="100% of Q3", tags=["Work"], due_date=due(1))
    await create_task(db, "alice", title="call plumber", completed=True, priority="low", tags=["home", "Urgent"])
    await create_task(db, "alice", title="Pay rent", description="milk money too", completed=True, priority="high")
    await create_task(db, "bob", title="Buy milk as Bob", priority="high", tags=["home"], due_date=due(3))


def due(day: int) -> datetime:
    return datetime(2030, 1, day, 9, tzinfo=UTC)


class Filter(NamedTuple):
    rest: dict[str, str]
    graphql: dict[str, Any]
    titles: list[str]


# name: the same filters on both transports, and the titles they list (see `seed`)
FILTERS: dict[str, Filter] = {
    "none: newest first": Filter({}, {}, ["Pay rent", "call plumber", "Write report", "Buy milk"]),
    "pending": Filter({"status": "pending"}, {"status": "PENDING"}, ["Write report", "Buy milk"]),
    "completed": Filter({"status": "completed"}, {"status": "COMPLETED"}, ["Pay rent", "call plumber"]),
    "high priority": Filter({"priority": "high"}, {"priority": "HIGH"}, ["Pay rent", "Buy milk"]),
    "tag, ignoring case": Filter({"tag": "HOME"}, {"tag": "HOME"}, ["call plumber", "Buy milk"]),
    "search in title and description": Filter({"search": "MILK"}, {"search": "MILK"}, ["Pay rent", "Buy milk"]),
    "search takes % literally": Filter({"search": "%"}, {"search": "%"}, ["Write report"]),
    "title A-Z, ignoring case": Filter(
        {"sort": "title", "order": "asc"},
        {"sort": "TITLE", "order": "ASC"},
        ["Buy milk", "call plumber", "Pay rent", "Write report"],
    ),
    "priority, highest first": Filter(
        {"sort": "priority"}, {"sort": "PRIORITY"}, ["Pay rent", "Buy milk", "Write report", "call plumber"]
    ),
    "due date, soonest first, none last": Filter(
        {"sort": "due_date", "order": "asc"},
        {"sort": "DUE_DATE", "order": "ASC"},
        ["Write report", "Buy milk", "call plumber", "Pay rent"],
    ),
    "due before a day (a date alone is 00:00 UTC)": Filter(
        {"due_before": "2030-01-02"}, {"dueBefore": "2030-01-02"}, ["Write report"]
    ),
    "due at or after an instant": Filter(
        {"due_after": "2030-01-02T09:00:00Z"}, {"dueAfter": "2030-01-02T09:00:00Z"}, ["Buy milk"]
    ),
    "with a due date": Filter({"has_due_date": "true"}, {"hasDueDate": True}, ["Write report", "Buy milk"]),
    "without a due date": Filter({"has_due_date": "false"}, {"hasDueDate": False}, ["Pay rent", "call plumber"]),
    "overdue (none: the dates are to come)": Filter({"overdue": "true"}, {"overdue": True}, []),
    "not overdue": Filter(
        {"overdue": "false"}, {"overdue": False}, ["Pay rent", "call plumber", "Write report", "Buy milk"]
    ),
    "second page of two": Filter({"limit": "2", "page": "2"}, {"limit": 2, "page": 2}, ["Write report", "Buy milk"]),
    "beyond the last page": Filter({"limit": "2", "page": "3"}, {"limit": 2, "page": 3}, []),
    "combined": Filter(
        {"status": "all", "tag": "home", "search": "l", "sort": "title", "order": "desc"},
        {"status": "ALL", "tag": "home", "search": "l", "sort": "TITLE", "order": "DESC"},
        ["call plumber", "Buy milk"],
    ),
}


@pytest.mark.parametrize("case", FILTERS)
async def test_the_same_filters_list_the_same_tasks(client: httpx.AsyncClient, db: Database, case: str) -> None:
    rest_params, graphql_arguments, expected = FILTERS[case]
    await seed(db)
    assert await titles_on_both(client, rest_params, graphql_arguments) == (expected, expected)
