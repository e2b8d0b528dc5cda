"""The statements the task service runs: SQLAlchemy Core over the SQLModel tables, each built once.

A request binds parameters to a statement built at import or once per list shape, so it skips building
the SQL expression and computing its cache key (docs/architecture.md says what that saves).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from backend.models import priority_rank, task_counts_table, tasks_table, utcnow
from backend.principal import Principal
from backend.schemas import SortOrder, TaskListQuery, TaskPublic, TaskSort, TaskStatus
from backend.sql_functions import contains_ignoring_case, has_tag, unicode_lower

t = tasks_table

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
_TASK_KEYS = tuple(column.key for column in TASK_COLUMNS)
_tasks_adapter = TypeAdapter(list[TaskPublic])


def to_tasks(rows: Sequence[Row[*tuple[Any, ...]]]) -> list[TaskPublic]:
    # Plain dicts validate several times faster than row mappings or attribute access.
    return _tasks_adapter.validate_python([dict(zip(_TASK_KEYS, row, strict=False)) for row in rows])


# --- Lists ---------------------------------------------------------------------------------------

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
class ListShape:
    """What a list's statement depends on: which filters are present (their values are parameters)."""

    status: TaskStatus
    sort: TaskSort
    order: SortOrder
    priority: bool
    tag: bool
    search: bool
    due_before: bool
    due_after: bool
    overdue: bool | None
    has_due_date: bool | None
    deep: bool

    @classmethod
    def of(cls, query: TaskListQuery) -> "ListShape":
        return cls(
            query.status,
            query.sort,
            query.order,
            query.priority is not None,
            query.tag is not None,
            query.search is not None,
            query.due_before is not None,
            query.due_after is not None,
            query.overdue,
            query.has_due_date,
            query.offset >= DEEP_OFFSET,
        )

    @property
    def counted_by_trigger(self) -> bool:
        """With nothing but the status to filter by, the total is the trigger-kept count."""
        filtered = self.priority or self.tag or self.search or self.due_before or self.due_after
        return not filtered and self.overdue is None and self.has_due_date is None


def list_parameters(principal: Principal, query: TaskListQuery) -> dict[str, Any]:
    parameters: dict[str, Any] = {"user_id": principal.user_id, "limit": query.limit, "offset": query.offset}
    if query.priority is not None:
        parameters["priority"] = query.priority.value
    if query.tag is not None:
        parameters["tag"] = query.tag
    if query.search is not None:
        parameters["search"] = query.search
    if query.due_before is not None:
        parameters["due_before"] = query.due_before
    if query.due_after is not None:
        parameters["due_after"] = query.due_after
    if query.overdue is not None:
        parameters["now"] = utcnow()
    return parameters


def _list_conditions(shape: ListShape) -> list[ColumnElement[bool]]:
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
    if shape.due_before:
        conditions.append(t.c.due_date < bindparam("due_before", type_=t.c.due_date.type))
    if shape.due_after:
        conditions.append(t.c.due_date >= bindparam("due_after", type_=t.c.due_date.type))
    if shape.overdue is not None:
        now = bindparam("now", type_=t.c.due_date.type)
        if shape.overdue:
            conditions.append(and_(t.c.completed.is_(False), t.c.due_date < now))
        else:  # spelled out: NOT (...) would drop the tasks without a due date (NULL)
            conditions.append(or_(t.c.completed.is_(True), t.c.due_date.is_(None), t.c.due_date >= now))
    if shape.has_due_date is not None:
        conditions.append(t.c.due_date.is_not(None) if shape.has_due_date else t.c.due_date.is_(None))
    return conditions


def _ordering(shape: ListShape) -> list[ColumnElement[Any]]:
    """Sort key, then id in the same direction: pages never overlap. No due date sorts last."""
    descending = shape.order is SortOrder.DESC
    key = _SORT_KEYS[shape.sort]
    ordered_key = key.desc() if descending else key.asc()
    if shape.sort is TaskSort.DUE_DATE:
        ordered_key = ordered_key.nulls_last()
    return [ordered_key, t.c.id.desc() if descending else t.c.id.asc()]


def _total(shape: ListShape) -> ColumnElement[int]:
    if shape.counted_by_trigger:
        counted = select(_COUNTED[shape.status]).where(task_counts_table.c.user_id == bindparam("user_id"))
        return func.coalesce(counted.scalar_subquery(), 0)
    return func.count().over()


@functools.cache
def page_statement(shape: ListShape) -> Select[Any]:
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
def count_statement(shape: ListShape) -> Select[Any]:
    if shape.counted_by_trigger:
        return select(_total(shape))
    return select(func.count()).select_from(t).where(*_list_conditions(shape))


# --- One task --------------------------------------------------------------------------------------

# Another user's task and a missing one are the same NotFound: ids cannot be probed.
OWNED_TASK = select(*TASK_COLUMNS).where(t.c.id == bindparam("task_id"), t.c.user_id == bindparam("user_id"))
OWNED_TASK_FOR_UPDATE = OWNED_TASK.with_for_update()
DELETE_OWNED_TASK = (
    delete(t).where(t.c.id == bindparam("task_id"), t.c.user_id == bindparam("user_id")).returning(t.c.id)
)


def owned(principal: Principal, task_id: int) -> dict[str, Any]:
    return {"task_id": task_id, "user_id": principal.user_id}


# Complete (or un-complete) in one statement: only a row that changes, and only forwards in time, so
# updated_at moves exactly when the task does and never backwards (else the service's general path).
# Its parameters are not named after columns: an UPDATE reserves those names for its SET clause.
SET_COMPLETED = (
    update(t)
    .where(
        t.c.id == bindparam("target_id"),
        t.c.user_id == bindparam("owner_id"),
        t.c.completed != bindparam("new_completed"),
        t.c.updated_at < bindparam("changed_at", type_=t.c.updated_at.type),
    )
    .values(completed=bindparam("new_completed"), updated_at=bindparam("changed_at", type_=t.c.updated_at.type))
    .returning(*TASK_COLUMNS)
)


def completion(principal: Principal, task_id: int, completed: bool, now: datetime) -> dict[str, Any]:
    return {"target_id": task_id, "owner_id": principal.user_id, "new_completed": completed, "changed_at": now}


_OWNED_MANY = (t.c.id.in_(bindparam("task_ids", expanding=True)), t.c.user_id == bindparam("user_id"))
OWNED_TASKS_FOR_UPDATE = select(*TASK_COLUMNS).where(*_OWNED_MANY).with_for_update()
DELETE_OWNED_TASKS = delete(t).where(*_OWNED_MANY)


def owned_many(principal: Principal, task_ids: list[int]) -> dict[str, Any]:
    return {"task_ids": task_ids, "user_id": principal.user_id}


def _insert_within_quota() -> Insert:
    """INSERT ... SELECT the new row only while the owner has fewer than `quota` tasks.

    The owner's count row is locked (FOR UPDATE, PostgreSQL; SQLite has one writer anyway), so
    concurrent creates at the quota are decided one after another against the count the other left.
    """
    inserted = [column.key for column in TASK_COLUMNS if column.key != "id"]
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


INSERT_TASK_WITHIN_QUOTA = _insert_within_quota()
