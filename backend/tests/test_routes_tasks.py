"""REST: every route under /api/tasks and /api/{user_id}/tasks; the cases GraphQL shares are in test_parity.py."""

from typing import Any

import httpx
import pytest

from backend.tests.factories import auth_headers

pytestmark = pytest.mark.single_database

ALICE = auth_headers("alice")
BOB = auth_headers("bob")
PREFIXES = ["/api/tasks", "/api/alice/tasks"]


async def create(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/tasks", json={"title": "A task", **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- Every verb, under both prefixes ------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_crud_round_trip(client: httpx.AsyncClient, prefix: str) -> None:
    response = await client.post(prefix, json={"title": " Buy milk ", "priority": "high"}, headers=ALICE)
    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"{prefix}/{task['id']}"
    assert response.headers["etag"].startswith('"')
    assert task["title"] == "Buy milk"
    assert task["created_at"].endswith("Z")

    fetched = await client.get(f"{prefix}/{task['id']}", headers=ALICE)
    assert fetched.status_code == 200
    assert fetched.json() == task
    assert fetched.headers["etag"] == response.headers["etag"]

    replaced = await client.put(f"{prefix}/{task['id']}", json={"title": "Buy oat milk"}, headers=ALICE)
    assert replaced.status_code == 200
    assert (replaced.json()["title"], replaced.json()["priority"]) == ("Buy oat milk", "high")

    patched = await client.patch(f"{prefix}/{task['id']}", json={"description": "2 litres"}, headers=ALICE)
    assert patched.json()["description"] == "2 litres"

    toggled = await client.patch(f"{prefix}/{task['id']}/complete", headers=ALICE)
    assert toggled.json()["completed"] is True
    set_false = await client.patch(f"{prefix}/{task['id']}/complete", json={"completed": False}, headers=ALICE)
    assert set_false.json()["completed"] is False

    listed = await client.get(prefix, headers=ALICE)
    assert [item["id"] for item in listed.json()] == [task["id"]]

    deleted = await client.delete(f"{prefix}/{task['id']}", headers=ALICE)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await client.get(f"{prefix}/{task['id']}", headers=ALICE)).status_code == 404


async def test_path_user_must_be_the_token_user(client: httpx.AsyncClient) -> None:
    task = await create(client)
    for method, path in [
        ("GET", "/api/bob/tasks"),
        ("POST", "/api/bob/tasks"),
        ("GET", f"/api/bob/tasks/{task['id']}"),
        ("PUT", f"/api/bob/tasks/{task['id']}"),
        ("PATCH", f"/api/bob/tasks/{task['id']}"),
        ("PATCH", f"/api/bob/tasks/{task['id']}/complete"),
        ("DELETE", f"/api/bob/tasks/{task['id']}"),
    ]:
        response = await client.request(method, path, json={"title": "x"}, headers=ALICE)
        assert response.status_code == 403, (method, path)
        assert isinstance(response.json()["detail"], str)
    assert (await client.get(f"/api/tasks/{task['id']}", headers=ALICE)).json() == task


# --- Request bodies ---------------------------------------------------------------------------


async def test_extra_and_server_owned_fields_are_ignored(client: httpx.AsyncClient) -> None:
    body: dict[str, Any] = {
        "title": "x",
        "category": "home",
        "id": 999,
        "user_id": "bob",
        "created_at": "2000-01-01T00:00:00Z",
    }
    task = await create(client, **body)
    assert task["user_id"] == "alice"
    assert task["id"] != 999
    assert not task["created_at"].startswith("2000")
    moved = await client.patch(f"/api/tasks/{task['id']}", json={"user_id": "bob", "title": "y"}, headers=ALICE)
    assert moved.json()["user_id"] == "alice"
    assert (await client.get("/api/tasks", headers=BOB)).json() == []


# The invalid bodies GraphQL can express too are in test_parity.py, asserted on both transports.
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1, 2], "body"),
        ({"title": "ok", "tags": "a,b"}, "tags"),  # GraphQL coerces one string into a list of one
    ],
)
async def test_invalid_bodies_are_422_and_store_nothing(client: httpx.AsyncClient, body: Any, fragment: str) -> None:
    response = await client.post("/api/tasks", json=body, headers=ALICE)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"] == "BAD_USER_INPUT"
    assert fragment in payload["detail"]
    assert (await client.get("/api/tasks", headers=ALICE)).json() == []


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/tasks", content=b"{nope", headers={**ALICE, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"] == "Request body is not valid JSON"


async def test_tags_are_trimmed_deduplicated_and_ordered(client: httpx.AsyncClient) -> None:
    task = await create(client, tags=[" Work ", "home", "WORK", "Home", "x"])
    assert task["tags"] == ["Work", "home", "x"]
    ten_after_dedup = await create(client, tags=[f"t{i}" for i in range(10)] + ["T0", "t1"])
    assert len(ten_after_dedup["tags"]) == 10


async def test_due_dates_are_normalised_to_utc(client: httpx.AsyncClient) -> None:
    offset = await create(client, due_date="2030-06-01T12:00:00+02:00")
    assert offset["due_date"] == "2030-06-01T10:00:00Z"
    naive = await create(client, due_date="2030-06-01T12:00:00")
    assert naive["due_date"] == "2030-06-01T12:00:00Z"
    date_only = await create(client, due_date="2030-06-01")
    assert date_only["due_date"] == "2030-06-01T00:00:00Z"


