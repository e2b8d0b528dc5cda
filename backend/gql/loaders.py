"""Per-request DataLoaders: one query per level of the GraphQL tree, never one per row."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiodataloader import DataLoader

from backend.schemas import TaskListQuery, UserPublic
from backend.services import tasks as task_service
from backend.services import users as user_service
from backend.services.tasks import TaskPage

if TYPE_CHECKING:
    from backend.gql.context import Context


class UserLoader(DataLoader[str, UserPublic | None]):
    """Task.owner and Query.me by user id."""

    def __init__(self, context: "Context") -> None:
        super().__init__()
        self.context = context

    async def batch_load_fn(self, user_ids: Sequence[str]) -> list[UserPublic | None]:
        return await user_service.load_users(self.context.db, self.context.principal, user_ids=user_ids)


class UserTasksLoader(DataLoader[tuple[str, TaskListQuery], TaskPage]):
    """User.tasks / Query.tasks by (user id, list query); equal keys share one result."""

    def __init__(self, context: "Context") -> None:
        super().__init__()
        self.context = context

    async def batch_load_fn(  # type: ignore[override]  # aiodataloader accepts an exception per key
        self, keys: Sequence[tuple[str, TaskListQuery]]
    ) -> list[TaskPage | BaseException]:
        pages: list[TaskPage | BaseException] = []
        for user_id, query in keys:
            try:
                pages.append(
                    await task_service.list_user_tasks(
                        self.context.db, self.context.principal, user_id=user_id, query=query
                    )
                )
            except Exception as exc:
                pages.append(exc)
        return pages
