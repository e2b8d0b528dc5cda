"""Every task rule, shared by REST and GraphQL. Each query is scoped to the calling user."""

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Row,
    Select,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import insert_ignoring_conflicts, read_only
from backend.errors import Conflict, Forbidden, InvalidInput, NotFound, PreconditionFailed, QuotaExceeded
from backend.models import IdempotencyKey, priority_rank, task_counts_table, tasks_table, utcnow
from backend.principal import Principal
from backend.schemas import SortOrder, TaskCreate, TaskListQuery, TaskPublic, TaskSort, TaskStatus
from backend.services import users as user_service
from backend.sql_functions import contains_ignoring_case, has_tag, unicode_lower

t = tasks_table
idempotency_table = IdempotencyKey.__table__  # type: ignore[attr-defined]

TASK_COLUMNS = (
    t.c.id,
    t.c.user_id,
    t.c.title,
    t.c.description,
    t.c.completed,
    t.c.priority,
    t.c.tags,
    t.c.due_date,
    t.c.created_at,
    t.c.updated_at,
)
IN_FLIGHT = 0  # status_code of an idempotency key whose request has not finished

_tasks_adapter = TypeAdapter(list[TaskPublic])


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
    replayed: bool  # True when an Idempotency-Key retry answered with the first response


_TASK_KEYS = tuple(column.key for column in TASK_COLUMNS)


def _to_tasks(rows: Sequence[Row[*tuple[Any, ...]]]) -> list[TaskPublic]:
    # Plain dicts validate several times faster than row mappings or attribute access.
    return _tasks_adapter.validate_python([dict(zip(_TASK_KEYS, row, strict=False)) for row in rows])


# --- Reading ---------------------------------------------------------------------------------
# Statements are built once per shape (filters present, sort, order) with bound parameters:
# a request then skips building the SQL expression and computing its cache key.

DEEP_OFFSET = 1000  # from here a page is found on the index alone first, then its rows fetched

_SORT_KEYS: dict[TaskSort, ColumnElement[Any]] = {
    TaskSort.CREATED: t.c.created_at,
    TaskSort.UPDATED: t.c.updated_at,
    TaskSort.TITLE: unicode_lower(t.c.title),
    TaskSort.DUE_DATE: t.c.due_date,
    TaskSort.PRIORITY: priority_rank,
}
_COUNTED: dict[TaskStatus, ColumnElement[int]] = {
    TaskStatus.ALL: task_counts_table.c.total,
    TaskStatus.PENDING: task_counts_table.c.total - task_counts_table.c.completed,
    TaskStatus.COMPLETED: task_counts_table.c.completed,
}


@dataclass(frozen=True, slots=True)
class _ListShape:
    status: TaskStatus
    sort: TaskSort
    order: SortOrder
    priority: bool
    tag: bool
    search: bool
    deep: bool

    @classmethod
    def of(cls, query: TaskListQuery) -> "_ListShape":
        return cls(
            query.status,
            query.sort,
            query.order,
            query.priority is not None,
            query.tag is not None,
            query.search is not None,
            query.offset >= DEEP_OFFSET,
        )

    @property
    def counted_by_trigger(self) -> bool:
        """Without priority, tag or search filters the total is the trigger-kept count."""
        return not (self.priority or self.tag or self.search)


def _list_parameters(principal: Principal, query: TaskListQuery) -> dict[str, Any]:
    parameters: dict[str, Any] = {"user_id": principal.user_id, "limit": query.limit, "offset": query.offset}
    if query.priority is not None:
        parameters["priority"] = query.priority.value
    if query.tag is not None:
        parameters["tag"] = query.tag
    if query.search is not None:
        parameters["search"] = query.search
    return parameters


def _list_conditions(shape: _ListShape) -> list[ColumnElement[bool]]:
    conditions = [t.c.user_id == bindparam("user_id")]
    if shape.status is TaskStatus.PENDING:
        conditions.append(t.c.completed.is_(False))
    elif shape.status is TaskStatus.COMPLETED:
        conditions.append(t.c.completed.is_(True))
    if shape.priority:
        conditions.append(t.c.priority == bindparam("priority"))
    if shape.tag:
        conditions.append(has_tag(t.c.tags, bindparam("tag", type_=Text)))
    if shape.search:
        search = bindparam("search", type_=Text)
        conditions.append(contains_ignoring_case(t.c.title, search) | contains_ignoring_case(t.c.description, search))
    return conditions


def _ordering(shape: _ListShape) -> list[ColumnElement[Any]]:
    """Sort key, then id in the same direction: pages never overlap. No due date sorts last."""
    descending = shape.order is SortOrder.DESC
    key = _SORT_KEYS[shape.sort]
    ordered_key = key.desc() if descending else key.asc()
    if shape.sort is TaskSort.DUE_DATE:
        ordered_key = ordered_key.nulls_last()
    return [ordered_key, t.c.id.desc() if descending else t.c.id.asc()]


def _total(shape: _ListShape) -> ColumnElement[int]:
    if shape.counted_by_trigger:
        counted = select(_COUNTED[shape.status]).where(task_counts_table.c.user_id == bindparam("user_id"))
        return func.coalesce(counted.scalar_subquery(), 0)
    return func.count().over()


