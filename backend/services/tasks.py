"""Every task rule, shared by REST and GraphQL. Each query is scoped to the calling user.

Services take the request's `Database` and the verified `Principal`, then keyword-only arguments in
the shapes of backend/schemas.py; they raise `DomainError`s and never see HTTP or GraphQL.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database
from backend.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed, QuotaExceeded
from backend.models import tasks_table, utcnow
from backend.principal import Principal
from backend.schemas import TaskCreate, TaskListQuery, TaskPublic, TaskUpdate, VersionCheck
from backend.services import idempotency
from backend.services import task_statements as statements
from backend.services import users as user_service

BULK_MAX = 100  # ids in one completeTasks / deleteTasks
# What a write may change; id, user_id and the timestamps belong to the server.
EDITABLE_FIELDS = {"title", "description", "completed", "priority", "tags", "due_date"}


@dataclass(frozen=True, slots=True)
class TaskPage:
    items: list[TaskPublic]
    total: int
    page: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.page * self.limit < self.total


@dataclass(frozen=True, slots=True)
class CreatedTask:
    task: TaskPublic
    replayed: bool  # True when an idempotency-key retry answered with the first response


# --- Reading ---------------------------------------------------------------------------------------


async def list_tasks(db: Database, principal: Principal, *, query: TaskListQuery) -> TaskPage:
    shape = statements.ListShape.of(query)
    parameters = statements.list_parameters(principal, query)
    async with db.reading() as connection:
        rows = (await connection.execute(statements.page_statement(shape), parameters)).all()
        if rows and not shape.deep:
            total = int(rows[0].total)
        elif not rows and query.page == 1:
            total = 0
        else:
            total = int((await connection.execute(statements.count_statement(shape), parameters)).scalar_one())
    return TaskPage(items=statements.to_tasks(rows), total=total, page=query.page, limit=query.limit)


async def list_user_tasks(db: Database, principal: Principal, *, user_id: str, query: TaskListQuery) -> TaskPage:
    """Tasks of `user_id`, which must be the caller (GraphQL's User.tasks)."""
    if user_id != principal.user_id:
        raise Forbidden()
    return await list_tasks(db, principal, query=query)


async def get_task(db: Database, principal: Principal, *, task_id: int) -> TaskPublic:
    async with db.reading() as connection:
        row = (await connection.execute(statements.OWNED_TASK, statements.owned(principal, task_id))).one_or_none()
    if row is None:
        raise NotFound()
    return statements.to_tasks([row])[0]


# --- Creating --------------------------------------------------------------------------------------


async def create_task(
    db: Database, principal: Principal, *, data: TaskCreate, quota: int, idempotency_key: str | None = None
) -> CreatedTask:
    """Insert the task, unless the owner already has `quota` tasks.

    The owner's user row is created just in time, when the insert finds it missing. Without an
    idempotency key the insert is one statement (the quota check included), so it needs no transaction.
    """
    try:
        async with db.writing(one_statement=idempotency_key is None) as connection:
            return await _insert_task(connection, principal, data, quota, idempotency_key)
    except IntegrityError as error:
        if not _owner_missing(error):
            raise
    async with db.writing() as connection:
        await user_service.ensure_user(connection, principal)
        return await _insert_task(connection, principal, data, quota, idempotency_key)


def _owner_missing(error: IntegrityError) -> bool:
    """A foreign key violation: tasks and idempotency keys only reference the user table."""
    return getattr(error.orig, "sqlstate", None) == "23503" or "FOREIGN KEY constraint failed" in str(error.orig)


async def _insert_task(
    connection: AsyncConnection, principal: Principal, data: TaskCreate, quota: int, idempotency_key: str | None
) -> CreatedTask:
    if idempotency_key is not None:
        first = await idempotency.claim(connection, principal, idempotency_key, data)
        if first is not None:
            return CreatedTask(task=first, replayed=True)
    now = utcnow()
    values = {"user_id": principal.user_id, **data.model_dump(), "created_at": now, "updated_at": now, "quota": quota}
    inserted = (await connection.execute(statements.INSERT_TASK_WITHIN_QUOTA, values)).one_or_none()
    if inserted is None:
        raise QuotaExceeded(f"Task quota reached: at most {quota} tasks per user; delete some before creating more")
    task = statements.to_tasks([inserted])[0]
    if idempotency_key is not None:
        await idempotency.finish(connection, principal, idempotency_key, task)
    return CreatedTask(task=task, replayed=False)


# --- Changing --------------------------------------------------------------------------------------


async def update_task(
    db: Database, principal: Principal, *, task_id: int, data: TaskUpdate, expected: VersionCheck | None = None
) -> TaskPublic:
    """PUT and PATCH: the fields the client sent, validated by TaskUpdate; nothing else can change."""
    changes = data.model_dump(exclude_unset=True, include=EDITABLE_FIELDS)
    return await _change_task(db, principal, task_id, lambda _current: changes, expected)


async def complete_task(
    db: Database, principal: Principal, *, task_id: int, completed: bool, expected: VersionCheck | None = None
) -> TaskPublic:
    """Set `completed`: a retry changes nothing."""
    if expected is None:
        # The common case in one statement, no transaction; when it changes no row (not found, already
        # so, or a clock that stepped back), the general path below decides.
        parameters = statements.completion(principal, task_id, completed, utcnow())
        async with db.writing(one_statement=True) as connection:
            row = (await connection.execute(statements.SET_COMPLETED, parameters)).one_or_none()
        if row is not None:
            return statements.to_tasks([row])[0]
    return await _change_task(db, principal, task_id, lambda _current: {"completed": completed}, expected)


async def toggle_task(
    db: Database, principal: Principal, *, task_id: int, expected: VersionCheck | None = None
) -> TaskPublic:
    """Flip `completed` (REST's documented PATCH /complete without a body)."""
    return await _change_task(db, principal, task_id, lambda current: {"completed": not current.completed}, expected)


async def _change_task(
    db: Database,
    principal: Principal,
    task_id: int,
    compute_changes: Callable[[TaskPublic], dict[str, Any]],
    expected: VersionCheck | None,
) -> TaskPublic:
    async with db.writing() as connection:
        current = await _owned_task_for_update(connection, principal, task_id, expected)
        return await _apply_changes(connection, current, compute_changes(current))


async def _apply_changes(connection: AsyncConnection, current: TaskPublic, proposed: dict[str, Any]) -> TaskPublic:
    changes = {field: value for field, value in proposed.items() if getattr(current, field) != value}
    if not changes:
        return current  # nothing changed: neither updated_at nor the ETag moves
    # updated_at strictly increases even if the clock steps back, so every change is visible.
    changes["updated_at"] = max(utcnow(), current.updated_at + timedelta(microseconds=1))
    statement = update(tasks_table).where(tasks_table.c.id == current.id).values(**changes)
    updated = (await connection.execute(statement.returning(*statements.TASK_COLUMNS))).one()
    return statements.to_tasks([updated])[0]


async def _owned_task_for_update(
    connection: AsyncConnection, principal: Principal, task_id: int, expected: VersionCheck | None
) -> TaskPublic:
    """The caller's task, locked for this transaction, at a version `expected` allows."""
    owned = statements.owned(principal, task_id)
    row = (await connection.execute(statements.OWNED_TASK_FOR_UPDATE, owned)).one_or_none()
    if row is None:
        raise NotFound()
    current = statements.to_tasks([row])[0]
    if expected is not None and not expected.allows(current.etag):
        raise PreconditionFailed()
    return current


# --- Many at once ----------------------------------------------------------------------------------


async def complete_tasks(
    db: Database, principal: Principal, *, task_ids: Sequence[int], completed: bool
) -> list[TaskPublic]:
    """Set `completed` on each of the caller's tasks named, in their order; all of them or none."""
    ids = _distinct(task_ids)
    async with db.writing() as connection:
        current = await _owned_tasks_for_update(connection, principal, ids)
        return [await _apply_changes(connection, current[task_id], {"completed": completed}) for task_id in ids]


async def delete_tasks(db: Database, principal: Principal, *, task_ids: Sequence[int]) -> list[int]:
    """Delete each of the caller's tasks named; all of them or none. Returns the ids deleted."""
    ids = _distinct(task_ids)
    async with db.writing() as connection:
        await _owned_tasks_for_update(connection, principal, ids)
        await connection.execute(statements.DELETE_OWNED_TASKS, statements.owned_many(principal, ids))
    return ids


def _distinct(task_ids: Sequence[int]) -> list[int]:
    if len(task_ids) > BULK_MAX:
        raise InvalidInput(f"At most {BULK_MAX} ids at once", fields=[(("ids",), f"at most {BULK_MAX} ids")])
    return list(dict.fromkeys(task_ids))


async def _owned_tasks_for_update(
    connection: AsyncConnection, principal: Principal, task_ids: list[int]
) -> dict[int, TaskPublic]:
    """The caller's tasks by id, locked; NotFound naming every id that is missing or another user's."""
    if not task_ids:
        return {}
    rows = (
        await connection.execute(statements.OWNED_TASKS_FOR_UPDATE, statements.owned_many(principal, task_ids))
    ).all()
    found = {task.id: task for task in statements.to_tasks(rows)}
    missing = [task_id for task_id in task_ids if task_id not in found]
    if missing:
        raise NotFound(f"No such task: {', '.join(map(str, missing))}", ids=missing)
    return found


async def delete_task(
    db: Database, principal: Principal, *, task_id: int, expected: VersionCheck | None = None
) -> None:
    async with db.writing(one_statement=expected is None) as connection:
        if expected is not None:
            await _owned_task_for_update(connection, principal, task_id, expected)
        deleted = await connection.execute(statements.DELETE_OWNED_TASK, statements.owned(principal, task_id))
        if deleted.first() is None:
            raise NotFound()
