"""Bearer tokens -> Principal: Better Auth's HS256 tokens and its JWKS-signed (EdDSA/ES/RS/PS) ones.

No web framework here: `backend/auth.py` wires this into FastAPI; `TokenVerifier` only needs the
settings and an HTTP client for the JWKS.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from backend.config import Settings
from backend.errors import ServiceUnavailable, Unauthenticated
from backend.principal import Principal, is_reserved_email

logger = logging.getLogger(__name__)

HS_ALGORITHMS = frozenset({"HS256"})
JWKS_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
MAX_TOKEN_LENGTH = 8192
MAX_ID_LENGTH = 255
EXPIRED = "Token has expired"
NOT_YET_VALID = "Token is not yet valid (nbf/iat in the future)"

Clock = Callable[[], float]  # seconds: time.time for token claims, time.monotonic for intervals


def _text_claim(raw: Any, max_length: int = MAX_ID_LENGTH) -> str | None:
    if not isinstance(raw, str):
        return None
    value: str = raw.strip()
    if not value or len(value) > max_length or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """User id from `sub`, Better Auth's session-cache shape, `user_id`, then `id`; never `userId` alone."""
    user: dict[str, Any] = claims["user"] if isinstance(claims.get("user"), dict) else {}
    session: dict[str, Any] = claims["session"] if isinstance(claims.get("session"), dict) else {}
    user_id: str | None = None
    if "sub" in claims:
        user_id = _text_claim(claims["sub"])
    elif session and user:
        session_user, token_user = _text_claim(session.get("userId")), _text_claim(user.get("id"))
        user_id = session_user if session_user is not None and session_user == token_user else None
    elif "user_id" in claims:
        user_id = _text_claim(claims["user_id"])
    elif "id" in claims:
        user_id = _text_claim(claims["id"])
    if user_id is None:
        raise Unauthenticated("Token carries no usable user id (sub)")
    email = _text_claim(claims.get("email"), 320) or _text_claim(user.get("email"), 320)
    if email is not None and is_reserved_email(email):
        email = None  # the placeholder domain belongs to the API: a token cannot take an address there
    name = _text_claim(claims.get("name")) or _text_claim(user.get("name"))
    return Principal(user_id=user_id, email=email, name=name)


_ERROR_DETAILS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, EXPIRED),
    (jwt.ImmatureSignatureError, NOT_YET_VALID),
    (jwt.InvalidSignatureError, "Invalid token signature"),
    (jwt.InvalidIssuerError, "Wrong token issuer (iss)"),
    (jwt.InvalidAudienceError, "Wrong token audience (aud)"),
    (jwt.InvalidIssuedAtError, "Malformed token: iat must be a number"),
    (jwt.exceptions.InvalidSubjectError, "Token carries no usable user id (sub must be a string)"),
    (jwt.InvalidAlgorithmError, "Token algorithm does not match its key"),
    (jwt.InvalidKeyError, "Token algorithm does not match its key"),
    (jwt.DecodeError, "Malformed token"),
)


def _unauthenticated(exc: jwt.PyJWTError) -> Unauthenticated:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return Unauthenticated(f"Token is missing the required {exc.claim!r} claim")
    for error_type, detail in _ERROR_DETAILS:
        if isinstance(exc, error_type):
            return Unauthenticated(detail)
    return Unauthenticated("Invalid token")


