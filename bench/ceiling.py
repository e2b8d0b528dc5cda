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
            rows = await self.pool.fetch(LIST_SQL, user_id, 20, 0)
            await _respond(send, 200, orjson.dumps([dict(row) for row in rows]))
        elif scope["method"] == "POST" and scope["path"] == "/api/tasks":
            body = orjson.loads(await _read_body(receive))
            title = body.get("title") if isinstance(body, dict) else None
            if not isinstance(title, str) or not 0 < len(title.strip()) <= 200:
                await _respond(send, 422, b'{"detail":"title: 1-200 characters"}')
                return
            due_date = body.get("due_date")
            row = await self.pool.fetchrow(
                INSERT_SQL,
                user_id,
                title.strip(),
                body.get("description"),
                body.get("priority", "medium"),
                body.get("tags", []),
                datetime.fromisoformat(due_date) if isinstance(due_date, str) else None,
            )
            await _respond(send, 201, orjson.dumps(dict(row) if row else None))
        else:
            await _respond(send, 404, b'{"detail":"Not found"}')

    def _authenticate(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return None
                try:
                    claims = jwt.decode(
                        token.strip(), self.secret, algorithms=["HS256"], leeway=30, options={"require": ["exp"]}
                    )
                except jwt.PyJWTError:
                    return None
                sub = claims.get("sub")
                return sub if isinstance(sub, str) and sub else None
        return None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.secret = os.environ["BETTER_AUTH_SECRET"]
                pool_size = int(os.environ.get("CEILING_POOL_SIZE", "20"))
                self.pool = await asyncpg.create_pool(
                    os.environ["CEILING_DSN"], min_size=pool_size, max_size=pool_size, init=_init_connection
                )
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
