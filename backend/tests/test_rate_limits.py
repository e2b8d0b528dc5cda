"""Rate limits: one budget per caller across REST and GraphQL, shared by instances through a real Redis."""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError

from backend.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.factories import auth_headers
from backend.tests.services_fixtures import RedisServer, asgi_client, record_figure, redis_server, serving

# Framework pages that carry no data; everything else must draw on the caller's budget.
# Documentation, the explorers' static files and probes: no data, no token, cheap.
EXEMPT_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/health", "/ready", "/metrics", "/static"}
ME = "{ me { id } }"
REDIS_RECOVERY_SECONDS = 45


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("rate-limits") / "todo.db"
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def limited_app(sqlite_url: str, limit: str, **overrides: Any) -> FastAPI:
    return create_app(make_settings(sqlite_url, rate_limit=limit, **overrides))


async def get_tasks(client: httpx.AsyncClient, user_id: str | None, **headers: str) -> httpx.Response:
    auth = auth_headers(user_id) if user_id else {}
    return await client.get("/api/tasks", headers={**auth, **headers})


async def graphql(client: httpx.AsyncClient, user_id: str) -> httpx.Response:
    return await client.post("/graphql", json={"query": ME}, headers=auth_headers(user_id))


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    body = response.json()
    assert body["error"] == "RATE_LIMITED"
    assert body["detail"].startswith("Too many requests")


async def test_two_instances_share_one_budget_through_redis(sqlite_url: str, shared_redis: RedisServer) -> None:
    user = new_user()
    async with AsyncExitStack() as stack:
        first, second = [
            await stack.enter_async_context(serving(limited_app(sqlite_url, "6/minute", redis_url=shared_redis.url)))
            for _ in range(2)
        ]
        for _ in range(3):
            assert (await get_tasks(first, user)).status_code == 200
            assert (await get_tasks(second, user)).status_code == 200
        assert_limited(await get_tasks(first, user))
        assert_limited(await get_tasks(second, user))
        assert (await get_tasks(second, new_user())).status_code == 200


async def test_rest_and_graphql_draw_on_one_budget(sqlite_url: str) -> None:
    user = new_user()
    async with serving(limited_app(sqlite_url, "4/minute")) as client:
        for _ in range(2):
            assert (await get_tasks(client, user)).status_code == 200
            assert (await graphql(client, user)).status_code == 200
        assert_limited(await graphql(client, user))
        assert_limited(await get_tasks(client, user))


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    routes: list[tuple[str, str]] = []
    for route in iter_route_contexts(app.routes):
        path = str(route.path)
        if path in EXEMPT_PATHS:
            continue
        assert route.methods, f"{path}: a route without HTTP methods (websocket?) escapes the rate limit"
        routes.extend((method, path) for method in sorted(route.methods - {"HEAD"}))
    return routes


async def test_every_route_draws_on_the_budget(sqlite_url: str) -> None:
    app = limited_app(sqlite_url, "1/minute")
    routes = every_route(app)
    assert len(routes) >= 18
    async with serving(app) as client:
        for number, (method, template) in enumerate(routes):
            user = new_user()
            path = template.replace("{user_id}", user).replace("{task_id}", "1")
            for _ in range(2):
                response = await client.request(method, path, headers=auth_headers(user))
            assert_limited(response)
            # Anonymous callers and bad tokens are limited per client address.
            async with asgi_client(app, client_ip=f"198.51.100.{number}") as stranger:
                for _ in range(2):
                    response = await stranger.request(method, path, headers={"Authorization": "Bearer not-a-jwt"})
            assert_limited(response)
    record_figure("Rate limits", f"{len(routes)} routes, each limited per user and per address (2 x 429 each)")


