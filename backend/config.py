"""Settings: the only code that reads environment variables (and `.env` in development)."""

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.database_url import anchored_sqlite_url, normalize_database_url

# `make run` starts in the repository and `cd backend && uvicorn main:app` in backend/: both read the
# repository's .env and keep a relative SQLite file there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Dev-only fallback. Any environment other than "development" refuses to start with it.
DEV_SECRET = "dev-only-insecure-secret-change-me-0123456789abcdef"
MIN_SECRET_BYTES = 32


class Settings(BaseSettings):
    # The contract fixes the variable names (DATABASE_URL, BETTER_AUTH_SECRET, ...), so no env prefix.
    model_config = SettingsConfigDict(env_file=PROJECT_ROOT / ".env", env_file_encoding="utf-8", extra="ignore")

    app_env: Literal["development", "test", "production"] = "development"

    database_url: str = "sqlite+aiosqlite:///./todo.db"
    db_pool_size: int = Field(default=20, ge=1, le=1000)
    # Overflow connections are closed as soon as they are returned: under steady load that is a
    # connect (and asyncpg's type set-up) per request or so. A fixed pool is cheaper.
    db_max_overflow: int = Field(default=0, ge=0, le=1000)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_pool_recycle: int = Field(default=240, ge=-1)  # Neon suspends idle computes after 300 s
    db_connect_timeout: float = Field(default=5.0, gt=0)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    db_request_timeout: float = Field(default=10.0, gt=0)  # all of one request's database work
    # None: from the URL ("-pooler" host, port 6432, pgbouncer=true), else detected at connect (backend/db.py).
    db_pgbouncer: bool | None = None

    better_auth_secret: str = ""
    better_auth_url: str = "http://localhost:3000"
    better_auth_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=3600)
    jwks_cache_seconds: int = Field(default=300, ge=1)
    jwks_min_refetch_seconds: float = Field(default=5.0, ge=0)
    jwks_fetch_timeout: float = Field(default=3.0, gt=0)
    user_table: str = Field(default="user", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

    forwarded_allow_ips: str = "127.0.0.1"  # proxies whose X-Forwarded-For is trusted (uvicorn's syntax)
    # Origin for absolute Location and Link URLs; empty: path-absolute references, never the Host header.
    public_url: str = ""

    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

    rate_limit: str = "120/minute"
    task_quota: int = Field(default=10_000, ge=1)  # most tasks one user may have
    redis_url: str | None = None

    graphql_introspection: bool | None = None  # None: on in development, off elsewhere
    graphiql: bool | None = None  # None: follows introspection
    docs_enabled: bool | None = None  # Swagger UI and /openapi.json; None: on unless production
    graphql_max_depth: int = Field(default=10, ge=1)
    graphql_max_aliases: int = Field(default=30, ge=1)
    graphql_max_tokens: int = Field(default=2000, ge=1)
    graphql_compiled: bool = True  # compiled plans (backend/gql/compiled.py); false: graphql-core runs everything

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Requests a worker serves at once; the rest wait in order of arrival (first come, first served).
    max_concurrent_requests: int = Field(default=32, ge=1, le=10_000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_enabled: bool = True
    # Several workers share one set of metrics through files here. prometheus-client reads the
    # variable itself when it is imported, so it must be set in the process environment, not in .env.
    prometheus_multiproc_dir: str | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        try:  # refuse an unsupported driver or sslmode now, not at the first connection
            normalize_database_url(value)
        except ValueError as unsupported:
            raise ValueError(str(unsupported).removeprefix("DATABASE_URL: ")) from None
        return anchored_sqlite_url(value, PROJECT_ROOT)

    @field_validator("rate_limit")
    @classmethod
    def _parseable_rate_limit(cls, value: str) -> str:
        parse_many(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _origin_only(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
            raise ValueError("PUBLIC_URL must be an origin such as https://api.example.com (no path or query)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _enforce_secret(self) -> "Settings":
        if not self.better_auth_secret:
            if self.app_env != "development":
                raise ValueError(
                    "BETTER_AUTH_SECRET is required outside development "
                    f"(at least {MIN_SECRET_BYTES} bytes; generate one with `openssl rand -base64 32`)"
                )
            self.better_auth_secret = DEV_SECRET
        elif self.app_env != "development" and len(self.better_auth_secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        if self.app_env != "development" and self.better_auth_secret == DEV_SECRET:
            raise ValueError("BETTER_AUTH_SECRET is the development placeholder; set a real secret")
        return self

    @model_validator(mode="after")
    def _refuse_trusting_every_client(self) -> "Settings":
        if self.app_env == "production" and self.trusts_every_forwarder:
            raise ValueError(
                f"FORWARDED_ALLOW_IPS={self.forwarded_allow_ips!r} trusts X-Forwarded-For from any address, so "
                "every client chooses its own rate-limit identity: list your load balancer's address or subnet "
                "(for example 10.0.0.0/16) instead"
            )
        return self

    @property
    def trusts_every_forwarder(self) -> bool:
        """FORWARDED_ALLOW_IPS lets any peer set the client address ("*", 0.0.0.0/0 or ::/0)."""
        return any(_matches_every_address(entry.strip()) for entry in self.forwarded_allow_ips.split(","))

    @property
    def api_docs_enabled(self) -> bool:
        if self.docs_enabled is None:
            return self.app_env != "production"
        return self.docs_enabled

    @property
    def introspection_enabled(self) -> bool:
        if self.graphql_introspection is None:
            return self.app_env != "production"
        return self.graphql_introspection

    @property
    def graphiql_enabled(self) -> bool:
        return self.introspection_enabled if self.graphiql is None else self.graphiql

    @property
    def better_auth_origin(self) -> str:
        parts = urlsplit(self.better_auth_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def jwks_url(self) -> str:
        return self.better_auth_jwks_url or self.better_auth_url.rstrip("/") + "/api/auth/jwks"


def _matches_every_address(entry: str) -> bool:
    if entry == "*":
        return True
    try:
        return ipaddress.ip_network(entry, strict=False).prefixlen == 0
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    """The process's settings. An invalid configuration ends the process with one line saying what to fix."""
    try:
        return Settings()
    except ValidationError as invalid:
        raise SystemExit(f"Configuration error: {configuration_errors(invalid)}") from None


def configuration_errors(invalid: ValidationError) -> str:
    """`RATE_LIMIT: ...; DATABASE_URL: ...` in the environment's names."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']).upper() or 'settings'}: "
        f"{str(error['msg']).removeprefix('Value error, ')}"
        for error in invalid.errors()
    )