class JwksCache:
    """Better Auth's public keys by `kid`; an unknown kid refetches the set, at most once per interval."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._url = settings.jwks_url
        self._ttl = settings.jwks_cache_seconds
        self._min_refetch = settings.jwks_min_refetch_seconds
        self._timeout = settings.jwks_fetch_timeout
        self._client = client
        self._keys: dict[str, jwt.PyJWK] | None = None  # None until a fetch succeeds
        self._fetched_at = float("-inf")
        self._attempt_ended_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> jwt.PyJWK:
        if self._keys is None or kid not in self._keys or self._clock() - self._fetched_at > self._ttl:
            await self._refresh()
        if self._keys is None:
            # A valid token must not log its user out because Better Auth is down: retry, not re-login.
            raise ServiceUnavailable(
                "Cannot verify the token: Better Auth's JWKS is unreachable",
                retry_after=max(1, math.ceil(self._min_refetch)),
            )
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("Token signed with an unknown key (kid)")
        return key

    async def _refresh(self) -> None:
        requested_at = self._clock()
        async with self._lock:
            # An attempt that ended after this request began (it waited on that one) or less than
            # the interval before it answers it: a flood of bogus kids costs Better Auth one request
            # per interval. A failed attempt keeps the keys fetched before.
            if self._attempt_ended_at > requested_at - self._min_refetch:
                return
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, ValueError) as exc:
                logger.warning("JWKS fetch from %s failed: %r", self._url, exc)
            else:
                self._keys, self._fetched_at = keys, self._clock()
            finally:
                self._attempt_ended_at = self._clock()

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        async with asyncio.timeout(self._timeout):  # httpx's timeouts bound each read, not the whole response
            response = await self._client.get(self._url)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("the JWKS is not a JSON object")
        try:
            key_set = jwt.PyJWKSet.from_dict(document)
        except jwt.PyJWKSetError as exc:  # Better Auth mints its first key on the first /token call
            logger.warning("JWKS at %s holds no usable key: %s", self._url, exc)
            return {}
        return {key.key_id: key for key in key_set.keys if isinstance(key.key_id, str)}


class TokenVerifier:
    """Verifies a bearer token with the verifier its algorithm selects; both yield one Principal."""

    VERIFIED_CACHE_SIZE = 10_000

    def __init__(self, settings: Settings, jwks: JwksCache, *, clock: Clock = time.time) -> None:
        # Verified tokens by their exact bytes: a client sends the same token for minutes, and
        # PyJWT's checks cost more than the rest of a list request's Python. The signature of
        # those bytes cannot change; exp, nbf and iat are checked against `clock` on every use.
        self._clock = clock
        self._verified: dict[str, tuple[Principal, float, float]] = {}
        self._secret = settings.better_auth_secret
        self._leeway = settings.jwt_leeway_seconds
        self._hs_issuer = settings.jwt_issuer
        self._hs_audience = settings.jwt_audience
        self._jwks_issuer = settings.jwt_issuer or settings.better_auth_origin
        self._jwks_audience = settings.jwt_audience or settings.better_auth_origin
        self._jwks = jwks

    async def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is None:
            principal, claims = await self._verify(token)  # PyJWT checks the times too, by the real clock
            remembered = self._remember(token, principal, claims)
        principal, valid_from, valid_until = remembered
        now = self._clock()
        if valid_from <= now < valid_until:
            return principal
        del self._verified[token]
        raise Unauthenticated(NOT_YET_VALID if now < valid_from else EXPIRED)

    def _remember(self, token: str, principal: Principal, claims: dict[str, Any]) -> tuple[Principal, float, float]:
        valid_from = max(_numeric_date(claims, "nbf"), _numeric_date(claims, "iat")) - self._leeway
        valid_until = _numeric_date(claims, "exp") + self._leeway
        if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        remembered = (principal, valid_from, valid_until)
        self._verified[token] = remembered
        return remembered

    async def _verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("Token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("Malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in HS_ALGORITHMS | JWKS_ALGORITHMS:
            raise Unauthenticated(f"Token algorithm {str(alg)[:20]!r} is not accepted")
        if alg in HS_ALGORITHMS:
            # Only ever the shared secret: a public key can never serve as an HMAC secret here.
            claims = self._decode(token, self._secret, alg, self._hs_issuer, self._hs_audience)
        else:
            kid = header.get("kid")
            if not kid:
                raise Unauthenticated("Token has no key id (kid)")
            key = await self._jwks.key_for(kid)
            claims = self._decode(token, key, alg, self._jwks_issuer, self._jwks_audience)
        return principal_from_claims(claims), claims

    def _decode(
        self, token: str, key: str | jwt.PyJWK, alg: str, issuer: str | None, audience: str | None
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],  # with a PyJWK, PyJWT also requires alg == the key's own alg
                issuer=issuer,
                audience=audience,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise _unauthenticated(exc) from None
        return claims


def _numeric_date(claims: dict[str, Any], name: str) -> int:
    """A NumericDate claim as PyJWT read it when it verified the token (absent: no constraint)."""
    return int(claims[name]) if name in claims else 0


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("Missing bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise Unauthenticated("Missing bearer token")
    return token
