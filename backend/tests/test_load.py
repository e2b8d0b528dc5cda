"""1000 users at once against uvicorn with 2 workers on a PostgreSQL of the test's own.

Each user has its own token and its own connection, and creates, lists, toggles and deletes over
REST and GraphQL. No request may fail, no response may show another user's row, and every write
acknowledged must be in the database afterwards.
"""

import asyncio
import resource
import ssl
import statistics
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from backend.db import create_engine
from backend.tests.conftest import make_settings
from backend.tests.external_servers import PostgresCluster, postgres_cluster, record_figure, uvicorn_server
from backend.tests.factories import TEST_SECRET, auth_headers
from backend.tests.workload import RoundTrip, run_round_trip, stored_tasks

pytestmark = pytest.mark.slow

USERS = 1000
WORKERS = 2
# Per worker: up to 100 connections (the cluster allows 250). Each worker holds ~500 requests at
# once on a shared 2-core machine, so a request may wait long for a connection: the pool timeout
# and the request's database budget are raised from 10 s to 120 s so that a slow machine shows as
# a long run, not as 503s.
POOL_SIZE, MAX_OVERFLOW, POOL_TIMEOUT = 60, 40, 120
OPEN_FILES = 8192  # 1000 client sockets here, 1000 server sockets in the workers


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster(max_connections="250", shared_buffers="64MB") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def enough_open_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
async def load_database_url(cluster: PostgresCluster) -> str:
    admin = await asyncpg.connect(cluster.url().replace("+asyncpg", ""))
    try:
        await admin.execute('CREATE DATABASE "todo_load"')
    finally:
        await admin.close()
    return cluster.url("todo_load")


@pytest.fixture(scope="module")
def base_url(load_database_url: str, enough_open_files: None) -> Iterator[str]:
    env = {
        "APP_ENV": "test",
        "BETTER_AUTH_SECRET": TEST_SECRET,
        "DATABASE_URL": load_database_url,
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": str(MAX_OVERFLOW),
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "DB_REQUEST_TIMEOUT": str(POOL_TIMEOUT),
        "REDIS_URL": "",
    }
    with uvicorn_server(env, workers=WORKERS) as url:
        yield url


async def one_user(base_url: str, number: int, start: asyncio.Event, tls: ssl.SSLContext) -> RoundTrip:
    user_id = f"load-user-{number:04d}"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one connection per user
    # One TLS context for all (plain HTTP here): building one per client costs 1000 CA-bundle loads.
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120, verify=tls) as client:
        await start.wait()
        return await run_round_trip(client, user_id, auth_headers(user_id))


async def test_a_thousand_users_at_once(base_url: str, load_database_url: str) -> None:
    start = asyncio.Event()
    tls = ssl.create_default_context()
    users = [asyncio.create_task(one_user(base_url, number, start, tls)) for number in range(USERS)]
    await asyncio.sleep(0.5)  # every client is waiting on the same starting signal
    started = time.monotonic()
    start.set()
    trips = await asyncio.gather(*users)
    duration = time.monotonic() - started

    problems = [f"{trip.user_id}: {problem}" for trip in trips for problem in trip.problems]
    assert problems == [], f"{len(problems)} problems, first: {problems[:5]}"
    engine = create_engine(make_settings(load_database_url))
    try:
        stored = await stored_tasks(engine, [trip.user_id for trip in trips])
    finally:
        await engine.dispose()
    assert {trip.user_id: trip.kept for trip in trips} == stored
    latencies = sorted(latency for trip in trips for latency in trip.latencies)
    percentile = statistics.quantiles(latencies, n=100)
    record_figure(
        "Load",
        f"{USERS} users, {len(latencies)} requests over REST+GraphQL in {duration:.1f} s "
        f"({len(latencies) / duration:.0f}/s; latency p50 {percentile[49]:.2f} s, p95 {percentile[94]:.2f} s, "
        f"max {latencies[-1]:.2f} s), 0 errors, 0 foreign rows, {sum(len(t.kept) for t in trips)} writes verified",
    )
