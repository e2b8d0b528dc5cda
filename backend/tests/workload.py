"""One user's round trip over REST and GraphQL, checking every answer; shared by the load and PgBouncer tests."""

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.models import tasks_table

CREATE = "mutation($title: String!) { createTask(input: {title: $title}) { id userId completed } }"
LIST = "{ tasks(limit: 100) { total items { id userId } } }"
TOGGLE = "mutation($id: ID!) { toggleTask(id: $id) { id userId completed } }"
DELETE = "mutation($id: ID!) { deleteTask(id: $id) }"


@dataclass
class RoundTrip:
    """What one user was told: the tasks acknowledged as kept (id -> completed) and every surprise."""

    user_id: str
    headers: dict[str, str]
    kept: dict[int, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)


async def run_round_trip(client: httpx.AsyncClient, user_id: str, headers: dict[str, str]) -> RoundTrip:
    """Create four tasks (two per transport), list them on both, toggle two, delete two."""
    trip = RoundTrip(user_id, headers)
    try:
        first = await _rest(trip, client, "POST", "/api/tasks", 201, json={"title": f"{user_id} rest"})
        second = await _graphql(trip, client, CREATE, {"title": f"{user_id} graphql"}, "createTask")
        third = await _rest(trip, client, "POST", "/api/tasks", 201, json={"title": f"{user_id} doomed"})
        fourth = await _graphql(trip, client, CREATE, {"title": f"{user_id} doomed"}, "createTask")
        # GraphQL's ids are ID strings of the same numbers REST shows.
        second["id"], fourth["id"] = int(second["id"]), int(fourth["id"])
        mine = {first["id"], second["id"], third["id"], fourth["id"]}
        listed = await _rest(trip, client, "GET", "/api/tasks", 200, params={"limit": 100})
        _expect_ids(trip, "REST list", {task["id"] for task in listed}, mine)
        page = await _graphql(trip, client, LIST, {}, "tasks")
        _expect_ids(trip, "GraphQL list", {int(task["id"]) for task in page["items"]}, mine)
        toggled = await _rest(trip, client, "PATCH", f"/api/tasks/{first['id']}/complete", 200)
        toggled_too = await _graphql(trip, client, TOGGLE, {"id": str(second["id"])}, "toggleTask")
        await _rest(trip, client, "DELETE", f"/api/tasks/{third['id']}", 204)
        await _graphql(trip, client, DELETE, {"id": str(fourth["id"])}, "deleteTask")
        trip.kept = {first["id"]: toggled["completed"], second["id"]: toggled_too["completed"]}
    except (httpx.HTTPError, _Unexpected) as exc:
        trip.problems.append(f"{type(exc).__name__}: {exc}")
    return trip


class _Unexpected(Exception):
    pass


async def _rest(trip: RoundTrip, client: httpx.AsyncClient, method: str, path: str, status: int, **kwargs: Any) -> Any:
    started = time.monotonic()
    response = await client.request(method, path, headers=trip.headers, **kwargs)
    trip.latencies.append(time.monotonic() - started)
    if response.status_code != status:
        raise _Unexpected(f"{method} {path}: {response.status_code} {response.text[:300]}")
    if status == 204:
        return None
    body = response.json()
    for task in body if isinstance(body, list) else [body]:
        _expect_owner(trip, f"{method} {path}", task["user_id"])
    return body


async def _graphql(
    trip: RoundTrip, client: httpx.AsyncClient, query: str, variables: dict[str, Any], field_name: str
) -> Any:
    started = time.monotonic()
    response = await client.post("/graphql", json={"query": query, "variables": variables}, headers=trip.headers)
    trip.latencies.append(time.monotonic() - started)
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise _Unexpected(f"GraphQL {field_name}: {response.status_code} {response.text[:300]}")
    result = body["data"][field_name]
    tasks = result["items"] if isinstance(result, dict) and "items" in result else [result]
    for task in tasks:
        if isinstance(task, dict):
            _expect_owner(trip, f"GraphQL {field_name}", task["userId"])
    return result


def _expect_owner(trip: RoundTrip, where: str, owner: str) -> None:
    if owner != trip.user_id:
        trip.problems.append(f"{where}: a task of {owner!r} shown to {trip.user_id!r}")


def _expect_ids(trip: RoundTrip, where: str, seen: set[int], expected: set[int]) -> None:
    if seen != expected:
        trip.problems.append(f"{where}: saw {sorted(seen)}, expected {sorted(expected)}")


async def stored_tasks(engine: AsyncEngine, user_ids: list[str]) -> dict[str, dict[int, bool]]:
    """What the database holds for these users afterwards: user -> {task id: completed}."""
    t = tasks_table
    stored: dict[str, dict[int, bool]] = {user_id: {} for user_id in user_ids}
    async with engine.connect() as connection:
        rows = await connection.execute(select(t.c.user_id, t.c.id, t.c.completed).where(t.c.user_id.in_(user_ids)))
        for row in rows:
            stored[row.user_id][row.id] = row.completed
    return stored
