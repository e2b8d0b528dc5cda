"""Probes for load balancers and orchestrators: no auth, no rate limit, not in the client's OpenAPI."""

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from backend.db import SessionDep
from backend.errors import ServiceUnavailable

READY_TIMEOUT_SECONDS = 3.0  # under the usual probe timeouts, so a hung database reads as "not ready"

router = APIRouter(tags=["operations"], include_in_schema=False)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/health", summary="The process is alive")
async def health() -> Health:
    """Answers without touching the database: restart the process only when this fails."""
    return Health()


@router.get("/ready", summary="The database is reachable")
async def ready(session: SessionDep) -> Health:
    """503 with `Retry-After` while the database cannot answer a trivial query."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await session.execute(text("SELECT 1"))
    except TimeoutError:
        raise ServiceUnavailable("The database did not answer in time") from None
    return Health()
