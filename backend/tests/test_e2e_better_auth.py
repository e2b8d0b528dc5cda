"""End to end against a real Better Auth server (npm `better-auth`, pinned in e2e/better-auth) on Node.

Better Auth and the API share one scratch PostgreSQL database, as in production: Better Auth runs its
own migrations, then the API adds its tables beside them. Two users sign up through Better Auth's HTTP
API; their `/api/auth/token` JWTs (EdDSA, from the JWKS) and their `session_data` cookies (HS256 with
BETTER_AUTH_SECRET) drive the API. npm installs the packages into e2e/better-auth on first use.
"""

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from backend.db import create_engine, migrate_to_head
from backend.main import create_app
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings
from backend.tests.factories import TEST_SECRET

E2E_DIR = Path(__file__).resolve().parents[2] / "e2e" / "better-auth"
NPM_INSTALL_TIMEOUT = 600
SERVER_START_TIMEOUT = 60
EMAIL_TIMEOUT = 10
PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.slow


def libpq_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def install_better_auth() -> None:
    """`npm ci` from the committed lockfile, unless node_modules already matches it."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("This test needs Node.js 20+ and npm on PATH (they run the real Better Auth server)")
    installed = E2E_DIR / "node_modules" / ".package-lock.json"
    lockfile = E2E_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lockfile.stat().st_mtime:
        return
    npm = await asyncio.create_subprocess_exec(
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        cwd=E2E_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(NPM_INSTALL_TIMEOUT):
            output, _ = await npm.communicate()
    finally:
        if npm.returncode is None:
            npm.kill()
            await npm.wait()
    assert npm.returncode == 0, f"npm ci in {E2E_DIR} failed:\n{output.decode(errors='replace')}"


async def read_lines(path: Path) -> list[str]:
    """The lines a child process wrote so far (none while the file does not exist)."""

    def read() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    return await asyncio.to_thread(read)


@dataclass(frozen=True)
class BetterAuth:
    origin: str
    emails: Path

    async def verification_token(self, email: str) -> str:
        """The token of the verification e-mail Better Auth "sent" to `email`."""
        for _ in range(EMAIL_TIMEOUT * 10):
            for line in await read_lines(self.emails):
                sent = json.loads(line)
                if sent["email"] == email:
                    return str(sent["token"])
            await asyncio.sleep(0.1)
        raise AssertionError(f"Better Auth sent no verification e-mail to {email}")


@asynccontextmanager
async def running_better_auth(database_url: str, workdir: Path) -> AsyncIterator[BetterAuth]:
    """Start e2e/better-auth/server.mjs (it migrates the database first) and wait for `READY <url>`."""
    await install_better_auth()
    log, emails = workdir / "better-auth.log", workdir / "verification-emails.jsonl"
    env = {
        **os.environ,
        "DATABASE_URL": libpq_url(database_url),
        "BETTER_AUTH_SECRET": TEST_SECRET,
        "VERIFICATION_EMAILS_FILE": str(emails),
    }
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            "node", "server.mjs", cwd=E2E_DIR, env=env, stdout=output, stderr=asyncio.subprocess.STDOUT
        )
    try:
        yield BetterAuth(origin=await _wait_until_ready(process, log), emails=emails)
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_until_ready(process: asyncio.subprocess.Process, log: Path) -> str:
    for _ in range(SERVER_START_TIMEOUT * 10):
        for line in await read_lines(log):
            if line.startswith("READY "):
                return line.removeprefix("READY ").strip()
        if process.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError("Better Auth did not start:\n" + "\n".join(await read_lines(log)))


@dataclass(frozen=True)
class SignedUpUser:
    id: str
    email: str
    name: str
    access_token: str  # GET /api/auth/token: EdDSA, from the JWKS
    session_cache: str  # the better-auth.session_data cookie: HS256 with BETTER_AUTH_SECRET
    verification_token: str  # the e-mail verification token: HS256, must never authenticate


async def sign_up(better_auth: BetterAuth, name: str) -> SignedUpUser:
    email = f"{name.lower()}@example.com"
    async with httpx.AsyncClient(base_url=better_auth.origin, headers={"Origin": better_auth.origin}) as http:
        response = await http.post("/api/auth/sign-up/email", json={"email": email, "password": PASSWORD, "name": name})
        assert response.status_code == 200, response.text
        session = {"Authorization": f"Bearer {response.headers['set-auth-token']}"}  # the bearer() plugin
        token = await http.get("/api/auth/token", headers=session)
        assert token.status_code == 200, token.text
    return SignedUpUser(
        id=response.json()["user"]["id"],
        email=email,
        name=name,
        access_token=token.json()["token"],
        session_cache=response.cookies["better-auth.session_data"],
        verification_token=await better_auth.verification_token(email),
    )


@pytest.fixture(scope="module")
async def shared_database() -> AsyncIterator[str]:
    url = await create_scratch_database("todo_e2e")
    try:
        yield url
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
async def better_auth(shared_database: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BetterAuth]:
    async with running_better_auth(shared_database, tmp_path_factory.mktemp("better-auth")) as server:
        yield server


@pytest.fixture(scope="module")
async def users(better_auth: BetterAuth) -> dict[str, SignedUpUser]:
    return {name: await sign_up(better_auth, name) for name in ("Alice", "Bob")}


async def user_rows(database_url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        return [dict(row) for row in await connection.fetch('SELECT * FROM "user" ORDER BY id')]
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def better_auth_user_rows(shared_database: str, users: dict[str, SignedUpUser]) -> list[dict[str, Any]]:
    """Better Auth's rows before the API ever ran: the API must leave them exactly so."""
    return await user_rows(shared_database)


