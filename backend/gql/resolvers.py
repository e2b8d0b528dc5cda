"""Query and Mutation: thin adapters from GraphQL arguments to the shared service functions."""

from typing import Annotated

import strawberry

from backend.errors import InvalidInput, NotFound
from backend.gql.context import Context
from backend.gql.types import (
    CreateTaskInput,
    TaskPageType,
    TaskType,
    UpdateTaskInput,
    UserType,
    provided_fields,
    resolve_tasks,
    task_id,
    validated,
    version_check,
)
from backend.schemas import TaskCreate, TaskUpdate
from backend.services import tasks as task_service

Info = strawberry.Info[Context, None]
TaskId = Annotated[strawberry.ID, strawberry.argument(description="The task's id (digits; a string or a number).")]
TaskIds = Annotated[
    list[strawberry.ID],
    strawberry.argument(description="Up to 100 task ids; every one must be yours, else nothing changes."),
]
ExpectedVersion = Annotated[
    str | None,
    strawberry.argument(
        description="The task's `version` as you read it: if it changed since, PRECONDITION_FAILED and nothing "
        "changes. Omit it to write regardless."
    ),
]
IDEMPOTENCY_KEY_MAX = 255


@strawberry.type(description="Read your own data. Every field needs a bearer token.")
class Query:
    @strawberry.field(description="The authenticated user.")
    async def me(self, info: Info) -> UserType:
        user = await info.context.users.load(info.context.principal.user_id)
        assert user is not None
        return UserType.from_model(user)

    @strawberry.field(description="One of your tasks by id; null when it does not exist or is not yours.")
    async def task(self, info: Info, id: TaskId) -> TaskType | None:
        try:
            task = await task_service.get_task(info.context.db, info.context.principal, task_id=task_id(id, at=("id",)))
        except NotFound:
            return None
        return TaskType.from_model(task)

    tasks: TaskPageType = strawberry.field(
        resolver=resolve_tasks, description="Your tasks: filtered, sorted and paginated."
    )


@strawberry.type(description="Change your tasks. Inputs follow the same rules as the REST API.")
class Mutation:
    @strawberry.mutation(description="Create a task; returns it with its server-assigned fields.")
    async def create_task(
        self, info: Info, input: Annotated[CreateTaskInput, strawberry.argument(description="The new task.")]
    ) -> TaskType:
        fields = provided_fields(input)
        idempotency_key = fields.pop("idempotency_key", None)
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
            message = f"must be 1-{IDEMPOTENCY_KEY_MAX} characters"
            raise InvalidInput(f"input.idempotencyKey: {message}", fields=[(("input", "idempotencyKey"), message)])
        data = validated(TaskCreate, fields, at=("input",))
        context = info.context
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
        return TaskType.from_model(created.task)

    @strawberry.mutation(description="Change any subset of a task's fields. NOT_FOUND if it is not yours.")
    async def update_task(
        self,
        info: Info,
        id: TaskId,
        input: Annotated[UpdateTaskInput, strawberry.argument(description="The fields to change.")],
        expected_version: ExpectedVersion = None,
    ) -> TaskType:
        data = validated(TaskUpdate, provided_fields(input), at=("input",))
        task = await task_service.update_task(
            info.context.db,
            info.context.principal,
            task_id=task_id(id, at=("id",)),
            data=data,
            expected=version_check(expected_version),
        )
        return TaskType.from_model(task)

    @strawberry.mutation(
        description="Mark a task completed (or, with `completed: false`, not completed). Sets, never toggles: "
        "a retry changes nothing."
    )
    async def complete_task(
        self,
        info: Info,
        id: TaskId,
        completed: Annotated[bool | None, strawberry.argument(description="true (null: true) or false.")] = True,
        expected_version: ExpectedVersion = None,
    ) -> TaskType:
        task = await task_service.complete_task(
            info.context.db,
            info.context.principal,
            task_id=task_id(id, at=("id",)),
            completed=completed is not False,
            expected=version_check(expected_version),
        )
        return TaskType.from_model(task)

    @strawberry.mutation(description="Flip a task between completed and not completed.")
    async def toggle_task(self, info: Info, id: TaskId, expected_version: ExpectedVersion = None) -> TaskType:
        task = await task_service.toggle_task(
            info.context.db,
            info.context.principal,
            task_id=task_id(id, at=("id",)),
            expected=version_check(expected_version),
        )
        return TaskType.from_model(task)

    @strawberry.mutation(description="Delete a task. Returns true; NOT_FOUND if it is not yours.")
    async def delete_task(self, info: Info, id: TaskId, expected_version: ExpectedVersion = None) -> bool:
        await task_service.delete_task(
            info.context.db,
            info.context.principal,
            task_id=task_id(id, at=("id",)),
            expected=version_check(expected_version),
        )
        return True

    @strawberry.mutation(
        description="Mark several tasks completed (or not), all or nothing: NOT_FOUND with the missing ids in "
        "`extensions.ids` when any is not yours. Each id counts against your rate limit."
    )
    async def complete_tasks(
        self,
        info: Info,
        ids: TaskIds,
        completed: Annotated[bool | None, strawberry.argument(description="true (null: true) or false.")] = True,
    ) -> list[TaskType]:
        tasks = await task_service.complete_tasks(
            info.context.db,
            info.context.principal,
            task_ids=[task_id(value, at=("ids", index)) for index, value in enumerate(ids)],
            completed=completed is not False,
        )
        return [TaskType.from_model(task) for task in tasks]

    @strawberry.mutation(
        description="Delete several tasks, all or nothing: NOT_FOUND with the missing ids in `extensions.ids` "
        "when any is not yours. Returns the ids deleted. Each id counts against your rate limit."
    )
    async def delete_tasks(self, info: Info, ids: TaskIds) -> list[strawberry.ID]:
        deleted = await task_service.delete_tasks(
            info.context.db,
            info.context.principal,
            task_ids=[task_id(value, at=("ids", index)) for index, value in enumerate(ids)],
        )
        return [strawberry.ID(str(deleted_id)) for deleted_id in deleted]
