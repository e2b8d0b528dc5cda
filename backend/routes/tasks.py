"""/tasks handlers: parse the request, call the task service, shape the HTTP response."""

import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response, status
from starlette.datastructures import URL

from backend.auth import AuthenticatedRoute, PrincipalDep
from backend.db import SessionDep
from backend.errors import ERROR_RESPONSES, ErrorResponse
from backend.models import INT32_MAX, CompleteInput, TaskCreate, TaskListQuery, TaskPublic, TaskReplace, TaskUpdate
from backend.services import tasks as task_service
from backend.services.tasks import TaskPage

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=AuthenticatedRoute, responses=ERROR_RESPONSES)

TaskId = Annotated[int, Path(ge=1, le=INT32_MAX, description="The task's id")]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", max_length=1024, description="Only change the task if its ETag still matches"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retry-safe creation: the same key and body return the first response",
    ),
]
PRECONDITION_FAILED: dict[int | str, dict[str, Any]] = {
    412: {"model": ErrorResponse, "description": "If-Match does not match the task's ETag"}
}
IN_FLIGHT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "A request with this Idempotency-Key is still in progress"}
}


def pagination_headers(page: TaskPage, url: URL) -> dict[str, str]:
    """X-Total-Count, Content-Range and an RFC 8288 Link header for a list page."""
    start = (page.page - 1) * page.limit
    count = len(page.items)
    last_page = max(1, math.ceil(page.total / page.limit))
    links = {"first": 1, "last": last_page}
    if page.page > 1:
        links["prev"] = min(page.page - 1, last_page)
    if page.has_next:
        links["next"] = page.page + 1
    return {
        "X-Total-Count": str(page.total),
        "Content-Range": f"tasks {start}-{start + count - 1}/{page.total}" if count else f"tasks */{page.total}",
        "Link": ", ".join(f'<{url.include_query_params(page=number)}>; rel="{rel}"' for rel, number in links.items()),
    }


def _single_task(response: Response, task: TaskPublic) -> TaskPublic:
    response.headers["ETag"] = task.etag
    return task


@router.get("", summary="List your tasks")
async def list_tasks(
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    query: Annotated[TaskListQuery, Query()],
) -> list[TaskPublic]:
    """Filter, search, sort and paginate; totals in `X-Total-Count`, `Content-Range` and `Link`."""
    page = await task_service.list_tasks(session, principal, query)
    response.headers.update(pagination_headers(page, request.url))
    return page.items


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a task", responses=IN_FLIGHT)
async def create_task(
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    data: TaskCreate,
    idempotency_key: IdempotencyKey = None,
) -> TaskPublic:
    """Create a task; `Location` points at it. Unknown and server-owned fields are ignored."""
    created = await task_service.create_task(session, principal, data, idempotency_key=idempotency_key)
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{created.task.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _single_task(response, created.task)


@router.get("/{task_id}", summary="Get a task")
async def get_task(response: Response, session: SessionDep, principal: PrincipalDep, task_id: TaskId) -> TaskPublic:
    """One of your tasks, with its `ETag`."""
    return _single_task(response, await task_service.get_task(session, principal, task_id))


@router.put("/{task_id}", summary="Replace a task", responses=PRECONDITION_FAILED)
async def replace_task(
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    task_id: TaskId,
    data: TaskReplace,
    if_match: IfMatch = None,
) -> TaskPublic:
    """`title` is required; omitted optional fields keep their value, null clears description/due_date."""
    task = await task_service.update_task(session, principal, task_id, data.changes(), if_match=if_match)
    return _single_task(response, task)


@router.patch("/{task_id}", summary="Update some fields of a task", responses=PRECONDITION_FAILED)
async def update_task(
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    task_id: TaskId,
    data: TaskUpdate,
    if_match: IfMatch = None,
) -> TaskPublic:
    """Any subset of the fields; null clears description/due_date."""
    task = await task_service.update_task(session, principal, task_id, data.changes(), if_match=if_match)
    return _single_task(response, task)


@router.patch("/{task_id}/complete", summary="Toggle or set completion", responses=PRECONDITION_FAILED)
async def complete_task(
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    task_id: TaskId,
    data: Annotated[CompleteInput | None, Body()] = None,
    if_match: IfMatch = None,
) -> TaskPublic:
    """No body (or no `completed`) toggles; `{"completed": true|false}` sets."""
    completed = data.completed if data is not None else None
    task = await task_service.set_task_completed(session, principal, task_id, completed=completed, if_match=if_match)
    return _single_task(response, task)


@router.delete(
    "/{task_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a task", responses=PRECONDITION_FAILED
)
async def delete_task(
    session: SessionDep, principal: PrincipalDep, task_id: TaskId, if_match: IfMatch = None
) -> Response:
    """Deletes for good; 204 with an empty body."""
    await task_service.delete_task(session, principal, task_id, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