@pytest.fixture(scope="module")
async def api(
    shared_database: str, better_auth: BetterAuth, better_auth_user_rows: list[dict[str, Any]]
) -> AsyncIterator[httpx.AsyncClient]:
    """The API as deployed: its own engine and schema creation, JWKS at Better Auth's default URL."""
    app = create_app(make_settings(shared_database, better_auth_url=better_auth.origin))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


TOKEN_KINDS = ["access_token", "session_cache"]


def token_of(user: SignedUpUser, kind: str) -> str:
    token: str = getattr(user, kind)
    return token


# --- What Better Auth really issues --------------------------------------------------------


async def test_better_auth_issues_the_tokens_the_api_expects(
    better_auth: BetterAuth, users: dict[str, SignedUpUser]
) -> None:
    alice = users["Alice"]
    access = jwt.get_unverified_header(alice.access_token)
    assert access["alg"] == "EdDSA"
    assert access["kid"]
    claims = jwt.decode(alice.access_token, options={"verify_signature": False})
    assert (claims["sub"], claims["id"], claims["email"]) == (alice.id, alice.id, alice.email)
    assert claims["iss"] == claims["aud"] == better_auth.origin
    assert claims["exp"] - claims["iat"] == 15 * 60
    cached = jwt.decode(alice.session_cache, TEST_SECRET, algorithms=["HS256"])
    assert cached["session"]["userId"] == cached["user"]["id"] == alice.id
    assert "sub" not in cached
    verification = jwt.decode(alice.verification_token, TEST_SECRET, algorithms=["HS256"])
    assert set(verification) == {"email", "userId", "iat", "exp"}


# --- The API with both token kinds ---------------------------------------------------------


@pytest.mark.parametrize("kind", TOKEN_KINDS)
async def test_rest_crud_with_each_token_kind(
    api: httpx.AsyncClient, users: dict[str, SignedUpUser], kind: str
) -> None:
    alice = users["Alice"]
    headers = bearer(token_of(alice, kind))
    me = await api.get("/api/me", headers=headers)
    assert me.json() == {"id": alice.id, "email": alice.email, "name": alice.name}
    created = await api.post("/api/tasks", json={"title": f"via {kind}", "tags": ["e2e"]}, headers=headers)
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["user_id"] == alice.id
    path = f"/api/{alice.id}/tasks/{task['id']}"
    assert (await api.get(path, headers=headers)).json() == task
    patched = await api.patch(path, json={"priority": "high"}, headers=headers)
    assert patched.json()["priority"] == "high"
    replaced = await api.put(path, json={"title": "renamed"}, headers=headers)
    assert replaced.json()["title"] == "renamed"
    assert (await api.patch(f"{path}/complete", headers=headers)).json()["completed"] is True
    listed = await api.get("/api/tasks", params={"tag": "e2e", "status": "completed"}, headers=headers)
    assert [item["id"] for item in listed.json()] == [task["id"]]
    assert (await api.delete(path, headers=headers)).status_code == 204
    assert (await api.get(path, headers=headers)).status_code == 404


