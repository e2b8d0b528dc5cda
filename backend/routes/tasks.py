"""/tasks handlers: parse the request, call the task service, shape the HTTP response."""

import math
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Depends, Header, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from backend.auth import AuthenticatedRoute, ContextDep
from backend.http_errors import ERROR_RESPONSES, ErrorResponse
from backend.schemas import (
    INT32_MAX,
    CompleteInput,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
    TaskReplace,
    TaskUpdate,
    VersionCheck,
    etag_of,
)
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


_TASK_LIST = TypeAdapter(list[TaskPublic])


_PATH_SAFE = "/:@!$&'()*+,;="  # RFC 3986 pchar and "/"; unreserved characters are always kept


def resource_url(request: Request, path: str, query: str = "") -> str:
    """A URL for Location and Link: percent-encoded (RFC 3986), never the Host header.

    Path-absolute unless PUBLIC_URL names the API's origin. `path` is decoded text, as in the scope.
    """
    encoded = quote(path, safe=_PATH_SAFE)
    if encoded.startswith("//"):  # would read as a network-path reference (another host)
        encoded = "/%2F" + encoded[2:]
    base: str = request.app.state.settings.public_url
    return f"{base}{encoded}?{query}" if query else f"{base}{encoded}"


def pagination_headers(page: TaskPage, request: Request) -> dict[str, str]:
    """X-Total-Count, Content-Range and an RFC 8288 Link header for a list page."""
    start = (page.page - 1) * page.limit
    count = len(page.items)
    last_page = max(1, math.ceil(page.total / page.limit))
    links = {"first": 1, "last": last_page}
    if page.page > 1:
        links["prev"] = min(page.page - 1, last_page)
    if page.has_next:
        links["next"] = page.page + 1
    others = urlencode([item for item in request.query_params.multi_items() if item[0] != "page"])
    page_url = resource_url(request, request.scope["path"], f"{others}{'&' if others else ''}page=")
    return {
        "X-Total-Count": str(page.total),
        "Content-Range": f"tasks {start}-{start + count - 1}/{page.total}" if count else f"tasks */{page.total}",
        "Link": ", ".join(f'<{page_url}{number}>; rel="{rel}"' for rel, number in links.items()),
    }


def version_check(if_match: str | None) -> VersionCheck | None:
    """RFC 9110 If-Match: `*`, or a list of entity tags compared strongly (weak ones never match)."""
    if if_match is None:
        return None
    candidates = frozenset(candidate.strip() for candidate in if_match.split(","))
    return VersionCheck(versions=candidates, any_version="*" in candidates)


def task_response(task: TaskPublic, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The task as JSON with its ETag, serialised once."""
    body = task.model_dump_json().encode()
    return Response(body, status_code, {"ETag": etag_of(body), **(headers or {})}, media_type="application/json")


async def task_list_query(request: Request) -> TaskListQuery:
    """The list's query string, validated by the shared model in one pass.

    FastAPI's own query-model support re-inspects every field's annotation on each request,
    which cost more than the rest of the handler; the OpenAPI parameters are declared below.
    """
    try:
        return TaskListQuery.model_validate(request.query_params)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]) from None


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects for a query model's fields, enum definitions inlined."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return {**definitions[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return [
        {"name": name, "in": "query", "required": False, "description": spec.get("description"), "schema": inline(spec)}
        for name, spec in schema["properties"].items()
    ]


@router.get(
    "",
    summary="List your tasks",
    response_model=list[TaskPublic],
    openapi_extra={"parameters": _query_parameters(TaskListQuery)},
)
async def list_tasks(
    request: Request, context: ContextDep, query: Annotated[TaskListQuery, Depends(task_list_query)]
) -> Response:
    """Filter, search, sort and paginate; totals in `X-Total-Count`, `Content-Range` and `Link`."""
    page = await task_service.list_tasks(context.db, context.principal, query=query)
    body = _TASK_LIST.dump_json(page.items)
    return Response(body, headers=pagination_headers(page, request), media_type="application/json")


@router.post(
    "", status_code=status.HTTP_201_CREATED, summary="Create a task", response_model=TaskPublic, responses=IN_FLIGHT
)
async def create_task(
    request: Request, context: ContextDep, data: TaskCreate, idempotency_key: IdempotencyKey = None
) -> Response:
    """Create a task; `Location` points at it. Unknown and server-owned fields are ignored."""
    created = await task_service.create_task(
        context.db,
        context.principal,
        data=data,
        quota=request.app.state.settings.task_quota,
        idempotency_key=idempotency_key,
    )
    headers = {"Location": resource_url(request, f"{request.scope['path'].rstrip('/')}/{created.task.id}")}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return task_response(created.task, status.HTTP_201_CREATED, headers)


@router.get("/{task_id}", summary="Get a task", response_model=TaskPublic)
async def get_task(context: ContextDep, task_id: TaskId) -> Response:
    """One of your tasks, with its `ETag`."""
    return task_response(await task_service.get_task(context.db, context.principal, task_id=task_id))


@router.put("/{task_id}", summary="Replace a task", response_model=TaskPublic, responses=PRECONDITION_FAILED)
async def replace_task(context: ContextDep, task_id: TaskId, data: TaskReplace, if_match: IfMatch = None) -> Response:
    """`title` is required; omitted optional fields keep their value, null clears description/due_date."""
    expected = version_check(if_match)
    task = await task_service.update_task(context.db, context.principal, task_id=task_id, data=data, expected=expected)
    return task_response(task)


@router.patch(
    "/{task_id}", summary="Update some fields of a task", response_model=TaskPublic, responses=PRECONDITION_FAILED
)
async def update_task(context: ContextDep, task_id: TaskId, data: TaskUpdate, if_match: IfMatch = None) -> Response:
    """Any subset of the fields; null clears description/due_date."""
    expected = version_check(if_match)
    task = await task_service.update_task(context.db, context.principal, task_id=task_id, data=data, expected=expected)
    return task_response(task)


@router.patch(
    "/{task_id}/complete",
    summary="Toggle or set completion",
    response_model=TaskPublic,
    responses=PRECONDITION_FAILED,
)
async def complete_task(
    context: ContextDep,
    task_id: TaskId,
    data: Annotated[CompleteInput | None, Body()] = None,
    if_match: IfMatch = None,
) -> Response:
    """No body (or no `completed`) toggles; `{"completed": true|false}` sets."""
    expected = version_check(if_match)
    if data is None or data.completed is None:
        task = await task_service.toggle_task(context.db, context.principal, task_id=task_id, expected=expected)
    else:
        task = await task_service.complete_task(
            context.db, context.principal, task_id=task_id, completed=data.completed, expected=expected
        )
    return task_response(task)


@router.delete(
    "/{task_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a task", responses=PRECONDITION_FAILED
)
async def delete_task(context: ContextDep, task_id: TaskId, if_match: IfMatch = None) -> Response:
    """Deletes for good; 204 with an empty body."""
    await task_service.delete_task(context.db, context.principal, task_id=task_id, expected=version_check(if_match))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
