"""Hostile input: a clear JSON 4xx every time, nothing stored, SQL metacharacters taken literally."""

import asyncio
import base64
import json
import re
import uuid
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.gql.schema import create_graphql_router
from backend.main import create_app
from backend.models import tasks_table
from backend.principal import PLACEHOLDER_EMAIL_DOMAIN
from backend.services.users import users_table
from backend.tests.conftest import make_settings
from backend.tests.external_servers import serving
from backend.tests.factories import auth_headers, error_of

pytestmark = pytest.mark.single_database

JSON = {"Content-Type": "application/json"}
HUGE = "9" * 40
ALICE = auth_headers("alice")

# name: (method, path, request keywords, expected status); invalid values GraphQL can carry too are in test_parity.py
REST_REJECTIONS: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "invalid UTF-8 in a body": ("POST", "/api/tasks", {"content": b'{"title": "\xff\xfe"}', "headers": JSON}, 400),
    "invalid UTF-8 in a query": ("GET", "/api/tasks?search=%FF", {}, 400),
    "overlong UTF-8 in a query": ("GET", "/api/tasks?tag=%C0%AF", {}, 400),
    "encoded surrogate in a query": ("GET", "/api/tasks?q=%ED%A0%80", {}, 400),
    "invalid UTF-8 in a path": ("GET", "/api/tasks/%FF", {}, 400),
    "invalid UTF-8 as the path user": ("POST", "/api/%C3%28/tasks", {"json": {"title": "x"}}, 400),
    "huge id in a path": ("GET", f"/api/tasks/{HUGE}", {}, 422),
    "negative id in a path": ("DELETE", "/api/tasks/-1", {}, 422),
    "float overflow as a page": ("GET", "/api/tasks?page=1e999", {}, 422),
    "deeply nested JSON": ("POST", "/api/tasks", {"content": b"[" * 20_000 + b"]" * 20_000, "headers": JSON}, 400),
    "SQL in a task id": ("GET", "/api/tasks/1;DROP TABLE tasks", {}, 422),
    "SQL in a sort": ("GET", "/api/tasks?sort=title;DROP TABLE tasks", {}, 422),
    "SQL in an order": ("GET", "/api/tasks?order=desc,(SELECT 1)", {}, 422),
    "SQL as the path user": ("POST", "/api/' OR '1'='1/tasks", {"json": {"title": "x"}}, 403),
    "oversized token": (
        "POST",
        "/api/tasks",
        {"json": {"title": "x"}, "headers": {"Authorization": "Bearer " + "a" * 10_000}},
        401,
    ),
    "oversized Idempotency-Key": (
        "POST",
        "/api/tasks",
        {"json": {"title": "x"}, "headers": {"Idempotency-Key": "k" * 256}},
        422,
    ),
    "oversized If-Match": ("PUT", "/api/tasks/1", {"json": {"title": "x"}, "headers": {"If-Match": "x" * 2000}}, 422),
    "non-numeric Content-Length": (
        "POST",
        "/api/tasks",
        {"content": b'{"title": "x"}', "headers": {**JSON, "Content-Length": "12abc"}},
        400,
    ),
}


async def stored_tasks(connection: AsyncConnection) -> int:
    return int(await connection.scalar(select(func.count()).select_from(tasks_table)) or 0)


def assert_clear_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    code, message = error_of(response.json())
    assert isinstance(message, str), response.text
    assert message, response.text
    assert isinstance(code, str), response.text
    assert code, response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("case", REST_REJECTIONS)
async def test_hostile_rest_input_is_a_clear_4xx_and_stores_nothing(
    client: httpx.AsyncClient, connection: AsyncConnection, case: str
) -> None:
    method, path, keywords, status = REST_REJECTIONS[case]
    keywords = dict(keywords)
    headers = {**ALICE, **keywords.pop("headers", {})}
    response = await client.request(method, path, headers=headers, **keywords)
    assert_clear_error(response, status)
    assert await stored_tasks(connection) == 0


SQL_TEXT = "Robert'); DROP TABLE tasks;-- \\ \" %_ ' OR 1=1 --"


