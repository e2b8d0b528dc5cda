"""DATABASE_URL as providers hand it out (Neon, Heroku-style, libpq query parameters) -> the async drivers'."""

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, make_url

if TYPE_CHECKING:  # config validates DATABASE_URL with this module
    from backend.config import Settings

# Query parameters that libpq/Neon URLs carry and asyncpg does not take as-is.
_SSL_PARAMS = ("sslmode", "ssl")
_DROPPED_PARAMS = ("channel_binding", "pgbouncer", "connect_timeout")
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_ALIASES = {"true": "require", "1": "require", "false": "disable", "0": "disable"}


def anchored_sqlite_url(raw_url: str, root: Path) -> str:
    """A relative SQLite path taken from `root`, not from wherever the process started."""
    url = make_url(raw_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return raw_url
    path = Path(url.database)
    return raw_url if path.is_absolute() else url.set(database=str(root / path)).render_as_string(False)


def normalize_database_url(raw_url: str) -> URL:
    """Accept what Neon and Heroku-style providers hand out and point it at an async driver."""
    url = make_url(raw_url)
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise ValueError(f"DATABASE_URL: unsupported driver {url.drivername!r} (use postgresql:// or sqlite://)")
    if url.drivername == "postgresql+asyncpg":
        unknown = set(url.query) - {*_SSL_PARAMS, *_DROPPED_PARAMS, "application_name"}
        if unknown:
            raise ValueError(f"DATABASE_URL: unsupported query parameter(s) {sorted(unknown)}")
        ssl_mode(raw_url)  # refuse a bad sslmode at start-up, not at the first connection
        url = url.difference_update_query([*_SSL_PARAMS, *_DROPPED_PARAMS, "application_name"])
    return url


def ssl_mode(raw_url: str) -> str | None:
    """libpq's sslmode (or Heroku-style ssl=true) as asyncpg's `ssl` argument; None when not given."""
    query = make_url(raw_url).query
    raw = query.get("sslmode") or query.get("ssl")
    if not raw:
        return None
    value = (raw if isinstance(raw, str) else raw[-1]).lower()
    value = _SSL_ALIASES.get(value, value)
    if value not in _SSL_MODES:
        raise ValueError(f"DATABASE_URL: unsupported sslmode {value!r} (use one of {', '.join(_SSL_MODES)})")
    return value


def is_pgbouncer(raw_url: str, settings: "Settings") -> bool:
    """Does the URL (or DB_PGBOUNCER) announce a transaction pooler? `create_engine` also detects one."""
    if settings.db_pgbouncer is not None:
        return settings.db_pgbouncer
    url = make_url(raw_url)
    return "-pooler" in (url.host or "") or url.port == 6432 or url.query.get("pgbouncer") == "true"
