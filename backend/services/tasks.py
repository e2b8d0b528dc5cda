"""Every task rule, shared by REST and GraphQL. Each query is scoped to the calling user."""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import Principal
from backend.db import insert_ignoring_conflicts, read_only
from backend.errors import Conflict, Forbidden, InvalidInput, NotFound, PreconditionFailed
from backend.models import (
    IdempotencyKey,
    SortOrder,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskSort,
    TaskStatus,
    priority_rank,
    tasks_table,
    utcnow,
)
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


def _to_tasks(rows: Sequence[Row[*tuple[Any, ...]]]) -> list[TaskPublic]:
    return _tasks_adapter.validate_python(rows, from_attributes=True)


# --- Reading ---------------------------------------------------------------------------------

_SORT_KEYS: dict[TaskSort, ColumnElement[Any]] = {
    TaskSort.CREATED: t.c.created_at,
    TaskSort.UPDATED: t.c.updated_at,
    TaskSort.TITLE: unicode_lower(t.c.title),
    TaskSort.DUE_DATE: t.c.due_date,
    TaskSort.PRIORITY: priority_rank,
}


def _list_conditions(user_id: str, query: TaskListQuery) -> list[ColumnElement[bool]]:
    conditions = [t.c.user_id == user_id]
    if query.status is TaskStatus.PENDING:
        conditions.append(t.c.completed.is_(False))
    elif query.status is TaskStatus.COMPLETED:
        conditions.append(t.c.completed.is_(True))
    if query.priority is not None:
        conditions.append(t.c.priority == query.priority.value)
    if query.tag is not None:
        conditions.append(has_tag(t.c.tags, query.tag))
    if query.search is not None:
        conditions.append(
            contains_ignoring_case(t.c.title, query.search) | contains_ignoring_case(t.c.description, query.search)
        )
    return conditions


def _ordering(query: TaskListQuery) -> list[ColumnElement[Any]]:
    """Sort key, then id in the same direction: pages never overlap. No due date sorts last."""
    descending = query.order is SortOrder.DESC
    key = _SORT_KEYS[query.sort]
    ordered_key = key.desc() if descending else key.asc()
    if query.sort is TaskSort.DUE_DATE:
        ordered_key = ordered_key.nulls_last()
    return [ordered_key, t.c.id.desc() if descending else t.c.id.asc()]


async def list_tasks(session: AsyncSession, principal: Principal, query: TaskListQuery) -> TaskPage:
    conditions = _list_conditions(principal.user_id, query)
    statement = (
        select(*TASK_COLUMNS).where(*conditions).order_by(*_ordering(query)).limit(query.limit).offset(query.offset)
    )
    async with read_only(session):
        rows = (await session.execute(statement)).all()
        if 0 < len(rows) < query.limit or (not rows and query.page == 1):
            total = query.offset + len(rows)  # a short page is the last one: no COUNT needed
        else:
            total = await session.scalar(select(func.count()).select_from(t).where(*conditions)) or 0
    return TaskPage(items=_to_tasks(rows), total=total, page=query.page, limit=query.limit)


async def list_user_tasks(session: AsyncSession, principal: Principal, user_id: str, query: TaskListQuery) -> TaskPage:
    """Tasks of `user_id`, which must be the caller (GraphQL's User.tasks)."""
    if user_id != principal.user_id:
        raise Forbidden()
    return await list_tasks(session, principal, query)


async def get_task(session: AsyncSession, principal: Principal, task_id: int) -> TaskPublic:
    async with read_only(session):
        row = (await session.execute(_select_owned(principal, task_id))).one_or_none()
    if row is None:
        raise NotFound()
    return _to_tasks([row])[0]


def _select_owned(principal: Principal, task_id: int) -> Any:
    # Another user's task and a missing one are the same NotFound: ids cannot be probed.
    return select(*TASK_COLUMNS).where(t.c.id == task_id, t.c.user_id == principal.user_id)


# --- Writing ---------------------------------------------------------------------------------


async def create_task(
    session: AsyncSession, principal: Principal, data: TaskCreate, *, idempotency_key: str | None = None
) -> CreatedTask:
    await user_service.ensure_user(session, principal)
    request_hash = hashlib.sha256(data.model_dump_json().encode()).hexdigest()
    if idempotency_key is not None:
        replay = await _claim_idempotency_key(session, principal, idempotency_key, request_hash)
        if replay is not None:
            await session.rollback()
            return replay
    now = utcnow()
    row = (
        await session.execute(
            t.insert()
            .values(user_id=principal.user_id, **data.model_dump(), created_at=now, updated_at=now)
            .returning(*TASK_COLUMNS)
        )
    ).one()
    task = _to_tasks([row])[0]
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
    row = (await session.execute(_select_owned(principal, task_id).with_for_update())).one_or_none()
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
        await session.execute(update(t).where(t.c.id == task_id).values(**changes).returning(*TASK_COLUMNS))
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
        current = (await session.execute(_select_owned(principal, task_id).with_for_update())).one_or_none()
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
