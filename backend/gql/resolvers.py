"""Query and Mutation: thin Strawberry wrappers around the field operations (backend/gql/operations.py)."""

from typing import Annotated

import strawberry

from backend.gql import operations
from backend.gql.context import Context
from backend.gql.types import (
    CreateTaskInput,
    TaskPageType,
    TaskType,
    UpdateTaskInput,
    UserType,
    provided_fields,
    resolve_tasks,
)

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


@strawberry.type(description="Read your own data. Every field needs a bearer token.")
class Query:
    @strawberry.field(description="The authenticated user.")
    async def me(self, info: Info) -> UserType:
        return UserType.from_model(await operations.me(info.context))

    @strawberry.field(description="One of your tasks by id; null when it does not exist or is not yours.")
    async def task(self, info: Info, id: TaskId) -> TaskType | None:
        task = await operations.task(info.context, id=id)
        return None if task is None else TaskType.from_model(task)

    tasks: TaskPageType = strawberry.field(
        resolver=resolve_tasks, description="Your tasks: filtered, sorted and paginated."
    )


@strawberry.type(description="Change your tasks. Inputs follow the same rules as the REST API.")
class Mutation:
    @strawberry.mutation(description="Create a task; returns it with its server-assigned fields.")
    async def create_task(
        self, info: Info, input: Annotated[CreateTaskInput, strawberry.argument(description="The new task.")]
    ) -> TaskType:
        return TaskType.from_model(await operations.create_task(info.context, input=provided_fields(input)))

    @strawberry.mutation(description="Change any subset of a task's fields. NOT_FOUND if it is not yours.")
    async def update_task(
        self,
        info: Info,
        id: TaskId,
        input: Annotated[UpdateTaskInput, strawberry.argument(description="The fields to change.")],
        expected_version: ExpectedVersion = None,
    ) -> TaskType:
        task = await operations.update_task(
            info.context, id=id, input=provided_fields(input), expected_version=expected_version
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
        task = await operations.complete_task(
            info.context, id=id, completed=completed, expected_version=expected_version
        )
        return TaskType.from_model(task)

    @strawberry.mutation(description="Flip a task between completed and not completed.")
    async def toggle_task(self, info: Info, id: TaskId, expected_version: ExpectedVersion = None) -> TaskType:
        return TaskType.from_model(await operations.toggle_task(info.context, id=id, expected_version=expected_version))

    @strawberry.mutation(description="Delete a task. Returns true; NOT_FOUND if it is not yours.")
    async def delete_task(self, info: Info, id: TaskId, expected_version: ExpectedVersion = None) -> bool:
        return await operations.delete_task(info.context, id=id, expected_version=expected_version)

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
        tasks = await operations.complete_tasks(info.context, ids=ids, completed=completed)
        return [TaskType.from_model(task) for task in tasks]

    @strawberry.mutation(
        description="Delete several tasks, all or nothing: NOT_FOUND with the missing ids in `extensions.ids` "
        "when any is not yours. Returns the ids deleted. Each id counts against your rate limit."
    )
    async def delete_tasks(self, info: Info, ids: TaskIds) -> list[strawberry.ID]:
        return [strawberry.ID(deleted) for deleted in await operations.delete_tasks(info.context, ids=ids)]
