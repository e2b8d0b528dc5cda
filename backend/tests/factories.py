"""Test data: plain functions with overridable defaults."""

import json
import time
from datetime import datetime
from typing import Any

import httpx
import jwt

from backend.db import Database
from backend.principal import Principal
from backend.schemas import TaskCreate, TaskPublic
from backend.services import tasks as task_service

TEST_SECRET = "test-only-secret-" + "0123456789abcdef" * 3  # 64 bytes: no PyJWT key-length warnings


def make_token(
    sub: Any = "alice",
    *,
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    expires_in: int = 3600,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + expires_in, **claims}
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def auth_headers(user_id: str = "alice", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}


def error_of(body: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of an error body: REST's {"error", "detail"} or GraphQL's first error."""
    if "error" in body:  # REST (a 422 lists its field errors under "errors" too)
        return body["error"], body["detail"]
    first = body["errors"][0]
    return first["extensions"]["code"], first["message"]


async def post_graphql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str],
    status: int = 200,
) -> dict[str, Any]:
    """POST a GraphQL request, check its status and that its body holds only what the spec allows."""
    # json.dumps escapes what UTF-8 cannot carry (a lone surrogate), so such input reaches the server
    body_text = json.dumps({"query": query, "variables": variables or {}})
    response = await client.post("/graphql", content=body_text, headers=headers | {"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) <= {"data", "errors", "extensions"}, body  # nothing else at the top level, ever
    return body


def principal(user_id: str = "alice", *, email: str | None = None, name: str | None = None) -> Principal:
    return Principal(user_id=user_id, email=email or f"{user_id}@example.com", name=name or user_id.title())


async def create_task(
    db: Database,
    owner: Principal | str = "alice",
    *,
    title: str = "A task",
    description: str | None = None,
    completed: bool = False,
    priority: str = "medium",
    tags: list[str] | None = None,
    due_date: datetime | None = None,
    quota: int = 10_000,
) -> TaskPublic:
    caller = owner if isinstance(owner, Principal) else principal(owner)
    data = TaskCreate.model_validate(
        {
            "title": title,
            "description": description,
            "completed": completed,
            "priority": priority,
            "tags": tags or [],
            "due_date": due_date,
        }
    )
    created = await task_service.create_task(db, caller, data=data, quota=quota)
    return created.task
