"""Which claims name the user: `sub`, Better Auth's session-cache shape, `user_id`, `id`; never `userId` alone."""

from typing import Any

import httpx
import pytest

from backend.errors import Unauthenticated
from backend.principal import Principal
from backend.tests.factories import make_token
from backend.tokens import principal_from_claims

pytestmark = pytest.mark.single_database

USER = "u" * 32
SESSION = {"id": "s1", "token": "opaque", "userId": USER, "expiresAt": "2026-01-09T00:00:00.000Z"}
CACHED_USER = {"id": USER, "name": "Ada", "email": "ada@example.com", "emailVerified": False}
# Claims of Better Auth's `session_data` cookie with session.cookieCache.strategy = "jwt".
SESSION_CACHE: dict[str, Any] = {"session": SESSION, "user": CACHED_USER, "updatedAt": 1767225600000, "version": "1"}


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param({"sub": USER}, Principal(USER), id="sub"),
        pytest.param(
            {"sub": USER, "email": "ada@example.com", "name": "Ada"},
            Principal(USER, "ada@example.com", "Ada"),
            id="sub-email-name",
        ),
        pytest.param({"sub": USER, "user_id": "other", "id": "other"}, Principal(USER), id="sub-wins"),
        pytest.param(SESSION_CACHE, Principal(USER, "ada@example.com", "Ada"), id="session-cache"),
        pytest.param(
            {**SESSION_CACHE, "email": "top@example.com"},
            Principal(USER, "top@example.com", "Ada"),
            id="top-level-email-wins",
        ),
        pytest.param({"user_id": USER}, Principal(USER), id="user_id"),
        pytest.param({"id": USER, "email": "ada@example.com"}, Principal(USER, "ada@example.com"), id="id"),
        pytest.param({"user_id": USER, "id": "other"}, Principal(USER), id="user_id-before-id"),
        pytest.param({"sub": f"  {USER} "}, Principal(USER), id="trimmed"),
        pytest.param({"sub": USER, "email": "x" * 321, "name": "\x00"}, Principal(USER), id="unusable-email-name"),
        pytest.param(
            {"sub": USER, "user": {"email": "ada@example.com"}}, Principal(USER, "ada@example.com"), id="nested"
        ),
    ],
)
def test_user_id_and_profile_come_from_the_contracts_claims(claims: dict[str, Any], expected: Principal) -> None:
    assert principal_from_claims(claims) == expected


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"email": "ada@example.com", "userId": USER}, id="email-verification-token"),
        pytest.param({"userId": USER}, id="userId-only"),
        pytest.param({**SESSION_CACHE, "user": {**CACHED_USER, "id": "other"}}, id="session-user-mismatch"),
        pytest.param({"session": SESSION}, id="session-without-user"),
        pytest.param({"user": CACHED_USER}, id="user-without-session"),
        pytest.param({"session": {"userId": None}, "user": {"id": None}}, id="session-cache-without-ids"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": "   "}, id="blank-sub"),
        pytest.param({"sub": "", "user_id": USER}, id="bad-sub-no-fallback"),
        pytest.param({"sub": 42}, id="numeric-sub"),
        pytest.param({"sub": None}, id="null-sub"),
        pytest.param({"sub": ["u1"]}, id="list-sub"),
        pytest.param({"user_id": ["x"]}, id="list-user_id"),
        pytest.param({"id": "x" * 256}, id="too-long"),
        pytest.param({"sub": "a\nb"}, id="control-character"),
        pytest.param({"sub": "\ud800"}, id="lone-surrogate"),
        pytest.param({}, id="no-claims"),
    ],
)
def test_tokens_without_a_usable_user_id_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated, match="no usable user id"):
        principal_from_claims(claims)


async def test_better_auth_session_cache_token_works_end_to_end(client: httpx.AsyncClient) -> None:
    token = make_token(None, **SESSION_CACHE)
    created = await client.post(
        "/api/tasks", json={"title": "from the cookie"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == USER
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"id": USER, "email": "ada@example.com", "name": "Ada"}


async def test_better_auth_email_verification_token_is_refused(client: httpx.AsyncClient) -> None:
    token = make_token(None, email="ada@example.com", userId=USER)
    response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "Token carries no usable user id (sub)"