@functools.cache
def _page_statement(shape: _ListShape) -> Select[Any]:
    """One page and, in the same round trip, the total (unless the page is deep)."""
    conditions, ordering = _list_conditions(shape), _ordering(shape)
    limit, offset = bindparam("limit", type_=Integer), bindparam("offset", type_=Integer)
    if shape.deep:
        # OFFSET walks every skipped row; on the index alone that is several times cheaper.
        page_ids = select(t.c.id).where(*conditions).order_by(*ordering).limit(limit).offset(offset)
        return select(*TASK_COLUMNS).where(t.c.id.in_(page_ids)).order_by(*ordering)
    statement = select(*TASK_COLUMNS, _total(shape).label("total")).where(*conditions)
    return statement.order_by(*ordering).limit(limit).offset(offset)


@functools.cache
def _count_statement(shape: _ListShape) -> Select[Any]:
    if shape.counted_by_trigger:
        return select(_total(shape))
    return select(func.count()).select_from(t).where(*_list_conditions(shape))


async def list_tasks(session: AsyncSession, principal: Principal, query: TaskListQuery) -> TaskPage:
    shape = _ListShape.of(query)
    parameters = _list_parameters(principal, query)
    async with read_only(session) as connection:
        rows = (await connection.execute(_page_statement(shape), parameters)).all()
        if rows and not shape.deep:
            total = int(rows[0].total)
        elif not rows and query.page == 1:
            total = 0
        else:
            total = int((await connection.execute(_count_statement(shape), parameters)).scalar_one())
    return TaskPage(items=_to_tasks(rows), total=total, page=query.page, limit=query.limit)


async def list_user_tasks(session: AsyncSession, principal: Principal, user_id: str, query: TaskListQuery) -> TaskPage:
    """Tasks of `user_id`, which must be the caller (GraphQL's User.tasks)."""
    if user_id != principal.user_id:
        raise Forbidden()
    return await list_tasks(session, principal, query)


# Another user's task and a missing one are the same NotFound: ids cannot be probed.
_OWNED_TASK = select(*TASK_COLUMNS).where(t.c.id == bindparam("task_id"), t.c.user_id == bindparam("user_id"))
_OWNED_TASK_FOR_UPDATE = _OWNED_TASK.with_for_update()


def _owned(principal: Principal, task_id: int) -> dict[str, Any]:
    return {"task_id": task_id, "user_id": principal.user_id}


async def get_task(session: AsyncSession, principal: Principal, task_id: int) -> TaskPublic:
    async with read_only(session) as connection:
        row = (await connection.execute(_OWNED_TASK, _owned(principal, task_id))).one_or_none()
    if row is None:
        raise NotFound()
    return _to_tasks([row])[0]


# --- Writing ---------------------------------------------------------------------------------


def _insert_within_quota() -> Insert:
    """INSERT ... SELECT the new row only while the owner has fewer than `quota` tasks.

    The owner's count row is locked (FOR UPDATE, PostgreSQL; SQLite has one writer anyway), so
    concurrent creates at the quota are decided one after another against the count the other left.
    """
    inserted = (
        "user_id",
        "title",
        "description",
        "completed",
        "priority",
        "tags",
        "due_date",
        "created_at",
        "updated_at",
    )
    owned_tasks = (
        select(task_counts_table.c.total)
        .where(task_counts_table.c.user_id == bindparam("user_id"))
        .with_for_update()
        .scalar_subquery()
    )
    row = select(*(bindparam(name, type_=t.c[name].type) for name in inserted)).where(
        func.coalesce(owned_tasks, 0) < bindparam("quota", type_=Integer)
    )
    return insert(t).from_select(inserted, row).returning(*TASK_COLUMNS)


_INSERT_TASK = _insert_within_quota()


async def create_task(
    session: AsyncSession,
    principal: Principal,
    data: TaskCreate,
    *,
    quota: int,
    idempotency_key: str | None = None,
) -> CreatedTask:
    """Insert the task, unless the owner already has `quota` tasks.

    The owner's user row is created just in time, when the insert finds it missing.
    """
    try:
        return await _insert_task(session, principal, data, quota, idempotency_key)
    except IntegrityError as error:
        if not _owner_missing(error):
            raise
        await session.rollback()
    await user_service.ensure_user(session, principal)
    return await _insert_task(session, principal, data, quota, idempotency_key)


def _owner_missing(error: IntegrityError) -> bool:
    """A foreign key violation: tasks and idempotency keys only reference the user table."""
    return getattr(error.orig, "sqlstate", None) == "23503" or "FOREIGN KEY constraint failed" in str(error.orig)


