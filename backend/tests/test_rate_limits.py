"""Rate limits: one budget per caller across REST and GraphQL, shared by instances through a real Redis."""

import asyncio
import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI, Request
from fastapi.routing import iter_route_contexts
from prometheus_client import REGISTRY
from pydantic import ValidationError

from backend import rate_limit
from backend.errors import RateLimited
from backend.main import create_app
from backend.rate_limit import enforce_rate_limit
from backend.tests.conftest import make_settings
from backend.tests.external_servers import RedisServer, asgi_client, record_figure, redis_server, serving
from backend.tests.factories import auth_headers, error_of

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
    code, message = error_of(response.json())
    assert code == "RATE_LIMITED"
    assert message.startswith("Too many requests")
    if "errors" in response.json():  # GraphQL's body also says when to retry, for a program to read
        assert response.json()["errors"][0]["extensions"]["retryAfter"] == int(response.headers["Retry-After"])


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
    """Requests until this instance counts in Redis again; the limiter re-probes it with a backoff."""
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
    """Warnings of the app's own loggers."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("backend.") and record.levelno >= logging.WARNING
    )


def anonymous_request(app: FastAPI, client_ip: str) -> Request:
    """The request `enforce_rate_limit` sees from a caller without a token at `client_ip`."""
    scope = {"type": "http", "app": app, "method": "POST", "path": "/graphql", "headers": [], "client": (client_ip, 1)}
    return Request(scope)


def rejections() -> float:
    return REGISTRY.get_sample_value("todo_rate_limit_rejections_total") or 0.0


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_cost_the_budget_cannot_cover_is_refused_and_charges_nothing(
    sqlite_url: str, shared_redis: RedisServer, storage: str
) -> None:
    app = limited_app(sqlite_url, "5/minute", redis_url=shared_redis.url if storage == "redis" else None)
    caller = f"2001:db8::{uuid.uuid4().hex[:4]}"
    request = anonymous_request(app, caller)
    try:
        await enforce_rate_limit(request, cost=3)
        before = rejections()
        with pytest.raises(RateLimited) as refused:
            await enforce_rate_limit(request, cost=3)
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        assert rejections() == before + 1
        await enforce_rate_limit(request, cost=2)  # the refused 3 took nothing: 2 were left
        await enforce_rate_limit(request, cost=0)  # free, even with the budget spent
        with pytest.raises(RateLimited):
            await enforce_rate_limit(request)
        assert app.state.limiter.counting_in_redis == (storage == "redis")
        assert bool(redis_keys_for(shared_redis, caller)) == (storage == "redis")
    finally:
        await app.state.limiter.aclose()


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_concurrent_costs_never_overdraw_the_budget(
    sqlite_url: str, shared_redis: RedisServer, storage: str
) -> None:
    settings = make_settings(
        sqlite_url, rate_limit="5/minute", redis_url=shared_redis.url if storage == "redis" else None
    )
    limiter = rate_limit.create_limiter(settings)
    try:
        caller = f"user:{new_user()}"
        refusals = await asyncio.gather(*(limiter.charge(caller, 3) for _ in range(4)))
        assert sum(refused is None for refused in refusals) == 1  # 3 fits in 5 once; never twice, even racing
        assert limiter.counting_in_redis == (storage == "redis")
    finally:
        await limiter.aclose()


class SilentServer:
    """Accepts TCP connections on a spare port and never answers: a hung Redis, or one behind a dead proxy."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                self.connections.append(self.listener.accept()[0])
                self._loop.call_soon_threadsafe(self.accepted.set)

    async def wait_for_connections(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.connections) < count:
                self.accepted.clear()
                await self.accepted.wait()

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join()
        for connection in [*self.connections, self.listener]:
            connection.close()


async def longest_stall_of_the_loop(until: asyncio.Event) -> float:
    """The longest the event loop went without running this task (it asks to run every 10 ms)."""
    longest, last = 0.0, time.monotonic()
    while not until.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