@pytest.mark.every_database  # stored data: each database's text handling
async def test_sql_metacharacters_are_stored_and_searched_literally(
    client: httpx.AsyncClient, connection: AsyncConnection
) -> None:
    created = await client.post(
        "/api/tasks", json={"title": SQL_TEXT, "description": SQL_TEXT, "tags": ["' OR 1=1 --"]}, headers=ALICE
    )
    assert created.status_code == 201, created.text
    assert (created.json()["title"], created.json()["description"]) == (SQL_TEXT, SQL_TEXT)
    await client.post("/api/tasks", json={"title": "plain"}, headers=ALICE)
    await client.post("/api/tasks", json={"title": "bob's"}, headers=auth_headers("bob"))
    for search in ["%", "_", "'", "\\", "' OR 1=1 --", "DROP TABLE"]:
        found = await client.get("/api/tasks", params={"search": search}, headers=ALICE)
        assert [task["title"] for task in found.json()] == [SQL_TEXT], search
    for tag, expected in [("' OR 1=1 --", [SQL_TEXT]), ("' OR '1'='1", []), ("%", [])]:
        found = await client.get("/api/tasks", params={"tag": tag}, headers=ALICE)
        assert [task["title"] for task in found.json()] == expected, tag
    assert await stored_tasks(connection) == 3


# --- GraphQL ------------------------------------------------------------------------------------

GET_TASK = "query($id: ID!) { task(id: $id) { id } }"
LIST_PAGE = "query($limit: Int!) { tasks(limit: $limit) { total } }"


def nested(depth: int) -> str:
    query = "id"
    for _ in range(depth):
        query = f"tasks {{ items {{ owner {{ {query} }} }} }}"
    return f"{{ me {{ {query} }} }}"


# name: (request body, extensions.code, a fragment of the error message): refused before anything runs
GRAPHQL_REJECTIONS: dict[str, tuple[dict[str, Any], str, str]] = {
    "too deep": ({"query": nested(4)}, "QUERY_TOO_COMPLEX", "exceeds maximum operation depth of 10"),
    "too many aliases": (
        {"query": "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(31)) + " }"},
        "QUERY_TOO_COMPLEX",
        "31 aliases",
    ),
    "too many tokens": ({"query": "{ me { " + "id " * 2100 + "} }"}, "QUERY_TOO_COMPLEX", "more than 2000 tokens"),
    "syntax error": ({"query": "{ me { id "}, "GRAPHQL_PARSE_FAILED", "Syntax Error"),
    "huge integer variable": (
        {"query": LIST_PAGE, "variables": {"limit": 2**40}},
        "BAD_USER_INPUT",
        "non 32-bit signed integer",
    ),
    "huge integer literal": (
        {"query": "{ tasks(limit: " + HUGE + ") { total } }"},
        "GRAPHQL_VALIDATION_FAILED",
        "non 32-bit signed integer",
    ),
    "string where an integer goes": (
        {"query": LIST_PAGE, "variables": {"limit": "1; DROP TABLE tasks"}},
        "BAD_USER_INPUT",
        "Int cannot represent non-integer value",
    ),
    "unknown field": ({"query": "{ me { password } }"}, "GRAPHQL_VALIDATION_FAILED", "Cannot query field 'password'"),
    # JSON can carry a lone surrogate escaped, UTF-8 cannot carry it raw; the message quotes it escaped.
    "lone surrogate variable": (
        {"query": LIST_PAGE, "variables": {"limit": "\ud800"}},
        "BAD_USER_INPUT",
        "Int cannot represent non-integer value",
    ),
}


@pytest.mark.parametrize("case", GRAPHQL_REJECTIONS)
async def test_hostile_graphql_documents_are_400_and_store_nothing(
    client: httpx.AsyncClient, connection: AsyncConnection, case: str
) -> None:
    document, expected_code, fragment = GRAPHQL_REJECTIONS[case]
    body = json.dumps(document)  # escapes non-ASCII, lone surrogates included (httpx's json= would refuse them)
    response = await client.post("/graphql", content=body, headers=ALICE | {"Content-Type": "application/json"})
    assert_clear_error(response, 400)
    body = response.json()
    assert fragment in body["errors"][0]["message"]
    assert body["data"] is None
    assert {error["extensions"]["code"] for error in body["errors"]} == {expected_code}
    assert await stored_tasks(connection) == 0