async def test_budgets_are_per_user_then_per_address(sqlite_url: str) -> None:
    app = limited_app(sqlite_url, "2/minute")
    alice, bob = new_user(), new_user()
    async with serving(app, client_ip="192.0.2.10") as office, asgi_client(app, client_ip="192.0.2.20") as home:
        for _ in range(2):
            assert (await get_tasks(office, alice)).status_code == 200
        assert_limited(await get_tasks(office, alice))
        assert_limited(await get_tasks(home, alice))  # the user's budget, wherever they call from
        assert (await get_tasks(office, bob)).status_code == 200  # same address, another user
        for _ in range(2):
            assert (await get_tasks(office, None)).status_code == 401
        assert_limited(await get_tasks(office, None))
        assert_limited(await get_tasks(office, None, Authorization="Bearer forged"))
        assert (await get_tasks(home, None)).status_code == 401


@pytest.mark.parametrize(("trusted", "separate_budgets"), [("127.0.0.1", False), ("203.0.113.7", True)])
async def test_forwarded_for_is_trusted_only_from_forwarded_allow_ips(
    sqlite_url: str, trusted: str, separate_budgets: bool
) -> None:
    app = limited_app(sqlite_url, "2/minute", forwarded_allow_ips=trusted)
    async with serving(app, client_ip="203.0.113.7") as proxy:
        statuses = [
            (await get_tasks(proxy, None, **{"X-Forwarded-For": f"100.64.0.{number}"})).status_code
            for number in range(4)
        ]
    assert statuses == ([401] * 4 if separate_budgets else [401, 401, 429, 429])


async def test_a_spoofed_forwarded_for_spends_the_untrusted_peers_own_budget(sqlite_url: str) -> None:
    app = limited_app(sqlite_url, "3/minute", forwarded_allow_ips="10.0.0.0/8")
    async with serving(app, client_ip="203.0.113.7") as attacker, asgi_client(app, client_ip="198.51.100.9") as other:
        spoofs = ["100.64.0.1", "100.64.0.2, 10.0.0.5", "203.0.113.8", "198.51.100.9", "unknown"]
        statuses = [(await get_tasks(attacker, None, **{"X-Forwarded-For": spoof})).status_code for spoof in spoofs]
        assert statuses == [401, 401, 401, 429, 429]
        assert_limited(await get_tasks(attacker, None))  # its own address's budget is what it spent
        assert (await get_tasks(other, None)).status_code == 401  # not the address it claimed to be


async def test_behind_a_trusted_proxy_the_address_the_proxy_saw_is_the_key(sqlite_url: str) -> None:
    """A load balancer appends the address it saw to whatever X-Forwarded-For the client sent."""
    app = limited_app(sqlite_url, "2/minute", forwarded_allow_ips="10.0.0.0/8")
    async with serving(app, client_ip="10.0.0.5") as balancer:
        statuses = [
            (await get_tasks(balancer, None, **{"X-Forwarded-For": f"100.64.0.{number}, 198.51.100.20"})).status_code
            for number in range(4)
        ]
        assert statuses == [401, 401, 429, 429]
        other_client = await get_tasks(balancer, None, **{"X-Forwarded-For": "100.64.0.1, 198.51.100.21"})
        assert other_client.status_code == 401


async def test_a_star_lets_every_client_choose_its_budget(sqlite_url: str) -> None:
    """Why production refuses FORWARDED_ALLOW_IPS=*: uvicorn then takes the leftmost address, which is
    the client's own claim even behind a proxy that appends the real one."""
    app = limited_app(sqlite_url, "2/minute", forwarded_allow_ips="*")
    async with serving(app, client_ip="10.0.0.5") as balancer:
        statuses = [
            (await get_tasks(balancer, None, **{"X-Forwarded-For": f"100.64.0.{number}, 198.51.100.20"})).status_code
            for number in range(4)
        ]
    assert statuses == [401] * 4


CATCH_ALL_FORWARDERS = ["*", "0.0.0.0/0", "::/0", "10.0.0.1, *", "10.0.0.0/8,0.0.0.0/0"]


