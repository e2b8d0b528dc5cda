"""The HS256 auth context: the 401 matrix on REST and GraphQL, issuer and audience, remembered tokens.

Which claims name the user: test_auth_claims.py; JWKS-signed tokens: test_auth_jwks.py.
"""

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from backend.tests.conftest import FakeClock
from backend.tests.factories import TEST_SECRET, auth_headers, make_token

pytestmark = pytest.mark.single_database


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


NOW = int(time.time())

# (Authorization header value or None, a fragment of the 401 detail)
BAD_CREDENTIALS = [
    pytest.param(None, "Missing bearer token", id="missing"),
    pytest.param("Bearer", "Missing bearer token", id="empty-bearer"),
    pytest.param("Basic YWxpY2U6c2VjcmV0", "Bearer scheme", id="basic"),
    pytest.param("Bearer not-a-jwt", "Malformed", id="malformed"),
    pytest.param("Bearer a.b.c", "Malformed", id="garbage-segments"),
    pytest.param(f"Bearer {make_token(secret='some-other-secret-of-enough-length-000000')}", "signature", id="bad-sig"),
    pytest.param(f"Bearer {make_token(expires_in=-120)}", "expired", id="expired"),
    pytest.param(f"Bearer {make_token(nbf=NOW + 600)}", "not yet valid", id="not-yet-valid"),
    pytest.param(f"Bearer {make_token(iat=NOW + 600)}", "not yet valid", id="issued-in-future"),
    pytest.param(f"Bearer {unsigned_token({'sub': 'alice', 'exp': NOW + 600})}", "algorithm", id="alg-none"),
    pytest.param(f"Bearer {make_token(algorithm='HS512')}", "algorithm", id="hs512"),
    pytest.param(f"Bearer {jwt.encode({'sub': 'alice'}, TEST_SECRET, algorithm='HS256')}", "exp", id="no-exp"),
    pytest.param(f"Bearer {make_token(sub=None)}", "user id", id="no-user-id"),
    pytest.param(f"Bearer {make_token(sub=None, userId='alice', email='a@x.io')}", "user id", id="userId-only"),
    pytest.param(f"Bearer {make_token(sub='')}", "user id", id="empty-sub"),
    pytest.param(f"Bearer {make_token(sub=123)}", "user id", id="numeric-sub"),
    pytest.param(f"Bearer {make_token(sub='a' * 300)}", "user id", id="huge-sub"),
    pytest.param("Bearer " + make_token(sub="al\u0000ice"), "user id", id="nul-in-sub"),
    pytest.param("Bearer " + "x" * 9000, "too large", id="oversized"),
]


@pytest.mark.parametrize(("authorization", "detail"), BAD_CREDENTIALS)
async def test_rest_refuses_bad_credentials(client: httpx.AsyncClient, authorization: str | None, detail: str) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await client.get("/api/tasks", headers=headers)
    assert response.status_code == 401
    assert detail in response.json()["detail"]
    assert response.json()["error"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token", error_description="')


@pytest.mark.parametrize(("authorization", "detail"), BAD_CREDENTIALS)
async def test_graphql_refuses_bad_credentials(
    client: httpx.AsyncClient, authorization: str | None, detail: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await client.post("/graphql", json={"query": "{ me { id } }"}, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert detail in (body.get("detail") or body["errors"][0]["message"])
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_authentication_comes_before_body_parsing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/tasks",
        content=b"{not json",
        headers={"Authorization": "Bearer broken", "Content-Type": "application/json"},
    )
    assert response.status_code == 401
    invalid_body = await client.post("/api/tasks", json={"title": ""}, headers={"Authorization": "Bearer broken"})
    assert invalid_body.status_code == 401


async def test_failed_writes_store_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/api/tasks", json={"title": "x"}, headers={"Authorization": "Bearer nope"})
    assert (await client.get("/api/tasks", headers=auth_headers("alice"))).json() == []


async def test_leeway_accepts_slightly_expired_tokens(client: httpx.AsyncClient) -> None:
    token = make_token(expires_in=-10)  # within the 30 s leeway
    response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tasks", headers={"Authorization": f"bearer {make_token()}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"jwt_issuer": "https://auth.example", "jwt_audience": "https://api.example"}]
)
async def test_issuer_and_audience_are_checked_when_configured(client: httpx.AsyncClient) -> None:
    good = make_token(iss="https://auth.example", aud="https://api.example")
    assert (await client.get("/api/tasks", headers={"Authorization": f"Bearer {good}"})).status_code == 200
    cases: list[tuple[dict[str, Any], str]] = [
        ({"iss": "https://evil.example", "aud": "https://api.example"}, "issuer"),
        ({"iss": "https://auth.example", "aud": "https://other.example"}, "audience"),
        ({"aud": "https://api.example"}, "iss"),
    ]
    for claims, detail in cases:
        response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {make_token(**claims)}"})
        assert response.status_code == 401
        assert detail in response.json()["detail"]


async def test_hs256_audience_is_ignored_when_not_configured(client: httpx.AsyncClient) -> None:
    token = make_token(aud="anything", iss="anyone")
    assert (await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 200


# --- Verified tokens are remembered, expiry is not ------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"jwt_leeway_seconds": 0}])
async def test_a_remembered_token_still_expires(client: httpx.AsyncClient, clock: FakeClock) -> None:
    token = make_token(expires_in=2)
    assert (await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    assert (await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    clock.advance(2)  # exp is now, and there is no leeway
    expired = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


async def test_a_remembered_token_vouches_for_no_other_bytes(client: httpx.AsyncClient) -> None:
    token = make_token()
    assert (await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    header, payload, signature = token.split(".")
    forged_payload = _b64({"sub": "mallory", "exp": NOW + 3600})
    for forged in (f"{header}.{forged_payload}.{signature}", f"{header}.{payload}.{signature[:-2]}AA"):
        response = await client.get("/api/tasks", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401


def test_a_route_that_takes_the_context_without_authenticating_first_refuses_to_start() -> None:
    """ContextDep reads the principal AuthenticatedRoute verified: a router that forgets its route_class
    fails at start-up, not with a 500 at run time."""
    from fastapi import APIRouter

    from backend.auth import AuthenticatedRoute, ContextDep, check_authenticated_routes
    from backend.main import create_app
    from backend.tests.conftest import make_settings

    app = create_app(make_settings("sqlite+aiosqlite:///unused.db"))
    check_authenticated_routes(app)  # the app's own routes all authenticate first

    async def forgetful(context: ContextDep) -> str:
        return context.principal.user_id

    plain = APIRouter()
    plain.add_api_route("/api/forgetful", forgetful)
    app.include_router(plain)
    with pytest.raises(RuntimeError, match=r"/api/forgetful .* not an AuthenticatedRoute"):
        check_authenticated_routes(app)

    careful = APIRouter(route_class=AuthenticatedRoute)
    careful.add_api_route("/api/careful", forgetful)
    fresh = create_app(make_settings("sqlite+aiosqlite:///unused.db"))
    fresh.include_router(careful)
    check_authenticated_routes(fresh)
