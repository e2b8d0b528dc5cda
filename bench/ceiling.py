"""The practical Python ceiling: a bare ASGI app doing only what the list and create must do.

PyJWT HS256 verification, one statement through an asyncpg pool, orjson. No framework, no ORM,
no validation beyond the title, no count, no rate limit: what the real app can approach, not beat.
Run by the benchmark as `uvicorn bench.ceiling:app` with the same server flags as the app.
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any

import asyncpg
import jwt
import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

COLUMNS = "id, user_id, title, description, completed, priority, tags, due_date, created_at, updated_at"
# What GET /api/tasks?limit=20&sort=created&order=desc reads, minus the total count.
LIST_SQL = f"SELECT {COLUMNS} FROM tasks WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
INSERT_SQL = (
    "INSERT INTO tasks (user_id, title, description, completed, priority, tags, due_date, created_at, updated_at) "
    f"VALUES ($1, $2, $3, false, $4, $5, $6, now(), now()) RETURNING {COLUMNS}"
)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads
    )


async def open_pool() -> asyncpg.Pool:
    """The pool both ceiling apps use: CEILING_POOL_SIZE connections, opened up front."""
    pool_size = int(os.environ.get("CEILING_POOL_SIZE", "20"))
    return await asyncpg.create_pool(
        os.environ["CEILING_DSN"], min_size=pool_size, max_size=pool_size, init=_init_connection
    )


def verified_user(authorization: str, secret: str) -> str | None:
    """The `sub` of a valid HS256 bearer token, else None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"], leeway=30, options={"require": ["exp"]})
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub else None


async def list_tasks(pool: asyncpg.Pool, user_id: str) -> bytes:
    rows = await pool.fetch(LIST_SQL, user_id, 20, 0)
    return orjson.dumps([dict(row) for row in rows])


async def insert_task(pool: asyncpg.Pool, user_id: str, raw_body: bytes) -> tuple[int, bytes]:
    """The create's status and response body; a title is all that is validated."""
    body = orjson.loads(raw_body)
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(title, str) or not 0 < len(title.strip()) <= 200:
        return 422, b'{"detail":"title: 1-200 characters"}'
    due_date = body.get("due_date")
    row = await pool.fetchrow(
        INSERT_SQL,
        user_id,
        title.strip(),
        body.get("description"),
        body.get("priority", "medium"),
        body.get("tags", []),
        datetime.fromisoformat(due_date) if isinstance(due_date, str) else None,
    )
    return 201, orjson.dumps(dict(row) if row else None)


class CeilingApp:
    def __init__(self) -> None:
        self.secret = ""
        self.pool: asyncpg.Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        user_id = self._authenticate(scope)
        if user_id is None:
            await _respond(send, 401, b'{"detail":"Invalid token"}')
            return
        assert self.pool is not None
        if scope["method"] == "GET" and scope["path"] == "/api/tasks":
            await _respond(send, 200, await list_tasks(self.pool, user_id))
        elif scope["method"] == "POST" and scope["path"] == "/api/tasks":
            status, body = await insert_task(self.pool, user_id, await _read_body(receive))
            await _respond(send, status, body)
        else:
            await _respond(send, 404, b'{"detail":"Not found"}')

    def _authenticate(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return verified_user(value.decode("latin-1"), self.secret)
        return None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.secret = os.environ["BETTER_AUTH_SECRET"]
                self.pool = await open_pool()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = CeilingApp()
