"""Better Auth's JWKS tokens (EdDSA, ES256, ES512, RS256, PS256) against a real JWKS server on localhost.

Every test drives the whole app over REST and GraphQL; the JWKS server counts the fetches it answers.
"""

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.utils import base64url_encode

from backend.tests.conftest import FakeClock
from backend.tests.factories import error_of, make_token

pytestmark = pytest.mark.single_database

JWKS_PATH = "/api/auth/jwks"
HANG_SECONDS = 10
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _generate(alg: str) -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES512":
        return ec.generate_private_key(ec.SECP521R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SigningKey:
    """A key pair as Better Auth keeps one: its JWKS entry carries `kid` and `alg`, no `use`."""

    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    private_key: PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.private_key = _generate(self.alg)

    @property
    def jwk(self) -> dict[str, Any]:
        public_jwk: dict[str, Any] = jwt.get_algorithm_by_name(self.alg).to_jwk(
            self.private_key.public_key(), as_dict=True
        )
        return {**public_jwk, "kid": self.kid, "alg": self.alg}

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, kid: str | None = None) -> str:
        return jwt.encode(claims, self.private_key, algorithm=alg or self.alg, headers={"kid": kid or self.kid})


ALGORITHMS = ["EdDSA", "ES256", "ES512", "RS256", "PS256"]
KEYS = {alg: SigningKey(alg) for alg in ALGORITHMS}


class JwksServer:
    """Better Auth's JWKS endpoint on 127.0.0.1: serves `keys`, counts requests, can fail on demand."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.mode = "serve"  # serve | error (HTTP 500) | garbage (HTML) | hang (no answer)
        self.requests = 0
        self.release = threading.Event()
        self._server = self._listen(0)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def _listen(self, port: int) -> ThreadingHTTPServer:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                if jwks.mode == "hang":
                    jwks.release.wait(HANG_SECONDS)
                    return
                status, body = jwks.response()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        return server

    def response(self) -> tuple[int, bytes]:
        if self.mode == "error":
            return 500, b'{"message": "Internal Server Error"}'
        if self.mode == "garbage":
            return 200, b"<!doctype html><title>Not the JWKS</title>"
        return 200, json.dumps({"keys": [key.jwk for key in self.keys]}).encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: connections are refused until `restart`."""
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def restart(self) -> None:
        self._server = self._listen(int(self.origin.rsplit(":", 1)[1]))
        self.start()

    def reset(self, keys: list[SigningKey]) -> None:
        self.keys, self.mode, self.requests = keys, "serve", 0
        self.release = threading.Event()


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_jwks_server(jwks_server: JwksServer) -> Iterator[None]:
    jwks_server.reset(list(KEYS.values()))
    yield
    jwks_server.release.set()
    if jwks_server.mode == "stopped":
        jwks_server.restart()


