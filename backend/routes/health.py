"""Probes for load balancers and orchestrators: no auth, no rate limit, not in the client's OpenAPI."""

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

READY_TIMEOUT_SECONDS = 3.0  # under the usual probe timeouts, so a hung database reads as "not ready"

router = APIRouter(tags=["operations"], include_in_schema=False)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/health", summary="The process is alive")
async def health() -> Health:
    """Answers without touching the database: restart the process only when this fails."""
    return Health()


@router.get("/ready", summary="The database is reachable")
async def ready(request: Request) -> Health:
    """503 with `Retry-After` while the database cannot answer a trivial query within 3 s."""
    db = request.app.state.datastore.for_request(timeout_seconds=READY_TIMEOUT_SECONDS)
    async with db.reading() as connection:
        await connection.execute(text("SELECT 1"))
    return Health()
