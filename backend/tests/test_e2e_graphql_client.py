"""The chatbot's whole task lifecycle through a real GraphQL client (gql) that validates every document
against schema.graphql, against the app served by uvicorn, on PostgreSQL and on SQLite."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from graphql import GraphQLError

from backend.tests.conftest import create_scratch_database, drop_scratch_database
from backend.tests.external_servers import uvicorn_server
from backend.tests.factories import TEST_SECRET, auth_headers

SCHEMA = (Path(__file__).resolve().parents[2] / "schema.graphql").read_text()
pytestmark = pytest.mark.slow

CREATE = gql(
    """mutation Create($input: CreateTaskInput!) {
        createTask(input: $input) { id version title dueDate completed }
    }"""
)
DUE_PAGE = gql(
    """query Due($before: DateTime, $page: Int) {
        tasks(dueBefore: $before, hasDueDate: true, sort: DUE_DATE, order: ASC, limit: 2, page: $page) {
            total hasNext items { id title dueDate }
        }
    }"""
)
OVERDUE = gql("query { tasks(overdue: true) { total items { title } } }")
UPDATE = gql(
    """mutation Update($id: ID!, $input: UpdateTaskInput!, $version: String) {
        updateTask(id: $id, input: $input, expectedVersion: $version) { id version title }
    }"""
)
COMPLETE_ALL = gql("mutation Complete($ids: [ID!]!) { completeTasks(ids: $ids) { id completed } }")
DELETE_ALL = gql("mutation Delete($ids: [ID!]!) { deleteTasks(ids: $ids) }")
COUNT = gql("query { tasks(status: ALL) { total } }")


@pytest.fixture(params=["postgresql", "sqlite"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        database_url, cleanup = f"sqlite+aiosqlite:///{tmp_path}/e2e.db", None
    else:
        database_url = cleanup = await create_scratch_database("todo_e2e_gql")
    environment = {"APP_ENV": "test", "DATABASE_URL": database_url, "BETTER_AUTH_SECRET": TEST_SECRET}
    try:
        with uvicorn_server(environment, log=tmp_path / "server.log") as base_url:
            yield base_url
    finally:
        if cleanup is not None:
            await drop_scratch_database(cleanup)


async def test_the_chatbot_lifecycle_through_a_validating_client(server: str) -> None:
    transport = HTTPXAsyncTransport(url=f"{server}/graphql", headers=auth_headers("chatbot-user"))
    async with Client(transport=transport, schema=SCHEMA) as session:

        async def run(document: GraphQLRequest, **variables: Any) -> dict[str, Any]:
            result: dict[str, Any] = await session.execute(GraphQLRequest(document, variable_values=variables))
            return result

        # Create, with a retry: the same idempotency key returns the same task.
        milk = {"title": "Buy milk", "dueDate": "2026-01-01", "idempotencyKey": "milk-1"}
        first, retried = [(await run(CREATE, input=milk))["createTask"] for _ in range(2)]
        assert retried == first
        for number in range(4):
            await run(CREATE, input={"title": f"Report {number}", "dueDate": f"2030-0{number + 1}-15T09:00:00Z"})
        await run(CREATE, input={"title": "Someday"})

        # List with due-date filters and pages.
        page_one = (await run(DUE_PAGE, before="2030-03-01", page=1))["tasks"]
        page_two = (await run(DUE_PAGE, before="2030-03-01", page=2))["tasks"]
        assert (page_one["total"], page_one["hasNext"], page_two["hasNext"]) == (3, True, False)
        assert [task["title"] for task in page_one["items"] + page_two["items"]] == ["Buy milk", "Report 0", "Report 1"]
        assert (await run(OVERDUE))["tasks"]["items"] == [{"title": "Buy milk"}]

        # Update with a stale version: refused, nothing changes; with the current one it goes through.
        renamed = await run(UPDATE, id=first["id"], input={"title": "Buy oat milk"}, version=first["version"])
        with pytest.raises(TransportQueryError) as stale:
            await run(UPDATE, id=first["id"], input={"title": "Buy soy milk"}, version=first["version"])
        assert stale.value.errors is not None
        assert stale.value.errors[0]["extensions"]["code"] == "PRECONDITION_FAILED"
        assert renamed["updateTask"]["title"] == "Buy oat milk"

        # Bulk complete: all or nothing.
        reports = [task["id"] for task in page_one["items"] + page_two["items"]]
        with pytest.raises(TransportQueryError) as missing:
            await run(COMPLETE_ALL, ids=[*reports, "2147483647"])
        assert missing.value.errors is not None
        assert missing.value.errors[0]["extensions"] == {"code": "NOT_FOUND", "ids": ["2147483647"]}
        completed = (await run(COMPLETE_ALL, ids=reports))["completeTasks"]
        assert [task["completed"] for task in completed] == [True, True, True]
        assert (await run(OVERDUE))["tasks"]["total"] == 0

        # Delete.
        assert (await run(DELETE_ALL, ids=reports)) == {"deleteTasks": reports}
        assert (await run(COUNT))["tasks"]["total"] == 3

        # The client validates against schema.graphql before sending anything.
        with pytest.raises(GraphQLError, match="Cannot query field 'bogus'"):
            await session.execute(gql("query { tasks { bogus } }"))
