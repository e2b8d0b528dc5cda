"""The just-in-time "user" row: created from the token's claims when missing, never changed when present."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.db import Database, Datastore
from backend.principal import PLACEHOLDER_EMAIL_DOMAIN, Principal, is_reserved_email
from backend.services import users as user_service
from backend.services.users import users_table
from backend.tokens import principal_from_claims

pytestmark = pytest.mark.every_database

BETTER_AUTH_ROW: dict[str, Any] = {
    "id": "B" * 32,
    "name": "Written by Better Auth",
    "email": "owner@example.com",
    "emailVerified": True,
    "image": "https://example.com/a.png",
    "createdAt": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    "updatedAt": datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC),
}


async def user_row(connection: AsyncConnection, user_id: str) -> dict[str, Any] | None:
    row = (await connection.execute(select(users_table).where(users_table.c.id == user_id))).mappings().first()
    return dict(row) if row is not None else None


async def test_missing_row_is_created_from_the_claims(connection: AsyncConnection) -> None:
    await user_service.ensure_user(
        connection, principal_from_claims({"sub": "u1", "email": "u1@example.com", "name": "U"})
    )
    row = await user_row(connection, "u1")
    assert row is not None
    assert (row["name"], row["email"], row["emailVerified"]) == ("U", "u1@example.com", False)


async def test_session_cache_claims_fill_the_row_from_their_user_object(connection: AsyncConnection) -> None:
    claims = {"session": {"userId": "u2"}, "user": {"id": "u2", "email": "u2@example.com", "name": "Nested"}}
    await user_service.ensure_user(connection, principal_from_claims(claims))
    row = await user_row(connection, "u2")
    assert row is not None
    assert (row["name"], row["email"]) == ("Nested", "u2@example.com")


async def test_missing_name_and_email_get_placeholders(connection: AsyncConnection, db: Database) -> None:
    await user_service.ensure_user(connection, Principal("u3"))
    await user_service.ensure_user(connection, Principal("u4", email="four@example.com"))
    three, four = await user_row(connection, "u3"), await user_row(connection, "u4")
    assert three is not None
    assert three["name"] == "u3"
    assert three["email"].endswith(f"@{PLACEHOLDER_EMAIL_DOMAIN}")
    assert four is not None
    assert (four["name"], four["email"]) == ("four", "four@example.com")
    assert (await user_service.get_me(db, Principal("u3"))).email is None


async def test_an_email_taken_by_another_user_falls_back_to_a_placeholder(
    connection: AsyncConnection, db: Database
) -> None:
    await connection.execute(insert(users_table).values(BETTER_AUTH_ROW))
    await user_service.ensure_user(connection, Principal("u5", email="owner@example.com", name="Five"))
    row = await user_row(connection, "u5")
    assert row is not None
    assert row["name"] == "Five"
    assert row["email"].endswith(f"@{PLACEHOLDER_EMAIL_DOMAIN}")
    assert (await user_service.get_me(db, Principal("u5", email="owner@example.com"))).email == "owner@example.com"
    assert await user_row(connection, BETTER_AUTH_ROW["id"]) == BETTER_AUTH_ROW


async def test_a_row_better_auth_wrote_is_never_changed(connection: AsyncConnection, db: Database) -> None:
    await connection.execute(insert(users_table).values(BETTER_AUTH_ROW))
    claims = Principal(BETTER_AUTH_ROW["id"], email="new@example.com", name="New name")
    await user_service.ensure_user(connection, claims)
    assert await user_row(connection, BETTER_AUTH_ROW["id"]) == BETTER_AUTH_ROW
    me = await user_service.get_me(db, claims)
    assert (me.email, me.name) == ("owner@example.com", "Written by Better Auth")


async def test_concurrent_first_requests_create_one_row(datastore: Datastore) -> None:
    newcomer = Principal("concurrent-newcomer", email="newcomer@example.com")

    async def first_request() -> None:
        async with datastore.for_request().writing() as connection:
            await user_service.ensure_user(connection, newcomer)

    try:
        await asyncio.gather(*(first_request() for _ in range(5)))
        async with datastore.for_request().reading() as connection:
            statement = select(func.count()).select_from(users_table).where(users_table.c.id == newcomer.user_id)
            assert await connection.scalar(statement) == 1
            row = await user_row(connection, newcomer.user_id)
        assert row is not None
        assert row["email"] == "newcomer@example.com"
    finally:
        async with datastore.for_request().writing() as connection:
            await connection.execute(delete(users_table).where(users_table.c.id == newcomer.user_id))


@pytest.mark.parametrize(
    "email", ["victim@users.invalid", "VICTIM@Users.Invalid", "x@anything.invalid", "x@users.invalid."]
)
def test_a_token_cannot_claim_an_address_in_the_reserved_domain(email: str) -> None:
    assert is_reserved_email(email)
    assert principal_from_claims({"sub": "mallory", "email": email}).email is None
    assert principal_from_claims({"sub": "m", "user": {"email": email}}).email is None


async def test_placeholders_are_never_the_same_twice(connection: AsyncConnection) -> None:
    for user_id in ("p1", "p2"):
        await user_service.ensure_user(connection, Principal(user_id))
    first, second = await user_row(connection, "p1"), await user_row(connection, "p2")
    assert first is not None
    assert second is not None
    assert first["email"] != second["email"]