def test_a_body_orjson_cannot_encode_is_still_answered_as_json() -> None:
    # No known path puts a lone surrogate in a body (every text input is checked); if one ever does,
    # the answer is JSON with it escaped, not a 500.
    router = create_graphql_router(make_settings("sqlite+aiosqlite:///unused.db"))
    body = {"data": None, "errors": [{"message": "bad \ud800", "extensions": {"code": "BAD_USER_INPUT"}}]}
    assert json.loads(router.encode_json(body)) == body


# name: (request body, the root field): an ID that is no task id is the argument's error, not the request's
BAD_IDS: dict[str, tuple[dict[str, Any], str]] = {
    "huge id variable": ({"query": GET_TASK, "variables": {"id": 2**40}}, "task"),
    "huge id literal": ({"query": "{ task(id: " + HUGE + ") { id } }"}, "task"),
    "huge id in a mutation": ({"query": "mutation { deleteTask(id: " + HUGE + ") }"}, "deleteTask"),
    "SQL where an id goes": ({"query": GET_TASK, "variables": {"id": "1; DROP TABLE tasks"}}, "task"),
    "negative id": ({"query": GET_TASK, "variables": {"id": "-1"}}, "task"),
}


@pytest.mark.parametrize("case", BAD_IDS)
async def test_ids_that_are_no_task_id_are_bad_user_input_and_change_nothing(
    client: httpx.AsyncClient, connection: AsyncConnection, case: str
) -> None:
    await client.post("/api/tasks", json={"title": "kept"}, headers=ALICE)
    document, field_name = BAD_IDS[case]
    response = await client.post("/graphql", json=document, headers=ALICE)
    assert response.status_code == 200, response.text
    body = response.json()
    (error,) = body["errors"]
    assert error["path"] == [field_name]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["fields"] == [{"path": ["id"], "message": "must be a task id: 1-2147483647"}]
    assert body["data"] is None or body["data"][field_name] is None
    assert await stored_tasks(connection) == 1


GRAPHQL_REQUEST_REJECTIONS: dict[str, dict[str, Any]] = {
    "batching": {"json": [{"query": "{ me { id } }"}, {"query": "{ me { id } }"}]},
    "invalid UTF-8": {"content": b'{"query": "{ me { id \xff } }"}', "headers": JSON},
    "deeply nested variables": {
        "content": b'{"query": "{ me { id } }", "variables": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        "headers": JSON,
    },
    "not JSON": {"content": b"mutation { deleteTask(id: 1) }", "headers": JSON},
    "not a JSON content type": {"content": b'{"query": "{ me { id } }"}', "headers": {"Content-Type": "text/plain"}},
}


@pytest.mark.parametrize("case", GRAPHQL_REQUEST_REJECTIONS)
async def test_malformed_graphql_requests_are_400(client: httpx.AsyncClient, case: str) -> None:
    keywords = dict(GRAPHQL_REQUEST_REJECTIONS[case])
    headers = {**ALICE, **keywords.pop("headers", {})}
    response = await client.post("/graphql", headers=headers, **keywords)
    assert_clear_error(response, 400)
    assert error_of(response.json())[0] == "BAD_REQUEST"


async def test_mutations_over_get_are_refused(client: httpx.AsyncClient, connection: AsyncConnection) -> None:
    query = 'mutation { createTask(input: {title: "via GET"}) { id } }'
    response = await client.get("/graphql", params={"query": query}, headers=ALICE)
    assert_clear_error(response, 400)
    assert error_of(response.json())[1] == "mutations are not allowed when using GET"
    assert await stored_tasks(connection) == 0


# --- Headers on every kind of response ----------------------------------------------------------

RESPONSES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "list": ("GET", "/api/tasks", {"headers": ALICE}, 200),
    "create": ("POST", "/api/tasks", {"headers": ALICE, "json": {"title": "x"}}, 201),
    "unauthenticated": ("GET", "/api/tasks", {}, 401),
    "forbidden": ("GET", "/api/bob/tasks", {"headers": ALICE}, 403),
    "no such task": ("GET", "/api/tasks/12345", {"headers": ALICE}, 404),
    "no such route": ("GET", "/nowhere", {}, 404),
    "wrong method": ("TRACE", "/api/tasks", {"headers": ALICE}, 405),
    "too large": ("POST", "/api/tasks", {"headers": {**ALICE, **JSON}, "content": b"x" * 70_000}, 413),
    "invalid": ("POST", "/api/tasks", {"headers": ALICE, "json": {"title": ""}}, 422),
    "graphql": ("POST", "/graphql", {"headers": ALICE, "json": {"query": "{ me { id } }"}}, 200),
    "docs": ("GET", "/docs", {}, 200),
}


