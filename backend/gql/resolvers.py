"""Query and Mutation: thin adapters from GraphQL arguments to the shared service functions."""

from typing import Annotated

import strawberry

from backend.errors import NotFound
from backend.gql.context import Context
from backend.gql.types import (
    CreateTaskInput,
    TaskPageType,
    TaskType,
    UpdateTaskInput,
    UserType,
    provided_fields,
    resolve_tasks,
    validated,
)
from backend.schemas import TaskCreate, TaskUpdate
from backend.services import tasks as task_service

Info = strawberry.Info[Context, None]
TaskId = Annotated[int, strawberry.argument(description="The task's id.")]


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
            task = await task_service.get_task(info.context.db, info.context.principal, task_id=id)
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
        data = validated(TaskCreate, provided_fields(input))
        context = info.context
        created = await task_service.create_task(
            context.db, context.principal, data=data, quota=context.settings.task_quota
        )
        return TaskType.from_model(created.task)

    @strawberry.mutation(description="Change any subset of a task's fields. NOT_FOUND if it is not yours.")
    async def update_task(
        self,
        info: Info,
        id: TaskId,
        input: Annotated[UpdateTaskInput, strawberry.argument(description="The fields to change.")],
    ) -> TaskType:
        data = validated(TaskUpdate, provided_fields(input))
        task = await task_service.update_task(info.context.db, info.context.principal, task_id=id, data=data)
        return TaskType.from_model(task)

    @strawberry.mutation(description="Mark a task completed or not; without `completed` it toggles.")
    async def complete_task(
        self,
        info: Info,
        id: TaskId,
        completed: Annotated[
            bool | None, strawberry.argument(description="true or false; omit (or null) to toggle.")
        ] = None,
    ) -> TaskType:
        db, principal = info.context.db, info.context.principal
        if completed is None:
            task = await task_service.toggle_task(db, principal, task_id=id)
        else:
            task = await task_service.complete_task(db, principal, task_id=id, completed=completed)
        return TaskType.from_model(task)

    @strawberry.mutation(description="Delete a task. Returns true; NOT_FOUND if it is not yours.")
    async def delete_task(self, info: Info, id: TaskId) -> bool:
        await task_service.delete_task(info.context.db, info.context.principal, task_id=id)
        return True
