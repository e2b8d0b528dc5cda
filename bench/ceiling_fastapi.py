"""The ceiling app's work inside FastAPI: what FastAPI's routing and one dependency cost here.

The same PyJWT HS256 verification, statements, asyncpg pool and orjson bodies as bench/ceiling.py
(its functions), served by a FastAPI app with one route per operation and ONE async dependency
(the principal from the token); no middleware, no response model, no body model. Run by the
benchmark as `uvicorn bench.ceiling_fastapi:app` with the same server flags as the app.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response

from bench.ceiling import insert_task, list_tasks, open_pool, verified_user


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.secret = os.environ["BETTER_AUTH_SECRET"]
    app.state.pool = await open_pool()
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


async def principal(request: Request) -> str:
    """The token's user id; 401 without a valid bearer token."""
    user_id = verified_user(request.headers.get("authorization", ""), request.app.state.secret)
    if user_id is None:
        raise HTTPException(401, "Invalid token")
    return user_id


UserId = Annotated[str, Depends(principal)]


@app.get("/api/tasks")
async def list_route(request: Request, user_id: UserId) -> Response:
    return Response(await list_tasks(request.app.state.pool, user_id), media_type="application/json")


@app.post("/api/tasks")
async def create_route(request: Request, user_id: UserId) -> Response:
    status, body = await insert_task(request.app.state.pool, user_id, await request.body())
    return Response(body, status, media_type="application/json")
