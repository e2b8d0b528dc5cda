"""The task service on both databases: scoping, every operation, filters, search, sorts, pages."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database, Datastore
from backend.errors import Conflict, Forbidden, InvalidInput, NotFound, PreconditionFailed, QuotaExceeded
from backend.models import IdempotencyState, idempotency_table, tasks_table
from backend.principal import PLACEHOLDER_EMAIL_DOMAIN, Principal, is_reserved_email
from backend.schemas import TaskCreate, TaskListQuery, TaskUpdate, VersionCheck
from backend.services import tasks as task_service
from backend.services import users as user_service
from backend.services.idempotency import request_hash
from backend.services.users import users_table
from backend.tests.factories import create_task, principal

pytestmark = pytest.mark.every_database

ALICE = principal("alice")
QUOTA = 10_000
BOB = principal("bob")


def query(**values: object) -> TaskListQuery:
    return TaskListQuery.model_validate(values)


def patch(fields: dict[str, object]) -> TaskUpdate:
    return TaskUpdate.model_validate(fields)


async def titles(db: Database, **values: object) -> list[str]:
    page = await task_service.list_tasks(db, ALICE, query=query(**values))
    return [task.title for task in page.items]


# --- Isolation: another user's task is indistinguishable from a missing one ---------------


async def test_list_returns_only_the_callers_tasks(db: Database) -> None:
    await create_task(db, ALICE, title="mine")
    await create_task(db, BOB, title="theirs")
    page = await task_service.list_tasks(db, ALICE, query=query())
    assert [task.title for task in page.items] == ["mine"]
    assert page.total == 1


AS_ALICE: dict[str, Callable[[Database, int], Awaitable[object]]] = {
    "get": lambda db, task_id: task_service.get_task(db, ALICE, task_id=task_id),
    "update": lambda db, task_id: task_service.update_task(db, ALICE, task_id=task_id, data=patch({"title": "stolen"})),
    "complete": lambda db, task_id: task_service.toggle_task(db, ALICE, task_id=task_id),
    "delete": lambda db, task_id: task_service.delete_task(db, ALICE, task_id=task_id),
}


@pytest.mark.parametrize("operation", AS_ALICE)
async def test_other_users_task_is_not_found_and_unchanged(db: Database, operation: str) -> None:
    theirs = await create_task(db, BOB, title="theirs")
    with pytest.raises(NotFound) as raised:
        await AS_ALICE[operation](db, theirs.id)
    with pytest.raises(NotFound) as missing:
        await task_service.get_task(db, ALICE, task_id=theirs.id + 10_000)
    assert str(raised.value) == str(missing.value)
    assert await task_service.get_task(db, BOB, task_id=theirs.id) == theirs


async def test_user_tasks_of_someone_else_is_forbidden(db: Database) -> None:
    with pytest.raises(Forbidden):
        await task_service.list_user_tasks(db, ALICE, user_id="bob", query=query())


# --- Create, read, update, complete, delete ----------------------------------------------


async def test_create_sets_server_fields_and_defaults(db: Database) -> None:
    before = datetime.now(UTC)
    task = await create_task(db, ALICE, title="Write tests")
    assert task.id > 0
    assert task.user_id == "alice"
    assert (task.completed, task.priority, task.tags, task.description, task.due_date) == (
        False,
        "medium",
        [],
        None,
        None,
    )
    assert task.created_at == task.updated_at
    assert before - timedelta(seconds=1) <= task.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert task.created_at.tzinfo is not None
    assert await task_service.get_task(db, ALICE, task_id=task.id) == task


async def user_rows(connection: AsyncConnection, *user_ids: str) -> list[dict[str, object]]:
    statement = select(users_table).where(users_table.c.id.in_(user_ids)).order_by(users_table.c.id)
    return [dict(row) for row in (await connection.execute(statement)).mappings()]


async def test_create_provisions_the_user_row_once(db: Database, connection: AsyncConnection) -> None:
    carol = principal("carol", email="carol@example.com")
    first = await create_task(db, carol)
    [row] = await user_rows(connection, "carol")
    second = await create_task(db, principal("carol", email="carol@new.example", name="Renamed"))
    assert first.user_id == second.user_id == "carol"
    assert await user_rows(connection, "carol") == [row]  # still one row, as the first create wrote it
    assert (row["email"], row["name"]) == ("carol@example.com", "Carol")


async def test_create_with_a_taken_email_uses_a_placeholder(db: Database, connection: AsyncConnection) -> None:
    await create_task(db, principal("dave", email="shared@example.com"))
    [dave] = await user_rows(connection, "dave")
    task = await create_task(db, principal("erin", email="shared@example.com"))
    assert task.user_id == "erin"
    [erin] = await user_rows(connection, "erin")
    assert str(erin["email"]).endswith(f"@{PLACEHOLDER_EMAIL_DOMAIN}")
    assert is_reserved_email(str(erin["email"]))
    assert await user_rows(connection, "dave") == [dave]
    assert dave["email"] == "shared@example.com"


async def test_update_changes_fields_and_moves_updated_at(db: Database) -> None:
    task = await create_task(db, ALICE, title="old", description="keep")
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    changes = TaskUpdate.model_validate({"title": "new", "priority": "high", "tags": ["x"], "due_date": due})
    updated = await task_service.update_task(db, ALICE, task_id=task.id, data=changes)
    assert (updated.title, updated.priority, updated.tags, updated.due_date) == ("new", "high", ["x"], due)
    assert updated.description == "keep"
    assert updated.updated_at > task.updated_at
    assert updated.created_at == task.created_at
    assert updated.etag != task.etag


async def test_null_clears_description_and_due_date(db: Database) -> None:
    task = await create_task(db, ALICE, description="text", due_date=datetime(2030, 1, 1, tzinfo=UTC))
    changes = TaskUpdate.model_validate({"description": None, "due_date": None})
    updated = await task_service.update_task(db, ALICE, task_id=task.id, data=changes)
    assert (updated.description, updated.due_date) == (None, None)


async def test_a_write_that_changes_nothing_keeps_updated_at_and_etag(db: Database) -> None:
    task = await create_task(db, ALICE, title="same", tags=["a"])
    unchanged = await task_service.update_task(db, ALICE, task_id=task.id, data=patch({"title": "same", "tags": ["a"]}))
    assert unchanged.updated_at == task.updated_at
    assert unchanged.etag == task.etag
    completed = await task_service.complete_task(db, ALICE, task_id=task.id, completed=False)
    assert completed.etag == task.etag


async def test_complete_toggles_and_sets(db: Database) -> None:
    task = await create_task(db, ALICE)
    toggled = await task_service.toggle_task(db, ALICE, task_id=task.id)
    assert toggled.completed is True
    toggled_back = await task_service.toggle_task(db, ALICE, task_id=task.id)
    assert toggled_back.completed is False
    set_true = await task_service.complete_task(db, ALICE, task_id=task.id, completed=True)
    set_again = await task_service.complete_task(db, ALICE, task_id=task.id, completed=True)
    assert set_true.completed is set_again.completed is True


async def test_delete_removes_the_task(db: Database) -> None:
    task = await create_task(db, ALICE)
    await task_service.delete_task(db, ALICE, task_id=task.id)
    with pytest.raises(NotFound):
        await task_service.get_task(db, ALICE, task_id=task.id)
    with pytest.raises(NotFound):
        await task_service.delete_task(db, ALICE, task_id=task.id)


# --- ETag preconditions and idempotency -----------------------------------------------------


def only(*versions: str) -> VersionCheck:
    return VersionCheck(versions=frozenset(versions))


async def test_an_expected_version_guards_every_write(db: Database) -> None:
    task = await create_task(db, ALICE, title="v1")
    updated = await task_service.update_task(
        db, ALICE, task_id=task.id, data=patch({"title": "v2"}), expected=only(task.etag)
    )
    with pytest.raises(PreconditionFailed):
        await task_service.update_task(
            db, ALICE, task_id=task.id, data=patch({"title": "v3"}), expected=only(task.etag)
        )
    with pytest.raises(PreconditionFailed):
        await task_service.delete_task(db, ALICE, task_id=task.id, expected=only(task.etag))
    with pytest.raises(PreconditionFailed):
        await task_service.toggle_task(db, ALICE, task_id=task.id, expected=only(f"W/{updated.etag}"))
    with pytest.raises(PreconditionFailed):
        await task_service.complete_task(db, ALICE, task_id=task.id, completed=True, expected=only(task.etag))
    assert (await task_service.get_task(db, ALICE, task_id=task.id)).title == "v2"
    await task_service.delete_task(db, ALICE, task_id=task.id, expected=only('"other"', updated.etag))


async def test_any_version_matches_any_existing_task(db: Database) -> None:
    task = await create_task(db, ALICE)
    anything = VersionCheck(any_version=True)
    changed = await task_service.update_task(db, ALICE, task_id=task.id, data=patch({"title": "x"}), expected=anything)
    assert changed.title == "x"


async def test_update_changes_only_editable_fields(db: Database) -> None:
    """A service caller cannot widen what may change: TaskUpdate has no user_id, and the service only
    writes the editable fields."""
    task = await create_task(db, ALICE, title="mine")
    moved = await task_service.update_task(
        db, ALICE, task_id=task.id, data=TaskUpdate.model_validate({"user_id": "bob", "id": 99, "title": "still"})
    )
    assert (moved.user_id, moved.id, moved.title) == ("alice", task.id, "still")
    assert (await task_service.list_tasks(db, BOB, query=query())).total == 0


async def test_idempotency_key_replays_the_first_response(db: Database) -> None:
    data = TaskCreate(title="once")
    first = await task_service.create_task(db, ALICE, data=data, quota=QUOTA, idempotency_key="key-1")
    again = await task_service.create_task(db, ALICE, data=data, quota=QUOTA, idempotency_key="key-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.task == first.task
    assert (await task_service.list_tasks(db, ALICE, query=query())).total == 1
    other_user = await task_service.create_task(db, BOB, data=data, quota=QUOTA, idempotency_key="key-1")
    assert other_user.replayed is False
    with pytest.raises(InvalidInput):
        await task_service.create_task(
            db, ALICE, data=TaskCreate(title="different"), quota=QUOTA, idempotency_key="key-1"
        )


# --- Filters, search and sorting -------------------------------------------------------------


async def test_status_and_priority_filters(db: Database) -> None:
    await create_task(db, ALICE, title="done", completed=True, priority="high")
    await create_task(db, ALICE, title="todo", priority="low")
    assert await titles(db, status="completed") == ["done"]
    assert await titles(db, status="pending") == ["todo"]
    assert sorted(await titles(db, status="all")) == ["done", "todo"]
    assert await titles(db, priority="low") == ["todo"]


async def test_tag_filter_is_exact_and_ignores_case(db: Database) -> None:
    await create_task(db, ALICE, title="work", tags=["Work", "Urgent"])
    await create_task(db, ALICE, title="homework", tags=["homework"])
    await create_task(db, ALICE, title="über", tags=["ÜBER"])
    await create_task(db, BOB, title="bob's work", tags=["work"])
    assert await titles(db, tag="work") == ["work"]
    assert await titles(db, tag="URGENT") == ["work"]
    assert await titles(db, tag="über") == ["über"]
    assert await titles(db, tag="wor") == []


async def test_search_is_case_insensitive_for_unicode_and_literal(db: Database) -> None:
    await create_task(db, ALICE, title="ÜBER alles")
    await create_task(db, ALICE, title="100% done", description="with under_score")
    await create_task(db, ALICE, title="plain", description="Mentions Milk")
    assert await titles(db, search="über") == ["ÜBER alles"]
    assert await titles(db, search="%") == ["100% done"]
    assert await titles(db, search="d_n") == []  # as a LIKE wildcard it would match "done"
    assert await titles(db, search="under_") == ["100% done"]
    assert await titles(db, q="milk") == ["plain"]
    assert await titles(db, search="'; DROP TABLE tasks; --") == []


async def test_tasks_without_due_date_sort_last_both_ways(db: Database) -> None:
    await create_task(db, ALICE, title="none")
    await create_task(db, ALICE, title="late", due_date=datetime(2031, 1, 1, tzinfo=UTC))
    await create_task(db, ALICE, title="soon", due_date=datetime(2030, 1, 1, tzinfo=UTC))
    assert await titles(db, sort="due_date", order="asc") == ["soon", "late", "none"]
    assert await titles(db, sort="dueDate", order="desc") == ["late", "soon", "none"]


async def test_priority_sorts_by_rank(db: Database) -> None:
    for name in ("medium", "low", "high"):
        await create_task(db, ALICE, title=name, priority=name)
    assert await titles(db, sort="priority", order="desc") == ["high", "medium", "low"]
    assert await titles(db, sort="priority", order="asc") == ["low", "medium", "high"]


async def test_title_sorts_ignoring_case(db: Database) -> None:
    for name in ("banana", "Apple", "cherry"):
        await create_task(db, ALICE, title=name)
    assert await titles(db, sort="title", order="asc") == ["Apple", "banana", "cherry"]


async def test_created_and_updated_sorts(db: Database) -> None:
    first = await create_task(db, ALICE, title="first")
    await create_task(db, ALICE, title="second")
    assert await titles(db) == ["second", "first"]
    assert await titles(db, sort="created_at", order="asc") == ["first", "second"]
    await task_service.update_task(db, ALICE, task_id=first.id, data=patch({"description": "touched"}))
    assert await titles(db, sort="updatedAt", order="desc") == ["first", "second"]


async def test_pages_never_overlap_on_ties(db: Database) -> None:
    for index in range(7):
        await create_task(db, ALICE, title="same", priority="medium", description=str(index))
    seen: list[int] = []
    for page_number in (1, 2, 3):
        page = await task_service.list_tasks(
            db, ALICE, query=query(sort="title", order="asc", page=page_number, limit=3)
        )
        assert page.total == 7
        seen.extend(task.id for task in page.items)
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen)


async def test_total_and_has_next_on_every_page(db: Database) -> None:
    for index in range(5):
        await create_task(db, ALICE, title=f"t{index}")
    pages = [await task_service.list_tasks(db, ALICE, query=query(page=n, limit=2)) for n in (1, 2, 3, 4)]
    assert [len(page.items) for page in pages] == [2, 2, 1, 0]
    assert [page.total for page in pages] == [5, 5, 5, 5]
    assert [page.has_next for page in pages] == [True, True, False, False]


# --- Totals kept by triggers, and deep pages -------------------------------------------------


async def totals(db: Database, user: Principal = ALICE, **filters: object) -> dict[str, int]:
    return {
        status: (await task_service.list_tasks(db, user, query=query(status=status, limit=1, **filters))).total
        for status in ("all", "pending", "completed")
    }


async def test_totals_follow_every_write_including_other_tools(db: Database, connection: AsyncConnection) -> None:
    first = await create_task(db, ALICE, title="one")
    second = await create_task(db, ALICE, title="two", priority="high")
    await create_task(db, ALICE, title="three")
    await create_task(db, BOB, title="bob's")
    assert await totals(db) == {"all": 3, "pending": 3, "completed": 0}
    await task_service.toggle_task(db, ALICE, task_id=first.id)
    assert await totals(db) == {"all": 3, "pending": 2, "completed": 1}
    await task_service.delete_task(db, ALICE, task_id=first.id)
    assert await totals(db) == {"all": 2, "pending": 2, "completed": 0}
    await connection.execute(text("INSERT INTO tasks (user_id, title, completed) VALUES ('alice', 'seeded', true)"))
    await connection.execute(text("UPDATE tasks SET completed = true WHERE id = :id"), {"id": second.id})
    assert await totals(db) == {"all": 3, "pending": 1, "completed": 2}
    assert await totals(db, priority="high") == {"all": 1, "pending": 0, "completed": 1}
    assert await totals(db, BOB) == {"all": 1, "pending": 1, "completed": 0}
    await connection.execute(text("UPDATE tasks SET title = 'renamed'"))  # touches no count
    await connection.execute(text("UPDATE tasks SET completed = NOT completed"))  # both users, one statement
    assert await totals(db) == {"all": 3, "pending": 2, "completed": 1}
    assert await totals(db, BOB) == {"all": 1, "pending": 0, "completed": 1}
    await connection.execute(text("DELETE FROM tasks WHERE user_id = 'alice'"))
    assert await totals(db) == {"all": 0, "pending": 0, "completed": 0}
    await connection.execute(text("INSERT INTO tasks (user_id, title) SELECT user_id, title FROM tasks"))  # bulk copy
    assert await totals(db, BOB) == {"all": 2, "pending": 1, "completed": 1}


async def test_deep_pages_follow_the_same_order(db: Database, connection: AsyncConnection) -> None:
    await user_service.ensure_user(connection, ALICE)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    await connection.execute(
        tasks_table.insert(),
        [
            {
                "user_id": "alice",
                "title": f"t{n % 7}",
                "created_at": base + timedelta(minutes=n % 50),
                "updated_at": base,
            }
            for n in range(1060)
        ],
    )
    for sort, order in (("created", "desc"), ("title", "asc")):
        everything: list[int] = []
        for page in range(1, 12):
            result = await task_service.list_tasks(db, ALICE, query=query(sort=sort, order=order, page=page, limit=100))
            assert result.total == 1060
            everything.extend(task.id for task in result.items)
        assert len(everything) == len(set(everything)) == 1060
    filtered = await task_service.list_tasks(db, ALICE, query=query(search="t3", page=11, limit=10))
    assert filtered.total == len([n for n in range(1060) if n % 7 == 3])


async def test_the_task_quota_refuses_creates_beyond_it(db: Database) -> None:
    for number in range(3):
        await create_task(db, ALICE, title=f"t{number}", quota=3)
    with pytest.raises(QuotaExceeded, match="at most 3 tasks"):
        await create_task(db, ALICE, title="one too many", quota=3)
    assert (await create_task(db, principal("bob"), quota=3)).user_id == "bob"  # per user
    first = (await task_service.list_tasks(db, ALICE, query=TaskListQuery())).items[-1]
    await task_service.delete_task(db, ALICE, task_id=first.id)
    assert (await create_task(db, ALICE, title="room again", quota=3)).title == "room again"
    assert (await task_service.list_tasks(db, ALICE, query=TaskListQuery())).total == 3


async def test_an_idempotent_retry_replays_even_at_the_quota(db: Database) -> None:
    data = TaskCreate(title="keyed")
    first = await task_service.create_task(db, ALICE, data=data, quota=1, idempotency_key="k")
    again = await task_service.create_task(db, ALICE, data=data, quota=1, idempotency_key="k")
    assert (again.task, again.replayed) == (first.task, True)


async def test_concurrent_creates_at_the_quota_never_exceed_it(datastore: Datastore) -> None:
    owner = principal(f"quota-{uuid.uuid4().hex[:8]}")

    async def attempt() -> bool:
        try:
            await create_task(datastore.for_request(), owner, quota=5)
        except QuotaExceeded:
            return False
        return True

    try:
        for _ in range(2):
            assert await attempt()
        outcomes = await asyncio.gather(*(attempt() for _ in range(12)))
        assert outcomes.count(True) == 3
        assert (await task_service.list_tasks(datastore.for_request(), owner, query=TaskListQuery())).total == 5
    finally:
        async with datastore.for_request().writing() as connection:
            await connection.execute(delete(users_table).where(users_table.c.id == owner.user_id))


async def test_a_key_whose_first_request_is_still_in_progress_is_a_conflict(
    db: Database, connection: AsyncConnection
) -> None:
    data = TaskCreate(title="slow")
    await user_service.ensure_user(connection, ALICE)
    await connection.execute(
        idempotency_table.insert().values(
            user_id="alice", key="busy", request_hash=request_hash(data), state=IdempotencyState.IN_PROGRESS
        )
    )
    with pytest.raises(Conflict):
        await task_service.create_task(db, ALICE, data=data, quota=QUOTA, idempotency_key="busy")
    assert (await task_service.list_tasks(db, ALICE, query=query())).total == 0