@pytest.fixture
def settings_overrides(jwks_server: JwksServer, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Better Auth at the test's JWKS server; parametrize indirectly to change more."""
    overrides: dict[str, Any] = getattr(request, "param", {})
    return {
        "better_auth_url": jwks_server.origin,
        "jwks_fetch_timeout": 1.0,
        "jwks_min_refetch_seconds": 0.0,
        **overrides,
    }


def better_auth_claims(
    origin: str, user_id: str = "baUser0000000000000000000000001", **overrides: Any
) -> dict[str, Any]:
    """What Better Auth's /api/auth/token puts in a JWT: the user row, sub, iat, exp (15 min), iss, aud."""
    now = int(time.time())
    return {
        "id": user_id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "emailVerified": True,
        "image": None,
        "createdAt": "2026-01-02T03:04:05.000Z",
        "updatedAt": "2026-01-02T03:04:05.000Z",
        "sub": user_id,
        "iat": now,
        "exp": now + 900,
        "iss": origin,
        "aud": origin,
        **overrides,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def graphql(client: httpx.AsyncClient, token: str, query: str) -> httpx.Response:
    return await client.post("/graphql", json={"query": query}, headers=bearer(token))


def assert_unauthorized(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    code, message = error_of(response.json())
    assert code == "UNAUTHENTICATED"
    assert detail in message
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


# --- Valid tokens of every algorithm, over REST and GraphQL ---------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_of_each_algorithm_works_over_rest(
    client: httpx.AsyncClient, jwks_server: JwksServer, alg: str
) -> None:
    token = KEYS[alg].sign(better_auth_claims(jwks_server.origin))
    created = await client.post("/api/tasks", json={"title": f"signed with {alg}"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == "baUser0000000000000000000000001"
    me = await client.get("/api/me", headers=bearer(token))
    assert me.json() == {"id": "baUser0000000000000000000000001", "email": "ada@example.com", "name": "Ada Lovelace"}
    assert jwks_server.requests == 1


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_of_each_algorithm_works_over_graphql(
    client: httpx.AsyncClient, jwks_server: JwksServer, alg: str
) -> None:
    token = KEYS[alg].sign(better_auth_claims(jwks_server.origin))
    response = await graphql(client, token, 'mutation { createTask(input: {title: "gql"}) { userId owner { email } } }')
    assert response.status_code == 200, response.text
    assert response.json() == {
        "data": {"createTask": {"userId": "baUser0000000000000000000000001", "owner": {"email": "ada@example.com"}}}
    }


async def test_hs256_and_jwks_tokens_yield_the_same_principal(
    client: httpx.AsyncClient, jwks_server: JwksServer
) -> None:
    claims = better_auth_claims(jwks_server.origin)
    hs_token = make_token(claims.pop("sub"), **{k: v for k, v in claims.items() if k not in ("iat", "exp")})
    answers = [(await client.get("/api/me", headers=bearer(t))).json() for t in (hs_token, KEYS["EdDSA"].sign(claims))]
    assert answers[0] == answers[1]


# --- Rotation and the unknown-kid flood -------------------------------------------------------


async def test_rotated_key_is_picked_up_with_one_refetch(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    old, new = KEYS["EdDSA"], SigningKey("EdDSA")
    jwks_server.keys = [old]
    claims = better_auth_claims(jwks_server.origin)
    assert (await client.get("/api/me", headers=bearer(old.sign(claims)))).status_code == 200
    jwks_server.keys = [new, old]
    assert (await client.get("/api/me", headers=bearer(new.sign(claims)))).status_code == 200
    assert (await client.get("/api/me", headers=bearer(old.sign(claims)))).status_code == 200
    assert jwks_server.requests == 2


@pytest.mark.parametrize("settings_overrides", [{"jwks_min_refetch_seconds": 1.0}], indirect=True, ids=["refetch-1s"])
async def test_unknown_kid_flood_refetches_at_most_once_per_interval(
    client: httpx.AsyncClient, jwks_server: JwksServer, clock: FakeClock
) -> None:
    claims = better_auth_claims(jwks_server.origin)

    async def flood() -> set[int]:
        tokens = [KEYS["EdDSA"].sign(claims, kid=uuid.uuid4().hex) for _ in range(100)]
        responses = await asyncio.gather(*(client.get("/api/tasks", headers=bearer(t)) for t in tokens))
        return {response.status_code for response in responses}

    assert await flood() == {401}
    assert jwks_server.requests == 1
    assert await flood() == {401}
    assert jwks_server.requests == 1
    clock.advance(1.1)
    assert await flood() == {401}
    assert jwks_server.requests == 2
    assert (await client.get("/api/me", headers=bearer(KEYS["EdDSA"].sign(claims)))).status_code == 200
    assert jwks_server.requests == 2


async def test_unknown_kid_is_refused(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    token = SigningKey("EdDSA").sign(better_auth_claims(jwks_server.origin))
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "unknown key")


# --- Claims: issuer, audience, expiry --------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        pytest.param({"iss": "http://evil.example"}, "Wrong token issuer", id="wrong-iss"),
        pytest.param({"aud": "http://evil.example"}, "Wrong token audience", id="wrong-aud"),
        pytest.param({"iss": None}, "'iss' claim", id="no-iss"),
        pytest.param({"aud": None}, "'aud' claim", id="no-aud"),
        pytest.param({"exp": int(time.time()) - 3600}, "expired", id="expired"),
        pytest.param({"exp": None}, "'exp' claim", id="no-exp"),
        pytest.param({"nbf": int(time.time()) + 3600}, "not yet valid", id="nbf-future"),
        pytest.param({"sub": None, "id": None}, "no usable user id", id="no-user-id"),
    ],
)
async def test_bad_claims_are_refused(
    client: httpx.AsyncClient, jwks_server: JwksServer, claims: dict[str, Any], detail: str
) -> None:
    payload = {k: v for k, v in {**better_auth_claims(jwks_server.origin), **claims}.items() if v is not None}
    token = KEYS["ES256"].sign(payload)
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), detail)
    response = await graphql(client, token, "{ me { id } }")
    assert_unauthorized(response, detail)


async def test_expiry_within_the_leeway_is_accepted(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    token = KEYS["RS256"].sign(better_auth_claims(jwks_server.origin, exp=int(time.time()) - 10))
    assert (await client.get("/api/me", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [{"jwt_issuer": "https://auth.example.com", "jwt_audience": "todo-api"}],
    indirect=True,
    ids=["configured"],
)
async def test_configured_issuer_and_audience_replace_the_origin(
    client: httpx.AsyncClient, jwks_server: JwksServer
) -> None:
    configured = better_auth_claims(jwks_server.origin, iss="https://auth.example.com", aud="todo-api")
    assert (await client.get("/api/me", headers=bearer(KEYS["PS256"].sign(configured)))).status_code == 200
    default = KEYS["PS256"].sign(better_auth_claims(jwks_server.origin))
    assert_unauthorized(await client.get("/api/me", headers=bearer(default)), "issuer")
    # Once configured, HS256 tokens (Better Auth's session cookie too) must carry them as well.
    assert_unauthorized(await client.get("/api/me", headers=bearer(make_token("alice"))), "'iss' claim")
    hs_configured = make_token("alice", iss="https://auth.example.com", aud="todo-api")
    assert (await client.get("/api/me", headers=bearer(hs_configured))).status_code == 200


# --- Algorithms: confusion, none, mismatch ---------------------------------------------------


def hs256_signed_with(secret: bytes, claims: dict[str, Any], headers: dict[str, Any]) -> str:
    """An attacker's HS256 token; PyJWT refuses to sign with a public key, so sign it by hand."""
    segments = [base64url_encode(json.dumps(part).encode()) for part in ({"alg": "HS256", **headers}, claims)]
    signing_input = b".".join(segments)
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_hs256_token_signed_with_the_public_key_is_refused(
    client: httpx.AsyncClient, jwks_server: JwksServer, alg: str
) -> None:
    key = KEYS[alg]
    claims = better_auth_claims(jwks_server.origin)
    for secret in (key.public_pem, json.dumps(key.jwk).encode()):
        token = hs256_signed_with(secret, claims, {"typ": "JWT", "kid": key.kid})
        assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "Invalid token signature")
    assert jwks_server.requests == 0


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS512", "ES384", "EdDSA ", ""])
async def test_algorithms_outside_the_allow_list_are_refused(
    client: httpx.AsyncClient, jwks_server: JwksServer, alg: str
) -> None:
    unsigned = jwt.encode(better_auth_claims(jwks_server.origin), "", algorithm="none")
    header = base64url_encode(json.dumps({"alg": alg, "kid": KEYS["EdDSA"].kid}).encode()).decode()
    token = header + unsigned[unsigned.index(".") :]
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "is not accepted")
    assert_unauthorized(await graphql(client, token, "{ me { id } }"), "is not accepted")


async def test_non_string_algorithm_is_refused(client: httpx.AsyncClient) -> None:
    header = base64url_encode(json.dumps({"alg": ["EdDSA"]}).encode()).decode()
    assert_unauthorized(await client.get("/api/me", headers=bearer(f"{header}.e30.")), "is not accepted")


@pytest.mark.parametrize(
    ("signer", "claimed_key"),
    [
        pytest.param("ES256", "EdDSA", id="ES256-on-Ed25519-key"),
        pytest.param("EdDSA", "ES256", id="EdDSA-on-P256-key"),
        pytest.param("RS256", "PS256", id="RS256-on-PS256-key"),
        pytest.param("PS256", "RS256", id="PS256-on-RS256-key"),
        pytest.param("ES512", "ES256", id="ES512-on-P256-key"),
    ],
)
async def test_algorithm_must_match_the_key_of_its_kid(
    client: httpx.AsyncClient, jwks_server: JwksServer, signer: str, claimed_key: str
) -> None:
    token = KEYS[signer].sign(better_auth_claims(jwks_server.origin), kid=KEYS[claimed_key].kid)
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "does not match its key")