async def _insert_task(
    session: AsyncSession, principal: Principal, data: TaskCreate, quota: int, idempotency_key: str | None
) -> CreatedTask:
    if idempotency_key is not None:
        request_hash = hashlib.sha256(data.model_dump_json().encode()).hexdigest()
        replay = await _claim_idempotency_key(session, principal, idempotency_key, request_hash)
        if replay is not None:
            await session.rollback()
            return replay
    now = utcnow()
    connection = await session.connection()
    values = {"user_id": principal.user_id, **data.model_dump(), "created_at": now, "updated_at": now, "quota": quota}
    inserted = (await connection.execute(_INSERT_TASK, values)).one_or_none()
    if inserted is None:
        raise QuotaExceeded(f"Task quota reached: at most {quota} tasks per user; delete some before creating more")
    task = _to_tasks([inserted])[0]
    if idempotency_key is not None:
        await session.execute(
            update(idempotency_table)
            .where(idempotency_table.c.user_id == principal.user_id, idempotency_table.c.key == idempotency_key)
            .values(status_code=201, response=task.model_dump_json())
        )
    await session.commit()
    return CreatedTask(task=task, replayed=False)


async def _claim_idempotency_key(
    session: AsyncSession, principal: Principal, key: str, request_hash: str
) -> CreatedTask | None:
    """None when this request owns the key; else the first request's answer.

    The key row is written in the creating transaction: a concurrent request with the same
    key blocks on the primary key until that commits, then replays its response.
    """
    keys = idempotency_table.c
    await session.execute(
        delete(idempotency_table).where(
            keys.user_id == principal.user_id, keys.key == key, keys.created_at < _idempotency_cutoff()
        )
    )
    claimed = await session.execute(
        insert_ignoring_conflicts(session, idempotency_table).values(
            user_id=principal.user_id,
            key=key,
            request_hash=request_hash,
            status_code=IN_FLIGHT,
            response="",
            created_at=utcnow(),
        )
    )
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        return None
    first = (
        await session.execute(
            select(keys.request_hash, keys.status_code, keys.response).where(
                keys.user_id == principal.user_id, keys.key == key
            )
        )
    ).one()
    if first.request_hash != request_hash:
        raise InvalidInput("This Idempotency-Key was already used with a different request body")
    if first.status_code == IN_FLIGHT:
        raise Conflict()
    return CreatedTask(task=TaskPublic.model_validate_json(first.response), replayed=True)


IDEMPOTENCY_TTL = timedelta(hours=24)


def _idempotency_cutoff() -> datetime:
    return utcnow() - IDEMPOTENCY_TTL


async def purge_expired_idempotency_keys(session: AsyncSession) -> int:
    result = await session.execute(
        delete(idempotency_table).where(idempotency_table.c.created_at < _idempotency_cutoff())
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def etag_matches(if_match: str | None, etag: str) -> bool:
    """RFC 9110 If-Match: `*` or a list of strong validators; weak ones never match."""
    if if_match is None:
        return True
    candidates = {candidate.strip() for candidate in if_match.split(",")}
    return "*" in candidates or etag in candidates


async def _change_task(
    session: AsyncSession,
    principal: Principal,
    task_id: int,
    compute_changes: Callable[[TaskPublic], dict[str, Any]],
    if_match: str | None,
) -> TaskPublic:
    connection = await session.connection()
    row = (await connection.execute(_OWNED_TASK_FOR_UPDATE, _owned(principal, task_id))).one_or_none()
    if row is None:
        raise NotFound()
    current = _to_tasks([row])[0]
    if not etag_matches(if_match, current.etag):
        raise PreconditionFailed()
    changes = {field: value for field, value in compute_changes(current).items() if getattr(current, field) != value}
    if not changes:
        return current  # nothing changed: neither updated_at nor the ETag moves
    # updated_at strictly increases even if the clock steps back, so every change is visible.
    changes["updated_at"] = max(utcnow(), current.updated_at + timedelta(microseconds=1))
    updated = (
        await connection.execute(update(t).where(t.c.id == task_id).values(**changes).returning(*TASK_COLUMNS))
    ).one()
    await session.commit()
    return _to_tasks([updated])[0]


async def update_task(
    session: AsyncSession,
    principal: Principal,
    task_id: int,
    changes: dict[str, Any],
    *,
    if_match: str | None = None,
) -> TaskPublic:
    """PUT and PATCH: `changes` holds only the fields the client sent (validated by TaskUpdate)."""
    return await _change_task(session, principal, task_id, lambda _current: changes, if_match)


async def set_task_completed(
    session: AsyncSession,
    principal: Principal,
    task_id: int,
    *,
    completed: bool | None = None,
    if_match: str | None = None,
) -> TaskPublic:
    """Set `completed`, or toggle it when `completed` is None."""
    return await _change_task(
        session,
        principal,
        task_id,
        lambda current: {"completed": (not current.completed) if completed is None else completed},
        if_match,
    )


async def delete_task(
    session: AsyncSession, principal: Principal, task_id: int, *, if_match: str | None = None
) -> None:
    if if_match is not None:
        current = (await session.execute(_OWNED_TASK_FOR_UPDATE, _owned(principal, task_id))).one_or_none()
        if current is None:
            raise NotFound()
        if not etag_matches(if_match, _to_tasks([current])[0].etag):
            raise PreconditionFailed()
    deleted = await session.execute(
        delete(t).where(t.c.id == task_id, t.c.user_id == principal.user_id).returning(t.c.id)
    )
    if deleted.first() is None:
        raise NotFound()
    await session.commit()
