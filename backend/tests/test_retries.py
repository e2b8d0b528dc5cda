"""The contract's "Concurrency and retries" over HTTP, with real commits (an app with its own engine).

ETag / If-Match, Idempotency-Key (also eight at once), 413 for big bodies, and two instances
starting together on an empty database. On PostgreSQL, SQLite and through PgBouncer.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import create_engine
from backend.main import create_app
from backend.models import tasks_table
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings, through_pgbouncer
from backend.tests.external_servers import serving
from backend.tests.factories import auth_headers, error_of

KINDS = ["postgresql", "sqlite", "pgbouncer"]
MAX_BODY = 64 * 1024


@asynccontextmanager
async def new_database(kind: str, request: pytest.FixtureRequest, directory: Path) -> AsyncIterator[str]:
    """An empty database of this kind (no schema yet), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / f'{uuid.uuid4().hex}.db'}"
        return
    url = await create_scratch_database("todo_retries")
    try:
        yield through_pgbouncer(url, request.getfixturevalue("suite_pgbouncer_port")) if kind == "pgbouncer" else url
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="module", params=KINDS)
async def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with new_database(request.param, request, tmp_path_factory.mktemp("retries")) as url:
        yield url


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(database: str, user: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(make_settings(database)), headers=auth_headers(user)) as client:
        yield client


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database))
    yield engine
    await engine.dispose()


async def count_tasks(engine: AsyncEngine, user: str) -> int:
    async with engine.connect() as connection:
        statement = select(func.count()).select_from(tasks_table).where(tasks_table.c.user_id == user)
        return int(await connection.scalar(statement) or 0)


async def create(client: httpx.AsyncClient, title: str = "A task", **headers: str) -> httpx.Response:
    return await client.post("/api/tasks", json={"title": title}, headers=headers)


# --- ETag and If-Match ------------------------------------------------------------------------


async def test_every_single_task_response_carries_its_etag(client: httpx.AsyncClient) -> None:
    created = await create(client)
    task_id = created.json()["id"]
    responses = [
        created,
        await client.get(f"/api/tasks/{task_id}"),
        await client.put(f"/api/tasks/{task_id}", json={"title": "Replaced"}),
        await client.patch(f"/api/tasks/{task_id}", json={"priority": "high"}),
        await client.patch(f"/api/tasks/{task_id}/complete"),
    ]
    etags = [response.headers["ETag"] for response in responses]
    assert all(etag.startswith('"') and etag.endswith('"') for etag in etags)
    assert len(set(etags)) == 4  # GET repeats the creation's ETag; every change moves it
    assert (await client.get(f"/api/tasks/{task_id}")).headers["ETag"] == etags[-1]
    unchanged = await client.patch(f"/api/tasks/{task_id}", json={"priority": "high"})
    assert unchanged.headers["ETag"] == etags[-1]


CONDITIONAL_WRITES = {
    "PUT": ("PUT", "", {"title": "Mine now"}),
    "PATCH": ("PATCH", "", {"title": "Mine now"}),
    "PATCH complete": ("PATCH", "/complete", None),
    "DELETE": ("DELETE", "", None),
}


@pytest.mark.parametrize("operation", CONDITIONAL_WRITES)
async def test_stale_if_match_is_412_and_changes_nothing(client: httpx.AsyncClient, operation: str) -> None:
    method, suffix, body = CONDITIONAL_WRITES[operation]
    created = (await create(client, "Original")).json()
    path = f"/api/tasks/{created['id']}"
    stale = (await client.get(path)).headers["ETag"]
    changed = await client.patch(path, json={"description": "someone else was faster"})
    current = changed.headers["ETag"]

    refused = await client.request(method, path + suffix, json=body, headers={"If-Match": stale})
    assert refused.status_code == 412, refused.text
    assert refused.json()["error"] == "PRECONDITION_FAILED"
    after = await client.get(path)
    assert (after.json(), after.headers["ETag"]) == (changed.json(), current)

    accepted = await client.request(method, path + suffix, json=body, headers={"If-Match": current})
    assert accepted.status_code == (204 if method == "DELETE" else 200), accepted.text


# --- Idempotency-Key --------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    first = await create(client, "Pay rent", **{"Idempotency-Key": "rent-2026-11"})
    retry = await create(client, "Pay rent", **{"Idempotency-Key": "rent-2026-11"})
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.headers["Idempotent-Replayed"] == "true"

    reused = await create(client, "Pay the rent", **{"Idempotency-Key": "rent-2026-11"})
    assert reused.status_code == 422, reused.text
    assert await count_tasks(engine, user) == 1


async def test_idempotency_keys_belong_to_one_user(database: str, client: httpx.AsyncClient) -> None:
    mine = await create(client, "Same key", **{"Idempotency-Key": "shared-key"})
    other_headers = auth_headers(f"other-{uuid.uuid4().hex[:8]}")
    async with serving(create_app(make_settings(database)), headers=other_headers) as other:
        theirs = await create(other, "Same key", **{"Idempotency-Key": "shared-key"})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


async def test_eight_concurrent_requests_with_one_key_create_one_task(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str
) -> None:
    responses = await asyncio.gather(*(create(client, "Once", **{"Idempotency-Key": "burst"}) for _ in range(8)))
    created = [response for response in responses if response.status_code == 201]
    # The contract lets a request that overlaps one still in flight answer 409.
    assert {response.status_code for response in responses} <= {201, 409}, [r.text for r in responses]
    assert created
    assert len({json.dumps(response.json(), sort_keys=True) for response in created}) == 1
    assert await count_tasks(engine, user) == 1


# --- Bodies over 64 KiB ----------------------------------------------------------------------


def oversized_title() -> bytes:
    return json.dumps({"title": "x" * (MAX_BODY + 1)}).encode()


async def chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


GRAPHQL_CREATE = "mutation($title: String!) { createTask(input: {title: $title}) { id } }"


def oversized_graphql() -> bytes:
    return json.dumps({"query": GRAPHQL_CREATE, "variables": {"title": "x" * (MAX_BODY + 1)}}).encode()


@pytest.mark.parametrize("path", ["/api/tasks", "/graphql"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_bodies_over_64_kib_are_413_and_store_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, user: str, path: str, framing: str
) -> None:
    body = oversized_title() if path == "/api/tasks" else oversized_graphql()
    content: Any = body if framing == "content-length" else chunks(body)
    response = await client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert error_of(response.json())[0] == "PAYLOAD_TOO_LARGE"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert await count_tasks(engine, user) == 0


async def test_a_body_just_under_the_limit_is_parsed(client: httpx.AsyncClient) -> None:
    body = json.dumps({"title": "ok", "description": "x" * (MAX_BODY - 100)}).encode()
    response = await client.post("/api/tasks", content=chunks(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422  # the description's own limit, not the body's
    assert "description" in response.json()["detail"]


# --- Start-up --------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with new_database(request.param, request, tmp_path) as url:
        yield url


async def test_two_instances_starting_at_once_on_an_empty_database_both_come_up(empty_database: str) -> None:
    apps = [create_app(make_settings(empty_database)) for _ in range(2)]
    lifespans = [app.router.lifespan_context(app) for app in apps]
    await asyncio.gather(*(lifespan.__aenter__() for lifespan in lifespans))
    try:
        user = f"user-{uuid.uuid4().hex[:8]}"
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") for app in apps]
        created = await clients[0].post("/api/tasks", json={"title": "first"}, headers=auth_headers(user))
        listed = await clients[1].get("/api/tasks", headers=auth_headers(user))
        assert created.status_code == 201
        assert [task["id"] for task in listed.json()] == [created.json()["id"]]
        for client in clients:
            await client.aclose()
    finally:
        for lifespan in lifespans:
            await lifespan.__aexit__(None, None, None)