@pytest.mark.parametrize("case", RESPONSES)
async def test_security_headers_on_every_response(client: httpx.AsyncClient, case: str) -> None:
    method, path, keywords, status = RESPONSES[case]
    response = await client.request(method, path, **keywords)
    assert response.status_code == status, response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "server" not in response.headers


# --- Attacker-controlled text never breaks a response header -------------------------------------


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def segment(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{segment(header)}.{segment(claims)}.c2ln"


TOKEN_HEADERS = {
    "non-Latin-1 alg": {"alg": "\u0101\u2028\U0001f600", "typ": "JWT"},
    "quote and backslash in alg": {"alg": 'x"\\y'},
    "header injection in alg": {"alg": "x\r\nSet-Cookie: stolen=1"},
    "non-Latin-1 typ and kid": {"alg": "HS384", "typ": "\u20ac", "kid": "\u0101"},
}


def assert_printable_ascii_headers(response: httpx.Response) -> None:
    for name, value in response.headers.raw:
        assert all(0x20 <= byte < 0x7F for byte in value), (name, value)


@pytest.mark.parametrize("case", TOKEN_HEADERS)
@pytest.mark.parametrize("transport", ["rest", "graphql"])
async def test_token_header_text_is_escaped_in_www_authenticate(
    client: httpx.AsyncClient, case: str, transport: str
) -> None:
    token = unsigned_token(TOKEN_HEADERS[case], {"sub": "alice", "exp": 4_000_000_000})
    headers = {"Authorization": f"Bearer {token}"}
    if transport == "rest":
        response = await client.get("/api/tasks", headers=headers)
    else:
        response = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=headers)
    assert response.status_code == 401, response.text
    assert_printable_ascii_headers(response)
    challenge = response.headers["WWW-Authenticate"]
    assert re.fullmatch(r'Bearer error="invalid_token", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*"', challenge)
    assert "Set-Cookie" not in response.headers
    assert "algorithm" in unquote(challenge)


# Ids Better Auth or a minting frontend may hand out: the API must serve them, whatever they contain.
ODD_USER_IDS = ["J\u00fcrgen M\u00fcller", "\u7528\u6237-\u4e00", "100%?#x", "emoji\U0001f600 x", "a+b&c=d"]


@pytest.mark.every_database  # stored data: each database's text handling
@pytest.mark.parametrize("user_id", ODD_USER_IDS)
async def test_odd_user_ids_get_encoded_location_and_link_and_one_task_per_create(
    client: httpx.AsyncClient, connection: AsyncConnection, user_id: str
) -> None:
    headers = auth_headers(user_id)
    prefix = "/api/" + quote(user_id, safe="") + "/tasks"
    created = await client.post(prefix, json={"title": "once"}, headers=headers)
    assert created.status_code == 201, created.text
    assert_printable_ascii_headers(created)
    location = created.headers["Location"]
    assert unquote(location) == f"/api/{user_id}/tasks/{created.json()['id']}"
    assert (await client.get(location, headers=headers)).json()["title"] == "once"
    assert await stored_tasks(connection) == 1  # the create committed once and answered 201: a retry is not needed

    await client.post(prefix, json={"title": "twice"}, headers=headers)
    listed = await client.get(prefix, params={"limit": 1, "q": "\u00fc "}, headers=headers)
    assert listed.status_code == 200, listed.text
    assert_printable_ascii_headers(listed)
    links = _links(listed)
    assert set(links) == {"first", "last"}
    assert all(unquote(url.split("?")[0]) == f"/api/{user_id}/tasks" for url in links.values())
    full = await client.get(prefix, params={"limit": 1}, headers=headers)
    next_page = await client.get(_link(full, "next"), headers=headers)
    assert next_page.status_code == 200
    assert [task["title"] for task in next_page.json()] == ["once"]


def _links(response: httpx.Response) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]*)>; rel="([a-z]+)"', response.headers["Link"])}


def _link(response: httpx.Response, rel: str) -> str:
    return _links(response)[rel]