async def test_put_keeps_omitted_fields_and_null_clears(client: httpx.AsyncClient) -> None:
    task = await create(client, description="d", due_date="2030-01-01T00:00:00Z", tags=["a"], priority="low")
    kept = await client.put(f"/api/tasks/{task['id']}", json={"title": "t2"}, headers=ALICE)
    assert (kept.json()["description"], kept.json()["tags"], kept.json()["priority"]) == ("d", ["a"], "low")
    cleared = await client.put(
        f"/api/tasks/{task['id']}", json={"title": "t2", "description": None, "due_date": None}, headers=ALICE
    )
    assert (cleared.json()["description"], cleared.json()["due_date"]) == (None, None)
    missing_title = await client.put(f"/api/tasks/{task['id']}", json={"description": "x"}, headers=ALICE)
    assert missing_title.status_code == 422


async def test_noop_write_keeps_updated_at_and_etag(client: httpx.AsyncClient) -> None:
    task = await create(client, title="same")
    first = await client.get(f"/api/tasks/{task['id']}", headers=ALICE)
    again = await client.patch(f"/api/tasks/{task['id']}", json={"title": "same"}, headers=ALICE)
    assert again.json()["updated_at"] == task["updated_at"]
    assert again.headers["etag"] == first.headers["etag"]


@pytest.mark.parametrize("task_id", ["0", "-1", "2147483648", "99999999999999999999", "abc", "1.5"])
async def test_out_of_range_or_malformed_ids(client: httpx.AsyncClient, task_id: str) -> None:
    response = await client.get(f"/api/tasks/{task_id}", headers=ALICE)
    assert response.status_code == 422
    assert response.json()["error"] == "BAD_USER_INPUT"


# --- Lists: query values and headers ----------------------------------------------------------


# The rest are in test_parity.py, asserted on GraphQL's arguments too.
@pytest.mark.parametrize("query", ["sort_order=up", "sort_by=nope"])
async def test_bad_list_query_aliases_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/tasks?{query}", headers=ALICE)
    assert response.status_code == 422, query
    assert response.json()["error"] == "BAD_USER_INPUT"


async def test_query_aliases(client: httpx.AsyncClient) -> None:
    await create(client, title="alpha milk")
    await create(client, title="beta")
    by_q = await client.get("/api/tasks?q=MILK", headers=ALICE)
    assert [task["title"] for task in by_q.json()] == ["alpha milk"]
    by_alias = await client.get("/api/tasks?sort_by=title&sort_order=asc", headers=ALICE)
    assert [task["title"] for task in by_alias.json()] == ["alpha milk", "beta"]
    for spelling in ("created", "created_at", "createdAt", "updated", "updated_at", "updatedAt", "due_date", "dueDate"):
        assert (await client.get(f"/api/tasks?sort={spelling}", headers=ALICE)).status_code == 200


async def test_list_headers(client: httpx.AsyncClient) -> None:
    for index in range(5):
        await create(client, title=f"t{index}")
    page2 = await client.get("/api/tasks?limit=2&page=2&status=all", headers=ALICE)
    assert page2.headers["x-total-count"] == "5"
    assert page2.headers["content-range"] == "tasks 2-3/5"
    links = page2.headers["link"]
    for rel, number in [("first", 1), ("last", 3), ("prev", 1), ("next", 3)]:
        assert f'page={number}>; rel="{rel}"' in links
    assert "status=all" in links
    assert "limit=2" in links
    beyond = await client.get("/api/tasks?limit=2&page=9", headers=ALICE)
    assert beyond.json() == []
    assert beyond.headers["content-range"] == "tasks */5"
    assert 'rel="next"' not in beyond.headers["link"]
    first = await client.get("/api/tasks?limit=2", headers=ALICE)
    assert 'rel="prev"' not in first.headers["link"]


async def test_list_headers_are_exposed_to_browsers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers={**ALICE, "Origin": "http://localhost:3000"})
    exposed = response.headers["access-control-expose-headers"]
    for name in ("X-Total-Count", "Content-Range", "Link", "ETag", "Location"):
        assert name in exposed
    preflight = await client.options(
        "/api/tasks",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    elsewhere = await client.get("/api/tasks", headers={**ALICE, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in elsewhere.headers


# --- Users --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/me", "/api/users/me"])
async def test_me(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=auth_headers("zoe", email="zoe@example.com", name="Zoe"))
    assert response.json() == {"id": "zoe", "email": "zoe@example.com", "name": "Zoe"}


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing/here", headers=ALICE)
    assert response.status_code == 404
    assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/api/tasks", "/graphql"])
async def test_a_client_leaving_mid_body_is_no_server_error(
    app: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", ALICE["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] in (400, 499)  # FastAPI answers any failed body read with a 400 itself
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


@pytest.mark.parametrize("settings_overrides", [{"task_quota": 2}])
async def test_the_task_quota_is_a_clear_403_on_both_transports(client: httpx.AsyncClient) -> None:
    for title in ("one", "two"):
        assert (await client.post("/api/tasks", json={"title": title}, headers=ALICE)).status_code == 201
    refused = await client.post("/api/tasks", json={"title": "three"}, headers=ALICE)
    assert refused.status_code == 403
    assert refused.json()["error"] == "QUOTA_EXCEEDED"
    assert "at most 2 tasks" in refused.json()["detail"]
    graphql = await client.post(
        "/graphql", json={"query": 'mutation { createTask(input: {title: "three"}) { id } }'}, headers=ALICE
    )
    assert graphql.json()["errors"][0]["extensions"]["code"] == "QUOTA_EXCEEDED"
    assert (await client.get("/api/tasks", headers=ALICE)).headers["X-Total-Count"] == "2"