async def test_token_without_kid_is_refused(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    token = jwt.encode(better_auth_claims(jwks_server.origin), KEYS["EdDSA"].private_key, algorithm="EdDSA")
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "no key id")
    assert jwks_server.requests == 0


async def test_tampered_payload_is_refused(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    header, _, signature = KEYS["EdDSA"].sign(better_auth_claims(jwks_server.origin)).split(".")
    forged = base64url_encode(json.dumps(better_auth_claims(jwks_server.origin, sub="someone-else")).encode())
    token = f"{header}.{forged.decode()}.{signature}"
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "Invalid token signature")


# --- Better Auth down ------------------------------------------------------------------------


async def timed_get(client: httpx.AsyncClient, token: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.get("/api/tasks", headers=bearer(token))
    return response, time.perf_counter() - started


@pytest.mark.parametrize("settings_overrides", [{"jwks_min_refetch_seconds": 5.0}], indirect=True, ids=["refetch-5s"])
@pytest.mark.parametrize("mode", ["stopped", "error", "garbage", "hang"])
async def test_unreachable_jwks_answers_503_quickly_and_hs256_keeps_working(
    client: httpx.AsyncClient, jwks_server: JwksServer, mode: str
) -> None:
    if mode == "stopped":
        jwks_server.stop()
    jwks_server.mode = mode
    token = KEYS["EdDSA"].sign(better_auth_claims(jwks_server.origin))
    for _ in range(2):
        response, seconds = await timed_get(client, token)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert "JWKS is unreachable" in response.json()["detail"]
        assert seconds < 1.5  # jwks_fetch_timeout is 1 s; within the interval no second fetch
    graphql_response = await graphql(client, token, "{ me { id } }")
    assert graphql_response.status_code == 503
    assert graphql_response.headers["Retry-After"] == "5"
    assert jwks_server.requests == (0 if mode == "stopped" else 1)
    assert (await client.get("/api/me", headers=bearer(make_token("alice")))).status_code == 200


async def test_concurrent_requests_share_one_hanging_fetch(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    jwks_server.mode = "hang"
    token = KEYS["EdDSA"].sign(better_auth_claims(jwks_server.origin))
    responses = await asyncio.gather(*(timed_get(client, token) for _ in range(20)))
    assert {response.status_code for response, _ in responses} == {503}
    assert max(seconds for _, seconds in responses) < 1.5  # one 1 s fetch timeout, not twenty in a row
    assert jwks_server.requests == 1


@pytest.mark.parametrize("settings_overrides", [{"jwks_cache_seconds": 1}], indirect=True, ids=["cache-1s"])
async def test_cached_keys_keep_working_while_better_auth_is_down(
    client: httpx.AsyncClient, jwks_server: JwksServer, clock: FakeClock
) -> None:
    token = KEYS["ES512"].sign(better_auth_claims(jwks_server.origin))
    assert (await client.get("/api/me", headers=bearer(token))).status_code == 200
    jwks_server.mode = "error"
    clock.advance(1.1)  # past the cache's lifetime: the refetch fails, the fetched set stays
    another_token = KEYS["ES512"].sign(better_auth_claims(jwks_server.origin))  # not yet verified
    assert another_token != token
    assert (await client.get("/api/me", headers=bearer(another_token))).status_code == 200
    assert jwks_server.requests == 2
    unknown = SigningKey("ES512").sign(better_auth_claims(jwks_server.origin))
    assert_unauthorized(await client.get("/api/me", headers=bearer(unknown)), "unknown key")


async def test_jwks_without_usable_keys_refuses_tokens(client: httpx.AsyncClient, jwks_server: JwksServer) -> None:
    jwks_server.keys = []
    token = KEYS["EdDSA"].sign(better_auth_claims(jwks_server.origin))
    assert_unauthorized(await client.get("/api/me", headers=bearer(token)), "unknown key")
    jwks_server.keys = [KEYS["EdDSA"]]
    assert (await client.get("/api/me", headers=bearer(token))).status_code == 200