@pytest.mark.parametrize("forwarders", CATCH_ALL_FORWARDERS)
def test_production_refuses_to_trust_every_forwarder(forwarders: str) -> None:
    with pytest.raises(ValidationError, match="FORWARDED_ALLOW_IPS"):
        make_settings("sqlite+aiosqlite://", app_env="production", forwarded_allow_ips=forwarders)


@pytest.mark.parametrize("forwarders", ["127.0.0.1", "10.0.0.0/8", "10.1.2.3, 172.16.0.0/12, fd00::/8"])
def test_production_accepts_proxy_addresses_and_subnets(forwarders: str) -> None:
    settings = make_settings("sqlite+aiosqlite://", app_env="production", forwarded_allow_ips=forwarders)
    assert not settings.trusts_every_forwarder


@pytest.mark.parametrize("forwarders", CATCH_ALL_FORWARDERS)
def test_trusting_every_forwarder_is_a_warning_elsewhere(forwarders: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="backend.main")
    create_app(make_settings("sqlite+aiosqlite://", app_env="development", forwarded_allow_ips=forwarders))
    assert any("FORWARDED_ALLOW_IPS" in record.getMessage() for record in caplog.records)


def redis_keys_for(server: RedisServer, user: str) -> list[Any]:
    with redis.Redis.from_url(server.url, socket_timeout=1) as client:
        keys: list[Any] = client.keys(f"*{user}*")
        return keys


async def wait_until_counting_in(server: RedisServer, client: httpx.AsyncClient) -> float:
    """Requests until this instance counts in Redis again; slowapi re-probes with a backoff."""
    started = time.monotonic()
    while time.monotonic() - started < REDIS_RECOVERY_SECONDS:
        probe = new_user()
        assert (await get_tasks(client, probe)).status_code == 200
        if redis_keys_for(server, probe):
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"the rate limiter did not return to Redis within {REDIS_RECOVERY_SECONDS} s")


@pytest.fixture
async def two_instances_on_own_redis(sqlite_url: str) -> AsyncIterator[tuple[RedisServer, list[httpx.AsyncClient]]]:
    with redis_server() as server:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(serving(limited_app(sqlite_url, "4/minute", redis_url=server.url)))
                for _ in range(2)
            ]
            yield server, clients


async def test_redis_outage_degrades_to_per_instance_limits_and_recovers(
    two_instances_on_own_redis: tuple[RedisServer, list[httpx.AsyncClient]], caplog: pytest.LogCaptureFixture
) -> None:
    server, (first, second) = two_instances_on_own_redis
    caplog.set_level(logging.WARNING)
    server.kill()

    # Meanwhile each instance keeps serving and limiting on its own: 4 here and 4 there.
    user, slowest = new_user(), 0.0
    for client in (first, second):
        statuses = []
        for _ in range(5):
            started = time.monotonic()
            statuses.append((await get_tasks(client, user)).status_code)
            slowest = max(slowest, time.monotonic() - started)
        assert statuses == [200, 200, 200, 200, 429]
    assert slowest < 1.0
    assert "rate limit storage unreachable" in logged_by_app(caplog)

    server.start()
    recovery = [await wait_until_counting_in(server, client) for client in (first, second)]
    record_figure("Redis outage", f"slowest request {slowest * 1000:.0f} ms; shared budget back {sum(recovery):.1f} s")
    user = new_user()
    for _ in range(2):
        assert (await get_tasks(first, user)).status_code == 200
        assert (await get_tasks(second, user)).status_code == 200
    assert_limited(await get_tasks(first, user))
    assert "rate limit storage is back" in logged_by_app(caplog)


def logged_by_app(caplog: pytest.LogCaptureFixture) -> str:
    """Warnings of the app's own loggers (slowapi's are muted unless the root logger has a handler)."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("backend.") and record.levelno >= logging.WARNING
    )
