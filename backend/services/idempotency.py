"""Idempotency keys of task creation, shared by REST's Idempotency-Key header and GraphQL's idempotencyKey."""

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database, insert_ignoring_conflicts
from backend.errors import Conflict, InvalidInput
from backend.models import IdempotencyState, idempotency_table, utcnow
from backend.principal import Principal
from backend.schemas import TaskCreate, TaskPublic

TTL = timedelta(hours=24)

keys = idempotency_table.c
# Not named after the columns: an UPDATE reserves those names for its SET clause.
_THIS_KEY = (keys.user_id == bindparam("owner_id"), keys.key == bindparam("key_value"))
_DELETE_EXPIRED_KEY = delete(idempotency_table).where(*_THIS_KEY, keys.created_at < bindparam("cutoff"))
_FIRST_REQUEST = select(keys.request_hash, keys.state, keys.response).where(*_THIS_KEY)
_FINISH = (
    update(idempotency_table)
    .where(*_THIS_KEY)
    .values(state=IdempotencyState.FINISHED.value, response=bindparam("answer"))
)


def request_hash(data: TaskCreate) -> str:
    """Of the validated input, so the same task sent over REST and over GraphQL is the same request."""
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


def _cutoff() -> datetime:
    return utcnow() - TTL


async def claim(connection: AsyncConnection, principal: Principal, key: str, data: TaskCreate) -> TaskPublic | None:
    """None when this request now owns the key; else the task the first request created.

    The key row is written in the creating transaction: a concurrent request with the same key
    blocks on the primary key until that commits, then replays its answer.
    """
    this_key = {"owner_id": principal.user_id, "key_value": key}
    await connection.execute(_DELETE_EXPIRED_KEY, {**this_key, "cutoff": _cutoff()})
    fingerprint = request_hash(data)
    claimed = await connection.execute(
        insert_ignoring_conflicts(connection, idempotency_table).values(
            user_id=principal.user_id,
            key=key,
            request_hash=fingerprint,
            state=IdempotencyState.IN_PROGRESS.value,
            created_at=utcnow(),
        )
    )
    if claimed.rowcount == 1:
        return None
    first = (await connection.execute(_FIRST_REQUEST, this_key)).one()
    if first.request_hash != fingerprint:
        raise InvalidInput("This idempotency key was already used with a different task")
    if first.state != IdempotencyState.FINISHED or first.response is None:
        raise Conflict()
    return TaskPublic.model_validate_json(first.response)


async def finish(connection: AsyncConnection, principal: Principal, key: str, task: TaskPublic) -> None:
    """Record the created task as the key's answer, in the creating transaction."""
    await connection.execute(
        _FINISH, {"owner_id": principal.user_id, "key_value": key, "answer": task.model_dump_json()}
    )


async def purge_expired(db: Database) -> int:
    async with db.writing() as connection:
        result = await connection.execute(delete(idempotency_table).where(keys.created_at < _cutoff()))
    return int(result.rowcount)