async def test_a_redis_that_never_answers_does_not_block_the_event_loop(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A longer wait than production's, so that a loop blocked for it cannot pass for scheduling noise.
    redis_wait = 2.0
    monkeypatch.setattr(rate_limit, "REDIS_TIMEOUT_SECONDS", redis_wait)
    monkeypatch.setattr(rate_limit, "PROBE_FIRST_DELAY_SECONDS", 600.0)  # no re-probe while the test runs
    caplog.set_level(logging.WARNING)
    users = [new_user() for _ in range(20)]
    async with serving(limited_app(sqlite_url, "1000/minute")) as warm_up:  # first-request costs out of the way
        assert (await get_tasks(warm_up, users[0])).status_code == 200
    with SilentServer() as redis_server_that_hangs:
        app = limited_app(sqlite_url, "1000/minute", redis_url=f"redis://127.0.0.1:{redis_server_that_hangs.port}/0")
        async with serving(app) as client:
            done = asyncio.Event()
            stall = asyncio.create_task(longest_stall_of_the_loop(until=done))
            started = time.monotonic()
            waiting = [asyncio.create_task(get_tasks(client, user)) for user in users]
            await redis_server_that_hangs.wait_for_connections(1)
            assert (await client.get("/health")).status_code == 200
            assert not any(request.done() for request in waiting)  # /health answered while they wait on Redis

            # Bounded: without the timeout they would wait forever on a server that never answers.
            responses = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)
            slowest = time.monotonic() - started
            done.set()
            assert [response.status_code for response in responses] == [200] * len(users)
            stalled = await stall
            assert stalled < redis_wait / 2  # a request blocking the loop on Redis would stall it >= redis_wait

            tried = len(redis_server_that_hangs.connections)
            responses = await asyncio.gather(*(get_tasks(client, user) for user in users))
            assert [response.status_code for response in responses] == [200] * len(users)
            assert len(redis_server_that_hangs.connections) == tried  # counted in memory, Redis left alone
    assert logged_by_app(caplog).count("rate limit storage unreachable") == 1
    served = f"{len(users)} requests served in {slowest:.1f} s (Redis timeout in the test {redis_wait:.0f} s)"
    record_figure("Hung Redis", f"{served}; longest loop stall {stalled:.2f} s")


async def test_shutdown_cancels_a_probe_waiting_on_a_hung_redis(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit, "REDIS_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(rate_limit, "PROBE_FIRST_DELAY_SECONDS", 0.0)
    with SilentServer() as redis_server_that_hangs:
        settings = make_settings(sqlite_url, redis_url=f"redis://127.0.0.1:{redis_server_that_hangs.port}/0")
        limiter = rate_limit.create_limiter(settings)
        assert await limiter.charge("user:a") is None  # counted in memory after the Redis timeout
        await redis_server_that_hangs.wait_for_connections(2)  # the probe's own, waiting for an answer
        closing = asyncio.create_task(limiter.aclose())
        await asyncio.wait({closing}, timeout=5)  # unlike wait_for, gives up without cancelling it
        assert closing.done(), "aclose() is still waiting for the probe"


# --- GraphQL pays for what it does ----------------------------------------------------------------


def aliased(field: str, count: int) -> str:
    return " ".join(f"a{number}: {field}" for number in range(count))


async def graphql_as(client: httpx.AsyncClient, user: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    return await client.post("/graphql", json={"query": query, "variables": variables}, headers=auth_headers(user))


async def remaining_budget(client: httpx.AsyncClient, user: str) -> int:
    """Units left in the window: REST lists cost one each."""
    spent = 0
    while (await get_tasks(client, user)).status_code == 200:
        spent += 1
    return spent


@pytest.mark.parametrize(
    ("query", "cost"),
    [
        pytest.param("{ me { id } }", 1, id="one root field"),
        pytest.param("{ " + aliased("tasks { total }", 3) + " }", 3, id="three aliased lists"),
        pytest.param("{ me { id tasks { total } } }", 2, id="a nested list"),
        pytest.param("{ tasks { items { owner { tasks { total } } } } }", 2, id="a list below a list"),
        pytest.param("query { ...F } fragment F on Query { a: me { id } b: me { id } }", 2, id="a fragment"),
        pytest.param("query($s: Boolean!) { me { id } tasks @skip(if: $s) { total } }", 1, id="a skipped field"),
        pytest.param("{ __typename me { id } }", 1, id="introspection is free"),
    ],
)
async def test_a_graphql_request_costs_its_root_fields_and_lists(sqlite_url: str, query: str, cost: int) -> None:
    user = new_user()
    async with serving(limited_app(sqlite_url, "10/minute")) as client:
        response = await graphql_as(client, user, query, {"s": True})
        assert response.status_code == 200, response.text
        assert "errors" not in response.json()
        assert await remaining_budget(client, user) == 10 - cost


async def test_aliased_mutations_beyond_the_budget_are_refused_before_anything_runs(sqlite_url: str) -> None:
    user = new_user()
    creates = aliased('createTask(input: {title: "spam"}) { id }', 30)
    async with serving(limited_app(sqlite_url, "20/minute")) as client:
        response = await graphql_as(client, user, f"mutation {{ {creates} }}")
        assert_limited(response)
        assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        listed = await graphql_as(client, user, "{ tasks { total } }")
        assert listed.json()["data"]["tasks"]["total"] == 0  # none of the 30 ran
        few_creates = aliased('createTask(input: {title: "ok"}) { id }', 5)
        few = await graphql_as(client, user, f"mutation {{ {few_creates} }}")
        assert len(few.json()["data"]) == 5
