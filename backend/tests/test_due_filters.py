"""Due-date filters (dueBefore, dueAfter, overdue, hasDueDate): one service function on every database;
REST and GraphQL give the same answers (backend/tests/test_parity.py's filter table)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from backend.db import Database
from backend.schemas import TaskListQuery
from backend.services import tasks as task_service
from backend.tests.factories import auth_headers, create_task, principal

ALICE = principal("alice")
NOW = datetime.now(UTC)
# title: (due date, completed)
TASKS: dict[str, tuple[datetime | None, bool]] = {
    "late": (NOW - timedelta(days=3), False),
    "late but done": (NOW - timedelta(days=2), True),
    "today, later": (NOW + timedelta(hours=1), False),
    "next week": (NOW + timedelta(days=7), False),
    "someday": (None, False),
    "someday, done": (None, True),
    "new year": (datetime(2031, 1, 1, tzinfo=UTC), False),
}
NEW_YEAR = "2031-01-01"

# name: (TaskListQuery values, as REST's query string gives them; the titles listed)
FILTERS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "overdue": ({"overdue": "true"}, {"late"}),
    "not overdue": (
        {"overdue": "false"},
        {"late but done", "today, later", "next week", "someday", "someday, done", "new year"},
    ),
    "with a due date": (
        {"has_due_date": "true"},
        {"late", "late but done", "today, later", "next week", "new year"},
    ),
    "without a due date": ({"has_due_date": "false"}, {"someday", "someday, done"}),
    "due before a date (midnight UTC)": (
        {"due_before": NEW_YEAR},
        {"late", "late but done", "today, later", "next week"},
    ),
    "due at or after a date": ({"due_after": NEW_YEAR}, {"new year"}),
    "a window": (
        {"due_after": (NOW - timedelta(days=1)).isoformat(), "due_before": (NOW + timedelta(days=1)).isoformat()},
        {"today, later"},
    ),
    "overdue and pending, sorted by due date": (
        {"overdue": "true", "status": "pending", "sort": "due_date"},
        {"late"},
    ),
    "overdue but completed: nothing": (
        {"overdue": "true", "status": "completed"},
        set(),
    ),
}


async def seed(db: Database) -> None:
    for title, (due, completed) in TASKS.items():
        await create_task(db, ALICE, title=title, due_date=due, completed=completed)
    await create_task(db, principal("bob"), title="bob's, late", due_date=NOW - timedelta(days=5))


@pytest.mark.parametrize("case", FILTERS)
async def test_the_service_filters_by_due_date(db: Database, case: str) -> None:
    await seed(db)
    values, expected = FILTERS[case]
    page = await task_service.list_tasks(db, ALICE, query=TaskListQuery.model_validate({**values, "limit": 100}))
    assert {task.title for task in page.items} == expected
    assert page.total == len(expected)


@pytest.mark.graphql_modes
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"due_before": "soon"}, "due_before"),
        ({"overdue": "perhaps"}, "overdue"),
        ({"has_due_date": "2"}, "has_due_date"),
    ],
)
async def test_a_bad_due_filter_is_a_422(client: httpx.AsyncClient, params: dict[str, str], field: str) -> None:
    response = await client.get("/api/tasks", params=params, headers=auth_headers("alice"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", field]


@pytest.mark.graphql_modes
async def test_user_tasks_take_the_same_filters(client: httpx.AsyncClient, db: Database) -> None:
    await seed(db)
    body = (
        await client.post(
            "/graphql",
            json={"query": "{ me { tasks(overdue: true) { items { title } } } }"},
            headers=auth_headers("alice"),
        )
    ).json()
    assert body["data"]["me"]["tasks"]["items"] == [{"title": "late"}]
