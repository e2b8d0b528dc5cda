"""The task service on both databases: scoping, every operation, filters, search, sorts, pages."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backend.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed, QuotaExceeded
from backend.models import tasks_table
from backend.principal import Principal
from backend.schemas import TaskCreate, TaskListQuery, TaskUpdate
from backend.services import tasks as task_service
from backend.services import users as user_service
from backend.services.users import users_table
from backend.tests.factories import create_task, principal

ALICE = principal("alice")
QUOTA = 10_000
BOB = principal("bob")


def query(**values: object) -> TaskListQuery:
    return TaskListQuery.model_validate(values)


async def titles(session: AsyncSession, **values: object) -> list[str]:
    page = await task_service.list_tasks(session, ALICE, query(**values))
    return [task.title for task in page.items]


# --- Isolation: another user's task is indistinguishable from a missing one ---------------


async def test_list_returns_only_the_callers_tasks(session: AsyncSession) -> None:
    await create_task(session, ALICE, title="mine")
    await create_task(session, BOB, title="theirs")
    page = await task_service.list_tasks(session, ALICE, query())
    assert [task.title for task in page.items] == ["mine"]
    assert page.total == 1


AS_ALICE: dict[str, Callable[[AsyncSession, int], Awaitable[object]]] = {
    "get": lambda session, task_id: task_service.get_task(session, ALICE, task_id),
    "update": lambda session, task_id: task_service.update_task(session, ALICE, task_id, {"title": "stolen"}),
    "complete": lambda session, task_id: task_service.set_task_completed(session, ALICE, task_id),
    "delete": lambda session, task_id: task_service.delete_task(session, ALICE, task_id),
}


@pytest.mark.parametrize("operation", AS_ALICE)
async def test_other_users_task_is_not_found_and_unchanged(session: AsyncSession, operation: str) -> None:
    theirs = await create_task(session, BOB, title="theirs")
    with pytest.raises(NotFound) as raised:
        await AS_ALICE[operation](session, theirs.id)
    with pytest.raises(NotFound) as missing:
        await task_service.get_task(session, ALICE, theirs.id + 10_000)
    assert str(raised.value) == str(missing.value)
    assert await task_service.get_task(session, BOB, theirs.id) == theirs


async def test_user_tasks_of_someone_else_is_forbidden(session: AsyncSession) -> None:
    with pytest.raises(Forbidden):
        await task_service.list_user_tasks(session, ALICE, "bob", query())


# --- Create, read, update, complete, delete ----------------------------------------------


async def test_create_sets_server_fields_and_defaults(session: AsyncSession) -> None:
    before = datetime.now(UTC)
    task = await create_task(session, ALICE, title="Write tests")
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
    assert await task_service.get_task(session, ALICE, task.id) == task


async def test_create_provisions_the_user_row_once(session: AsyncSession) -> None:
    first = await create_task(session, principal("carol", email="carol@example.com"))
    second = await create_task(session, principal("carol", email="carol@example.com"))
    assert first.user_id == second.user_id == "carol"


async def test_create_with_a_taken_email_uses_a_placeholder(session: AsyncSession) -> None:
    await create_task(session, principal("dave", email="shared@example.com"))
    task = await create_task(session, principal("erin", email="shared@example.com"))
    assert task.user_id == "erin"


async def test_update_changes_fields_and_moves_updated_at(session: AsyncSession) -> None:
    task = await create_task(session, ALICE, title="old", description="keep")
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    changes = TaskUpdate.model_validate({"title": "new", "priority": "high", "tags": ["x"], "due_date": due}).changes()
    updated = await task_service.update_task(session, ALICE, task.id, changes)
    assert (updated.title, updated.priority, updated.tags, updated.due_date) == ("new", "high", ["x"], due)
    assert updated.description == "keep"
    assert updated.updated_at > task.updated_at
    assert updated.created_at == task.created_at
    assert updated.etag != task.etag


async def test_null_clears_description_and_due_date(session: AsyncSession) -> None:
    task = await create_task(session, ALICE, description="text", due_date=datetime(2030, 1, 1, tzinfo=UTC))
    changes = TaskUpdate.model_validate({"description": None, "due_date": None}).changes()
    updated = await task_service.update_task(session, ALICE, task.id, changes)
    assert (updated.description, updated.due_date) == (None, None)


async def test_a_write_that_changes_nothing_keeps_updated_at_and_etag(session: AsyncSession) -> None:
    task = await create_task(session, ALICE, title="same", tags=["a"])
    unchanged = await task_service.update_task(session, ALICE, task.id, {"title": "same", "tags": ["a"]})
    assert unchanged.updated_at == task.updated_at
    assert unchanged.etag == task.etag
    completed = await task_service.set_task_completed(session, ALICE, task.id, completed=False)
    assert completed.etag == task.etag


async def test_complete_toggles_and_sets(session: AsyncSession) -> None:
    task = await create_task(session, ALICE)
    toggled = await task_service.set_task_completed(session, ALICE, task.id)
    assert toggled.completed is True
    toggled_back = await task_service.set_task_completed(session, ALICE, task.id)
    assert toggled_back.completed is False
    set_true = await task_service.set_task_completed(session, ALICE, task.id, completed=True)
    set_again = await task_service.set_task_completed(session, ALICE, task.id, completed=True)
    assert set_true.completed is set_again.completed is True


async def test_delete_removes_the_task(session: AsyncSession) -> None:
    task = await create_task(session, ALICE)
    await task_service.delete_task(session, ALICE, task.id)
    with pytest.raises(NotFound):
        await task_service.get_task(session, ALICE, task.id)
    with pytest.raises(NotFound):
        await task_service.delete_task(session, ALICE, task.id)


# --- ETag preconditions and idempotency -----------------------------------------------------


async def test_if_match_guards_update_and_delete(session: AsyncSession) -> None:
    task = await create_task(session, ALICE, title="v1")
    updated = await task_service.update_task(session, ALICE, task.id, {"title": "v2"}, if_match=task.etag)
    with pytest.raises(PreconditionFailed):
        await task_service.update_task(session, ALICE, task.id, {"title": "v3"}, if_match=task.etag)
    with pytest.raises(PreconditionFailed):
        await task_service.delete_task(session, ALICE, task.id, if_match=task.etag)
    with pytest.raises(PreconditionFailed):
        await task_service.set_task_completed(session, ALICE, task.id, if_match=f"W/{updated.etag}")
    assert (await task_service.get_task(session, ALICE, task.id)).title == "v2"
    await task_service.delete_task(session, ALICE, task.id, if_match=f'"other", {updated.etag}')


async def test_if_match_star_matches_any_existing_task(session: AsyncSession) -> None:
    task = await create_task(session, ALICE)
    assert (await task_service.update_task(session, ALICE, task.id, {"title": "x"}, if_match="*")).title == "x"


async def test_idempotency_key_replays_the_first_response(session: AsyncSession) -> None:
    data = TaskCreate(title="once")
    first = await task_service.create_task(session, ALICE, data, quota=QUOTA, idempotency_key="key-1")
    again = await task_service.create_task(session, ALICE, data, quota=QUOTA, idempotency_key="key-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.task == first.task
    assert (await task_service.list_tasks(session, ALICE, query())).total == 1
    other_user = await task_service.create_task(session, BOB, data, quota=QUOTA, idempotency_key="key-1")
    assert other_user.replayed is False
    with pytest.raises(InvalidInput):
        await task_service.create_task(
            session, ALICE, TaskCreate(title="different"), quota=QUOTA, idempotency_key="key-1"
        )


# --- Filters, search and sorting -------------------------------------------------------------


async def test_status_and_priority_filters(session: AsyncSession) -> None:
    await create_task(session, ALICE, title="done", completed=True, priority="high")
    await create_task(session, ALICE, title="todo", priority="low")
    assert await titles(session, status="completed") == ["done"]
    assert await titles(session, status="pending") == ["todo"]
    assert sorted(await titles(session, status="all")) == ["done", "todo"]
    assert await titles(session, priority="low") == ["todo"]


async def test_tag_filter_is_exact_and_ignores_case(session: AsyncSession) -> None:
    await create_task(session, ALICE, title="work", tags=["Work", "Urgent"])
    await create_task(session, ALICE, title="homework", tags=["homework"])
    await create_task(session, ALICE, title="über", tags=["ÜBER"])
    await create_task(session, BOB, title="bob's work", tags=["work"])
    assert await titles(session, tag="work") == ["work"]
    assert await titles(session, tag="URGENT") == ["work"]
    assert await titles(session, tag="über") == ["über"]
    assert await titles(session, tag="wor") == []


async def test_search_is_case_insensitive_for_unicode_and_literal(session: AsyncSession) -> None:
    await create_task(session, ALICE, title="ÜBER alles")
    await create_task(session, ALICE, title="100% done", description="with under_score")
    await create_task(session, ALICE, title="plain", description="Mentions Milk")
    assert await titles(session, search="über") == ["ÜBER alles"]
    assert await titles(session, search="%") == ["100% done"]
    assert await titles(session, search="d_n") == []  # as a LIKE wildcard it would match "done"
    assert await titles(session, search="under_") == ["100% done"]
    assert await titles(session, q="milk") == ["plain"]
    assert await titles(session, search="'; DROP TABLE tasks; --") == []


async def test_tasks_without_due_date_sort_last_both_ways(session: AsyncSession) -> None:
    await create_task(session, ALICE, title="none")
    await create_task(session, ALICE, title="late", due_date=datetime(2031, 1, 1, tzinfo=UTC))
    await create_task(session, ALICE, title="soon", due_date=datetime(2030, 1, 1, tzinfo=UTC))
    assert await titles(session, sort="due_date", order="asc") == ["soon", "late", "none"]
    assert await titles(session, sort="dueDate", order="desc") == ["late", "soon", "none"]


async def test_priority_sorts_by_rank(session: AsyncSession) -> None:
    for name in ("medium", "low", "high"):
        await create_task(session, ALICE, title=name, priority=name)
    assert await titles(session, sort="priority", order="desc") == ["high", "medium", "low"]
    assert await titles(session, sort="priority", order="asc") == ["low", "medium", "high"]


async def test_title_sorts_ignoring_case(session: AsyncSession) -> None:
    for name in ("banana", "Apple", "cherry"):
        await create_task(session, ALICE, title=name)
    assert await titles(session, sort="title", order="asc") == ["Apple", "banana", "cherry"]


async def test_created_and_updated_sorts(session: AsyncSession) -> None:
    first = await create_task(session, ALICE, title="first")
    await create_task(session, ALICE, title="second")
    assert await titles(session) == ["second", "first"]
    assert await titles(session, sort="created_at", order="asc") == ["first", "second"]
    await task_service.update_task(session, ALICE, first.id, {"description": "touched"})
    assert await titles(session, sort="updatedAt", order="desc") == ["first", "second"]


async def test_pages_never_overlap_on_ties(session: AsyncSession) -> None:
    for index in range(7):
        await create_task(session, ALICE, title="same", priority="medium", description=str(index))
    seen: list[int] = []
    for page_number in (1, 2, 3):
        page = await task_service.list_tasks(
            session, ALICE, query(sort="title", order="asc", page=page_number, limit=3)
        )
        assert page.total == 7
        seen.extend(task.id for task in page.items)
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen)


async def test_total_and_has_next_on_every_page(session: AsyncSession) -> None:
    for index in range(5):
        await create_task(session, ALICE, title=f"t{index}")
    pages = [await task_service.list_tasks(session, ALICE, query(page=n, limit=2)) for n in (1, 2, 3, 4)]
    assert [len(page.items) for page in pages] == [2, 2, 1, 0]
    assert [page.total for page in pages] == [5, 5, 5, 5]
    assert [page.has_next for page in pages] == [True, True, False, False]


# --- Totals kept by triggers, and deep pages -------------------------------------------------


async def totals(session: AsyncSession, user: Principal = ALICE, **filters: object) -> dict[str, int]:
    return {
        status: (await task_service.list_tasks(session, user, query(status=status, limit=1, **filters))).total
        for status in ("all", "pending", "completed")
    }


async def test_totals_follow_every_write_including_other_tools(session: AsyncSession) -> None:
    first = await create_task(session, ALICE, title="one")
    second = await create_task(session, ALICE, title="two", priority="high")
    await create_task(session, ALICE, title="three")
    await create_task(session, BOB, title="bob's")
    assert await totals(session) == {"all": 3, "pending": 3, "completed": 0}
    await task_service.set_task_completed(session, ALICE, first.id)
    assert await totals(session) == {"all": 3, "pending": 2, "completed": 1}
    await task_service.delete_task(session, ALICE, first.id)
    assert await totals(session) == {"all": 2, "pending": 2, "completed": 0}
    await session.execute(text("INSERT INTO tasks (user_id, title, completed) VALUES ('alice', 'seeded', true)"))
    await session.execute(text("UPDATE tasks SET completed = true WHERE id = :id"), {"id": second.id})
    assert await totals(session) == {"all": 3, "pending": 1, "completed": 2}
    assert await totals(session, priority="high") == {"all": 1, "pending": 0, "completed": 1}
    assert await totals(session, BOB) == {"all": 1, "pending": 1, "completed": 0}
    await session.execute(text("UPDATE tasks SET title = 'renamed'"))  # touches no count
    await session.execute(text("UPDATE tasks SET completed = NOT completed"))  # both users, one statement
    assert await totals(session) == {"all": 3, "pending": 2, "completed": 1}
    assert await totals(session, BOB) == {"all": 1, "pending": 0, "completed": 1}
    await session.execute(text("DELETE FROM tasks WHERE user_id = 'alice'"))
    assert await totals(session) == {"all": 0, "pending": 0, "completed": 0}
    await session.execute(text("INSERT INTO tasks (user_id, title) SELECT user_id, title FROM tasks"))  # bulk copy
    assert await totals(session, BOB) == {"all": 2, "pending": 1, "completed": 1}


async def test_deep_pages_follow_the_same_order(session: AsyncSession) -> None:
    await user_service.ensure_user(session, ALICE)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    await session.execute(
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
            result = await task_service.list_tasks(session, ALICE, query(sort=sort, order=order, page=page, limit=100))
            assert result.total == 1060
            everything.extend(task.id for task in result.items)
        assert len(everything) == len(set(everything)) == 1060
    filtered = await task_service.list_tasks(session, ALICE, query(search="t3", page=11, limit=10))
    assert filtered.total == len([n for n in range(1060) if n % 7 == 3])


async def test_the_task_quota_refuses_creates_beyond_it(session: AsyncSession) -> None:
    for number in range(3):
        await create_task(session, ALICE, title=f"t{number}", quota=3)
    with pytest.raises(QuotaExceeded, match="at most 3 tasks"):
        await create_task(session, ALICE, title="one too many", quota=3)
    assert (await create_task(session, principal("bob"), quota=3)).user_id == "bob"  # per user
    first = (await task_service.list_tasks(session, ALICE, TaskListQuery())).items[-1]
    await task_service.delete_task(session, ALICE, first.id)
    assert (await create_task(session, ALICE, title="room again", quota=3)).title == "room again"
    assert (await task_service.list_tasks(session, ALICE, TaskListQuery())).total == 3


async def test_an_idempotent_retry_replays_even_at_the_quota(session: AsyncSession) -> None:
    data = TaskCreate(title="keyed")
    first = await task_service.create_task(session, ALICE, data, quota=1, idempotency_key="k")
    again = await task_service.create_task(session, ALICE, data, quota=1, idempotency_key="k")
    assert (again.task, again.replayed) == (first.task, True)


async def test_concurrent_creates_at_the_quota_never_exceed_it(engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    owner = principal(f"quota-{uuid.uuid4().hex[:8]}")

    async def attempt() -> bool:
        async with sessions() as session:
            try:
                await create_task(session, owner, quota=5)
            except QuotaExceeded:
                return False
            return True

    try:
        for _ in range(2):
            assert await attempt()
        outcomes = await asyncio.gather(*(attempt() for _ in range(12)))
        assert outcomes.count(True) == 3
        async with sessions() as session:
            assert (await task_service.list_tasks(session, owner, TaskListQuery())).total == 5
    finally:
        async with sessions() as session:
            await session.execute(delete(users_table).where(users_table.c.id == owner.user_id))
            await session.commit()
