"""The caller's user row: read it, and create it just in time when Better Auth keeps users elsewhere."""

import uuid
from collections.abc import Iterator, Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database, insert_ignoring_conflicts
from backend.errors import Forbidden, ServiceUnavailable
from backend.models import User, utcnow
from backend.principal import PLACEHOLDER_EMAIL_DOMAIN, Principal, is_reserved_email
from backend.schemas import UserPublic

users_table = User.__table__  # type: ignore[attr-defined]
PLACEHOLDER_ATTEMPTS = 3


def placeholder_email() -> str:
    """A fresh address nobody can hold: tokens may not claim the reserved domain, and it is random."""
    return f"user-{uuid.uuid4().hex}@{PLACEHOLDER_EMAIL_DOMAIN}"


def _candidate_emails(principal: Principal) -> Iterator[str]:
    if principal.email is not None:
        yield principal.email
    for _ in range(PLACEHOLDER_ATTEMPTS):
        yield placeholder_email()


async def ensure_user(connection: AsyncConnection, principal: Principal) -> None:
    """Make sure `tasks.user_id` can reference the caller; never touches an existing row.

    Runs inside the caller's transaction. A concurrent insert of the same id waits on the
    primary key and then does nothing. "user".email is unique, so an e-mail already held by
    another account (whoever claimed it first) falls back to a random placeholder: no claim of
    one account can keep another from being provisioned.
    """
    if await _user_exists(connection, principal.user_id):
        return
    for email in _candidate_emails(principal):
        now = utcnow()
        await connection.execute(
            insert_ignoring_conflicts(connection, users_table).values(
                id=principal.user_id,
                name=principal.name or (principal.email or principal.user_id).split("@")[0],
                email=email,
                emailVerified=False,
                createdAt=now,
                updatedAt=now,
            )
        )
        if await _user_exists(connection, principal.user_id):
            return
    raise ServiceUnavailable("Could not set up your account's record; retry shortly", retry_after=1)


_USER_ID = select(users_table.c.id).where(users_table.c.id == bindparam("user_id"))


async def _user_exists(connection: AsyncConnection, user_id: str) -> bool:
    return (await connection.scalar(_USER_ID, {"user_id": user_id})) is not None


async def get_me(db: Database, principal: Principal) -> UserPublic:
    """The caller as Better Auth knows them, else as the token describes them."""
    users = await load_users(db, principal, user_ids=[principal.user_id])
    me = users[0]
    assert me is not None
    return me


_USERS_BY_ID = select(users_table.c.id, users_table.c.email, users_table.c.name).where(
    users_table.c.id.in_(bindparam("ids", expanding=True))
)


async def load_users(db: Database, principal: Principal, *, user_ids: Sequence[str]) -> list[UserPublic | None]:
    """Users by id in key order (DataLoader contract); anyone but the caller is invisible."""
    visible = {user_id for user_id in user_ids if user_id == principal.user_id}
    found: dict[str, UserPublic] = {}
    if visible:
        async with db.reading() as connection:
            rows = (await connection.execute(_USERS_BY_ID, {"ids": list(visible)})).all()
        for row in rows:
            email = None if is_reserved_email(row.email) else row.email
            found[row.id] = UserPublic(id=row.id, email=email or principal.email, name=row.name)
        for user_id in visible - found.keys():
            found[user_id] = UserPublic(id=user_id, email=principal.email, name=principal.name)
    return [found.get(user_id) for user_id in user_ids]


def check_path_user(principal: Principal, user_id: str) -> None:
    """/api/{user_id}/... names its owner explicitly (spec FR-013); it must be the caller."""
    if user_id != principal.user_id:
        raise Forbidden("The user id in the path is not the authenticated user")