@pytest.mark.parametrize("kind", TOKEN_KINDS)
async def test_graphql_with_each_token_kind(api: httpx.AsyncClient, users: dict[str, SignedUpUser], kind: str) -> None:
    bob = users["Bob"]
    headers = bearer(token_of(bob, kind))
    mutation = 'mutation { createTask(input: {title: "gql"}) { id userId owner { id email name } } }'
    created = (await api.post("/graphql", json={"query": mutation}, headers=headers)).json()
    assert created["data"]["createTask"]["owner"] == {"id": bob.id, "email": bob.email, "name": bob.name}
    task_id = created["data"]["createTask"]["id"]
    query = f"{{ me {{ id }} task(id: {task_id}) {{ title }} }}"
    assert (await api.post("/graphql", json={"query": query}, headers=headers)).json() == {
        "data": {"me": {"id": bob.id}, "task": {"title": "gql"}}
    }
    delete = f"mutation {{ deleteTask(id: {task_id}) }}"
    assert (await api.post("/graphql", json={"query": delete}, headers=headers)).json() == {
        "data": {"deleteTask": True}
    }


async def test_users_are_isolated_across_token_kinds(api: httpx.AsyncClient, users: dict[str, SignedUpUser]) -> None:
    alice, bob = users["Alice"], users["Bob"]
    created = await api.post("/api/tasks", json={"title": "Alice's secret"}, headers=bearer(alice.access_token))
    task_id = created.json()["id"]
    for token in (bob.access_token, bob.session_cache):
        assert (await api.get(f"/api/tasks/{task_id}", headers=bearer(token))).status_code == 404
        assert (
            await api.patch(f"/api/tasks/{task_id}", json={"title": "mine"}, headers=bearer(token))
        ).status_code == 404
        assert (await api.delete(f"/api/tasks/{task_id}", headers=bearer(token))).status_code == 404
        assert task_id not in [task["id"] for task in (await api.get("/api/tasks", headers=bearer(token))).json()]
        assert (await api.get(f"/api/{alice.id}/tasks", headers=bearer(token))).status_code == 403
        query = {"query": f"{{ task(id: {task_id}) {{ title }} }}"}
        assert (await api.post("/graphql", json=query, headers=bearer(token))).json() == {"data": {"task": None}}
    mine = await api.get(f"/api/tasks/{task_id}", headers=bearer(alice.session_cache))
    assert mine.json()["title"] == "Alice's secret"


async def test_email_verification_token_is_refused(api: httpx.AsyncClient, users: dict[str, SignedUpUser]) -> None:
    token = users["Alice"].verification_token
    rest = await api.get("/api/tasks", headers=bearer(token))
    assert rest.status_code == 401
    assert rest.json()["detail"] == "Token carries no usable user id (sub)"
    graphql = await api.post("/graphql", json={"query": "{ me { id } }"}, headers=bearer(token))
    assert graphql.status_code == 401


async def test_tasks_reference_better_auths_own_user_rows(
    api: httpx.AsyncClient,
    shared_database: str,
    users: dict[str, SignedUpUser],
    better_auth_user_rows: list[dict[str, Any]],
) -> None:
    for user in users.values():
        for kind in TOKEN_KINDS:
            response = await api.post("/api/tasks", json={"title": "fk"}, headers=bearer(token_of(user, kind)))
            assert response.status_code == 201
    connection = await asyncpg.connect(libpq_url(shared_database))
    try:
        referenced = await connection.fetchval(
            "SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'tasks'::regclass AND contype = 'f'"
        )
        owners = await connection.fetch(
            'SELECT DISTINCT t.user_id, u.email FROM tasks t JOIN "user" u ON u.id = t.user_id'
        )
    finally:
        await connection.close()
    assert referenced == '"user"'
    assert {(row["user_id"], row["email"]) for row in owners} == {(u.id, u.email) for u in users.values()}
    assert await user_rows(shared_database) == better_auth_user_rows  # no row added, none changed


# --- The other order: the API created "user" before Better Auth's migrations ran ---------------


async def test_better_auth_migrates_and_signs_up_on_the_apis_user_table(tmp_path: Path) -> None:
    database_url = await create_scratch_database("todo_e2e_api_first")
    try:
        engine = create_engine(make_settings(database_url))
        await migrate_to_head(engine)
        await engine.dispose()
        async with running_better_auth(database_url, tmp_path) as server:
            carol = await sign_up(server, "Carol")
            app = create_app(make_settings(database_url, better_auth_url=server.origin))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    for token in (carol.access_token, carol.session_cache):
                        created = await client.post("/api/tasks", json={"title": "x"}, headers=bearer(token))
                        assert created.status_code == 201, created.text
        assert [row["email"] for row in await user_rows(database_url)] == [carol.email]
    finally:
        await drop_scratch_database(database_url)
