"""The REST adapter: every task route under /api/tasks and again under /api/{user_id}/tasks."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.routing import APIRoute

from backend.auth import ContextDep
from backend.routes import tasks, users
from backend.services import users as user_service


async def require_path_user(
    user_id: Annotated[str, Path(min_length=1, max_length=255, description="Must be your own user id")],
    context: ContextDep,
) -> None:
    user_service.check_path_user(context.principal, user_id)


def _operation_id(route: APIRoute) -> str:
    return route.name


def _user_path_operation_id(route: APIRoute) -> str:
    return f"{route.name}_for_user"


api_router = APIRouter(prefix="/api")
api_router.include_router(users.router, generate_unique_id_function=_operation_id)
api_router.include_router(tasks.router, generate_unique_id_function=_operation_id)
api_router.include_router(
    tasks.router,
    prefix="/{user_id}",
    dependencies=[Depends(require_path_user)],
    generate_unique_id_function=_user_path_operation_id,
)
