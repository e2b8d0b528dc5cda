"""What each GraphQL field does, once for both executors: Strawberry's resolvers (backend/gql/resolvers.py,
types.py) and compiled plans (backend/gql/compiled.py) call these with the request's Context and the
coerced argument values, and get domain objects back.

Arguments come by their Python names; an input object comes as a dict of the fields the client sent
(explicit nulls included, absent fields left out), which both executors can give cheaply.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from backend import models, schemas
from backend.errors import FieldPath, InvalidInput, NotFound, invalid_input
from backend.schemas import (
    INT32_MAX,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskUpdate,
    UserPublic,
    VersionCheck,
    single_line_text_problem,
)
from backend.services import tasks as task_service
from backend.services.tasks import TaskPage

if TYPE_CHECKING:
    from backend.gql.context import Context

IDEMPOTENCY_KEY_MAX = 255

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


def task_id(value: str, *, at: FieldPath) -> int:
    """A task's ID as the service's integer: digits, 1-2147483647 (GraphQL sends IDs as strings)."""
    if value.isascii() and value.isdigit() and len(value) <= 10 and 1 <= int(value) <= INT32_MAX:
        return int(value)
    raise InvalidInput(f"{'.'.join(map(str, at))}: not a task id", fields=[(at, f"must be a task id: 1-{INT32_MAX}")])


def version_check(expected_version: str | None) -> VersionCheck | None:
    """`expectedVersion` as the services' precondition; the ETag's quotes may be left out."""
    if expected_version is None:
        return None
    quoted = expected_version if expected_version.startswith('"') else f'"{expected_version}"'
    return VersionCheck(versions=frozenset({quoted}))


def or_default(value: T | None, default: T) -> T:
    """Arguments with a default take it when sent null (a chatbot sends null for "not set")."""
    return default if value is None else value


def validated(model: type[ModelT], data: Mapping[str, Any], *, at: FieldPath = ()) -> ModelT:
    """Run the same pydantic rules as REST; a violation is BAD_USER_INPUT with the same message and a
    field per error, its path starting at `at` (the argument, for an input object)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc.errors(), at=at) from None


# --- Reading ---------------------------------------------------------------------------------------


async def me(context: "Context") -> UserPublic:
    user = await context.users.load(context.principal.user_id)
    assert user is not None
    return user


async def task(context: "Context", *, id: str) -> TaskPublic | None:
    try:
        return await task_service.get_task(context.db, context.principal, task_id=task_id(id, at=("id",)))
    except NotFound:
        return None


async def tasks(
    context: "Context",
    *,
    user_id: str | None = None,
    status: schemas.TaskStatus | None = schemas.TaskStatus.ALL,
    priority: models.Priority | None = None,
    tag: str | None = None,
    search: str | None = None,
    due_before: datetime | None = None,
    due_after: datetime | None = None,
    overdue: bool | None = None,
    has_due_date: bool | None = None,
    sort: schemas.TaskSort | None = schemas.TaskSort.CREATED,
    order: schemas.SortOrder | None = schemas.SortOrder.DESC,
    page: int | None = 1,
    limit: int | None = 20,
) -> TaskPage:
    """Query.tasks (the caller's) and User.tasks (`user_id`): the same arguments, loader and service call."""
    query = validated(
        TaskListQuery,
        {
            "status": or_default(status, schemas.TaskStatus.ALL),
            "priority": priority,
            "tag": tag,
            "search": search,
            "due_before": due_before,
            "due_after": due_after,
            "overdue": overdue,
            "has_due_date": has_due_date,
            "sort": or_default(sort, schemas.TaskSort.CREATED),
            "order": or_default(order, schemas.SortOrder.DESC),
            "page": or_default(page, 1),
            "limit": or_default(limit, 20),
        },
    )
    owner = context.principal.user_id if user_id is None else user_id
    return await context.user_tasks.load((owner, query))


async def owner(context: "Context", *, user_id: str) -> UserPublic:
    """Task.owner."""
    user = await context.users.load(user_id)
    if user is None:  # only reachable for the caller's own tasks, so the caller exists
        raise InvalidInput("Owner not visible")
    return user


# --- Changing --------------------------------------------------------------------------------------


def _idempotency_key_problem(key: str) -> str | None:
    """REST's header can only carry such keys; GraphQL's string can carry anything JSON can."""
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        return f"must be 1-{IDEMPOTENCY_KEY_MAX} characters"
    return single_line_text_problem(key)


async def create_task(context: "Context", *, input: Mapping[str, Any]) -> TaskPublic:
    fields = dict(input)
    idempotency_key = fields.pop("idempotency_key", None)
    if idempotency_key is not None and (message := _idempotency_key_problem(idempotency_key)):
        raise InvalidInput(f"input.idempotencyKey: {message}", fields=[(("input", "idempotencyKey"), message)])
    data = validated(TaskCreate, fields, at=("input",))
    try:
        created = await task_service.create_task(
            context.db,
            context.principal,
            data=data,
            quota=context.settings.task_quota,
            idempotency_key=idempotency_key,
        )
    except InvalidInput as refused:  # the key was first used with other input: the key is the field at fault
        raise InvalidInput(refused.message, fields=[(("input", "idempotencyKey"), refused.message)]) from None
    return created.task


async def update_task(
    context: "Context", *, id: str, input: Mapping[str, Any], expected_version: str | None = None
) -> TaskPublic:
    data = validated(TaskUpdate, input, at=("input",))
    return await task_service.update_task(
        context.db,
        context.principal,
        task_id=task_id(id, at=("id",)),
        data=data,
        expected=version_check(expected_version),
    )


async def complete_task(
    context: "Context", *, id: str, completed: bool | None = True, expected_version: str | None = None
) -> TaskPublic:
    return await task_service.complete_task(
        context.db,
        context.principal,
        task_id=task_id(id, at=("id",)),
        completed=completed is not False,
        expected=version_check(expected_version),
    )


async def toggle_task(context: "Context", *, id: str, expected_version: str | None = None) -> TaskPublic:
    return await task_service.toggle_task(
        context.db, context.principal, task_id=task_id(id, at=("id",)), expected=version_check(expected_version)
    )


async def delete_task(context: "Context", *, id: str, expected_version: str | None = None) -> bool:
    await task_service.delete_task(
        context.db, context.principal, task_id=task_id(id, at=("id",)), expected=version_check(expected_version)
    )
    return True


async def complete_tasks(context: "Context", *, ids: Sequence[str], completed: bool | None = True) -> list[TaskPublic]:
    return await task_service.complete_tasks(
        context.db,
        context.principal,
        task_ids=[task_id(value, at=("ids", index)) for index, value in enumerate(ids)],
        completed=completed is not False,
    )


async def delete_tasks(context: "Context", *, ids: Sequence[str]) -> list[str]:
    deleted = await task_service.delete_tasks(
        context.db,
        context.principal,
        task_ids=[task_id(value, at=("ids", index)) for index, value in enumerate(ids)],
    )
    return [str(deleted_id) for deleted_id in deleted]