async def test_location_and_link_never_echo_the_host_header(client: httpx.AsyncClient) -> None:
    spoofed = {**ALICE, "Host": "evil.example"}
    created = await client.post("/api/tasks", json={"title": "x"}, headers=spoofed)
    listed = await client.get("/api/tasks", headers=spoofed)
    assert created.headers["Location"].startswith("/api/tasks/")
    assert "evil.example" not in listed.headers["Link"]
    assert _link(listed, "first") == "/api/tasks?page=1"


@pytest.mark.parametrize("settings_overrides", [{"public_url": "https://api.example.com/"}])
async def test_a_configured_public_url_makes_absolute_links(client: httpx.AsyncClient) -> None:
    spoofed = {**ALICE, "Host": "evil.example"}
    created = await client.post("/api/tasks", json={"title": "x"}, headers=spoofed)
    listed = await client.get("/api/tasks", params={"limit": 5}, headers=spoofed)
    assert created.headers["Location"] == f"https://api.example.com/api/tasks/{created.json()['id']}"
    assert _link(listed, "last") == "https://api.example.com/api/tasks?limit=5&page=1"


# --- Provisioning: nobody can keep another account from its first request -------------------------


@pytest.mark.every_database  # each database's locking on a race of first requests
async def test_no_claim_of_one_account_blocks_another_first_request(database_url: str) -> None:
    """Attackers claim the victim's e-mail and placeholder address, first and then concurrently."""
    victim_id = f"victim-{uuid.uuid4().hex[:8]}"
    victim = auth_headers(victim_id, email=f"{victim_id}@example.com")
    claimed = [f"{victim_id}@example.com", f"{victim_id}@{PLACEHOLDER_EMAIL_DOMAIN}", f"{victim_id}@USERS.invalid"]
    attackers = [auth_headers(f"mallory-{uuid.uuid4().hex[:8]}", email=email) for email in claimed * 3]
    app = create_app(make_settings(database_url))
    try:
        async with serving(app) as client:

            async def create(headers: dict[str, str]) -> int:
                return (await client.post("/api/tasks", json={"title": "mine"}, headers=headers)).status_code

            assert await asyncio.gather(*(create(headers) for headers in attackers[:3])) == [201] * 3
            statuses = await asyncio.gather(*(create(headers) for headers in [victim, *attackers[3:], victim]))
            assert statuses == [201] * 8
            me = await client.get("/api/me", headers=victim)
            assert (me.json()["id"], me.json()["email"]) == (victim_id, f"{victim_id}@example.com")
            listed = await client.get("/api/tasks", headers=victim)
            assert [task["title"] for task in listed.json()] == ["mine", "mine"]
    finally:
        async with serving(app):  # the app's own engine, to clean up what these requests committed
            async with app.state.engine.begin() as connection:
                await connection.execute(delete(users_table).where(users_table.c.id.like("victim-%")))
                await connection.execute(delete(users_table).where(users_table.c.id.like("mallory-%")))


# --- CORS: bearer tokens only, so no credentialed cross-origin requests ------------------------------

FRONTEND = "http://localhost:3000"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
CORS_REQUESTS: dict[str, tuple[str, str, dict[str, str], int]] = {
    "preflight": ("OPTIONS", "/api/tasks", PREFLIGHT, 200),
    "graphql preflight": ("OPTIONS", "/graphql", PREFLIGHT, 200),
    "simple": ("GET", "/api/tasks", ALICE, 200),
    "error": ("GET", "/api/tasks", {}, 401),
    "graphql": ("POST", "/graphql", ALICE, 200),
}


@pytest.mark.parametrize("case", CORS_REQUESTS)
async def test_allowed_origins_are_served_without_allowing_credentials(client: httpx.AsyncClient, case: str) -> None:
    method, path, headers, status = CORS_REQUESTS[case]
    body = {"query": "{ me { id } }"} if method == "POST" else None
    response = await client.request(method, path, headers={**headers, "Origin": FRONTEND}, json=body)
    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("method", ["OPTIONS", "GET"])
async def test_other_origins_are_not_allowed(client: httpx.AsyncClient, method: str) -> None:
    headers = {**(PREFLIGHT if method == "OPTIONS" else ALICE), "Origin": "http://evil.example"}
    response = await client.request(method, "/api/tasks", headers=headers)
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers
