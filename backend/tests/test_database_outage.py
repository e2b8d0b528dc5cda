"""A PostgreSQL of the test's own goes away (stopped, or frozen) and comes back while the app runs.

Meanwhile every request answers 503 with Retry-After and a JSON detail within seconds, on REST and
GraphQL; afterwards the app recovers by itself, and every write it acknowledged is still there.
"""

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from backend.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.external_servers import PostgresCluster, postgres_cluster, record_figure, serving
from backend.tests.factories import auth_headers, error_of

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT = 1.0
STATEMENT_TIMEOUT_MS = 1500
# A frozen server costs the first request a timed-out pre-ping plus a timed-out reconnect; a
# stopped one refuses connections at once. The margin is for a loaded CI machine.
ANSWER_WITHIN_SECONDS = CONNECT_TIMEOUT + STATEMENT_TIMEOUT_MS / 1000 + 1.5
RECOVER_WITHIN_SECONDS = 15.0

Probe = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def graphql(query: str) -> Probe:
    async def probe(client: httpx.AsyncClient, task_id: int) -> httpx.Response:
        return await client.post("/graphql", json={"query": query.replace("TASK_ID", str(task_id))})

    return probe


def rest(method: str, path: str, **kwargs: Any) -> Probe:
    async def probe(client: httpx.AsyncClient, task_id: int) -> httpx.Response:
        return await client.request(method, path.replace("TASK_ID", str(task_id)), **kwargs)

    return probe


# Every REST operation and both GraphQL operation types.
PROBES: dict[str, Probe] = {
    "GET /api/tasks": rest("GET", "/api/tasks"),
    "POST /api/tasks": rest("POST", "/api/tasks", json={"title": "during the outage"}),
    "GET /api/tasks/{id}": rest("GET", "/api/tasks/TASK_ID"),
    "PUT /api/tasks/{id}": rest("PUT", "/api/tasks/TASK_ID", json={"title": "replaced"}),
    "PATCH /api/tasks/{id}": rest("PATCH", "/api/tasks/TASK_ID", json={"title": "patched"}),
    "PATCH /api/tasks/{id}/complete": rest("PATCH", "/api/tasks/TASK_ID/complete"),
    "DELETE /api/tasks/{id}": rest("DELETE", "/api/tasks/TASK_ID"),
    "GET /api/me": rest("GET", "/api/me"),
    "GraphQL query": graphql("{ me { id } tasks { total items { id } } }"),
    "GraphQL mutation": graphql('mutation { createTask(input: {title: "during the outage"}) { id } }'),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
async def client(cluster: PostgresCluster) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        cluster.url(),
        db_connect_timeout=CONNECT_TIMEOUT,
        db_statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        db_pool_timeout=CONNECT_TIMEOUT,
    )
    async with serving(create_app(settings), headers=auth_headers(f"user-{uuid.uuid4().hex[:8]}")) as client:
        yield client


async def create(client: httpx.AsyncClient, title: str) -> httpx.Response:
    return await client.post("/api/tasks", json={"title": title})


async def assert_every_request_is_503(client: httpx.AsyncClient, task_id: int) -> float:
    """Each probe answers 503, Retry-After and its transport's JSON error in time; returns the slowest answer."""
    slowest = 0.0
    for name, probe in PROBES.items():
        started = time.monotonic()
        response = await probe(client, task_id)
        elapsed = time.monotonic() - started
        slowest = max(slowest, elapsed)
        assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
        assert int(response.headers["Retry-After"]) > 0, name
        code, message = error_of(response.json())
        assert code == "SERVICE_UNAVAILABLE", name
        assert message, name
        assert elapsed < ANSWER_WITHIN_SECONDS, f"{name} took {elapsed:.1f} s"
    return slowest


async def wait_for_recovery(client: httpx.AsyncClient) -> float:
    started = time.monotonic()
    while time.monotonic() - started < RECOVER_WITHIN_SECONDS:
        response = await client.get("/api/tasks")
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 503, response.text
        await asyncio.sleep(0.1)
    raise AssertionError(f"the API did not recover within {RECOVER_WITHIN_SECONDS} s")


@dataclass
class Writes:
    """Tasks created in the background: the ids acknowledged (201) and every status seen."""

    acknowledged: set[int] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            response = await create(client, f"write {len(self.statuses)}")
            self.statuses.append(response.status_code)
            if response.status_code == 201:
                self.acknowledged.add(response.json()["id"])
            await asyncio.sleep(0.01)


@asynccontextmanager
async def writing_meanwhile(client: httpx.AsyncClient) -> AsyncIterator[Writes]:
    writes, stop = Writes(), asyncio.Event()
    writer = asyncio.create_task(writes.run(client, stop))
    try:
        yield writes
    finally:
        stop.set()
        await writer


async def stored_ids(client: httpx.AsyncClient) -> set[int]:
    ids: set[int] = set()
    for page in range(1, 100):
        response = await client.get("/api/tasks", params={"limit": 100, "page": page})
        assert response.status_code == 200, response.text
        ids |= {task["id"] for task in response.json()}
        if "next" not in response.headers["Link"]:
            return ids
    raise AssertionError("too many pages")


async def test_database_stopped_and_restarted(cluster: PostgresCluster, client: httpx.AsyncClient) -> None:
    existing = (await create(client, "before the outage")).json()["id"]
    async with writing_meanwhile(client) as writes:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.stop, "immediate")  # a crash: no clean shutdown
        slowest = await assert_every_request_is_503(client, existing)
        await asyncio.to_thread(cluster.start)
        recovery = await wait_for_recovery(client)
        await asyncio.sleep(0.3)
    assert set(writes.statuses) == {201, 503}
    assert writes.acknowledged | {existing} <= await stored_ids(client)
    record_figure("Database stopped", f"slowest 503 {slowest:.2f} s; recovered {recovery:.2f} s after restart")


async def test_database_frozen_then_thawed(cluster: PostgresCluster, client: httpx.AsyncClient) -> None:
    """SIGSTOP: connections neither fail nor answer; only the connect and statement timeouts end the wait."""
    existing = (await create(client, "before the freeze")).json()["id"]
    cluster.signal_all(signal.SIGSTOP)
    try:
        slowest = await assert_every_request_is_503(client, existing)
    finally:
        cluster.signal_all(signal.SIGCONT)
    recovery = await wait_for_recovery(client)
    assert existing in await stored_ids(client)
    record_figure("Database frozen", f"slowest 503 {slowest:.2f} s; recovered {recovery:.2f} s after thaw")


async def test_database_restarted_while_idle(cluster: PostgresCluster, client: httpx.AsyncClient) -> None:
    """Neon suspends idle computes: pooled connections die unnoticed; the next requests must not see it."""
    await asyncio.gather(*(create(client, f"warm {number}") for number in range(5)))  # several pooled connections
    await asyncio.to_thread(cluster.stop, "fast")
    await asyncio.to_thread(cluster.start)
    responses = await asyncio.gather(*(client.get("/api/tasks") for _ in range(5)))
    assert [response.status_code for response in responses] == [200] * 5
