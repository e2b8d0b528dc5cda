"""DATABASE_URL as Neon and other providers hand it out, PgBouncer detection, pool settings."""

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from backend.config import Settings
from backend.database_url import is_pgbouncer, normalize_database_url
from backend.db import AUTOCOMMIT_READS, _postgres_connect_args, create_engine
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings

NEON_POOLED = (
    "postgresql://alex:secret@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)
NEON_DIRECT = NEON_POOLED.replace("-pooler", "")


def test_neon_pooled_url_is_normalised_for_asyncpg() -> None:
    url = normalize_database_url(NEON_POOLED)
    assert url.drivername == "postgresql+asyncpg"
    assert dict(url.query) == {}
    assert (url.host, url.database, url.username, url.password) == (
        "ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech",
        "neondb",
        "alex",
        "secret",
    )


def test_neon_pooled_url_turns_on_pgbouncer_mode() -> None:
    args = _postgres_connect_args(make_settings(NEON_POOLED))
    assert args["ssl"] == "require"
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_cache_size"] == 0
    names = {args["prepared_statement_name_func"]() for _ in range(100)}
    assert len(names) == 100
    # PgBouncer refuses unknown startup parameters.
    assert "statement_timeout" not in args["server_settings"]


def test_neon_direct_url_keeps_prepared_statements_and_server_timeout() -> None:
    args = _postgres_connect_args(make_settings(NEON_DIRECT))
    assert "statement_cache_size" not in args
    assert args["server_settings"]["statement_timeout"] == "10000"
    assert args["timeout"] == 5.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (NEON_POOLED, True),
        (NEON_DIRECT, False),
        ("postgresql://u@db.example.com:6432/app", True),
        ("postgresql://u@db.example.com/app?pgbouncer=true", True),
        ("postgres://u@db.example.com:5432/app", False),
    ],
)
def test_pgbouncer_mode_is_detected_from_the_url(url: str, expected: bool) -> None:
    assert is_pgbouncer(url, make_settings(url)) is expected


@pytest.mark.parametrize("override", [True, False])
def test_db_pgbouncer_overrides_detection(override: bool) -> None:
    assert is_pgbouncer(NEON_DIRECT, make_settings(NEON_DIRECT, db_pgbouncer=override)) is override


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sslmode=verify-full", "verify-full"),
        ("sslmode=disable", "disable"),
        ("ssl=true", "require"),
        ("sslmode=REQUIRE&channel_binding=disable", "require"),
    ],
)
def test_ssl_modes(query: str, expected: str) -> None:
    url = f"postgresql://u@db.example.com/app?{query}"
    assert _postgres_connect_args(make_settings(url))["ssl"] == expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("sslmode=sometimes", "unsupported sslmode 'sometimes'"),
        ("options=endpoint%3Dx", r"unsupported query parameter\(s\) \['options'\]"),
        ("target_session_attrs=any", r"unsupported query parameter\(s\) \['target_session_attrs'\]"),
    ],
)
def test_unsupported_url_parameters_are_refused_by_the_settings(query: str, reason: str) -> None:
    # Refused while the settings load, before any engine exists: start-up stops with the reason.
    with pytest.raises(ValidationError, match=f"database_url(.|\n)*{reason}"):
        make_settings(f"postgresql://u@db.example.com/app?{query}")


def test_pool_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", NEON_POOLED)
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "3")
    monkeypatch.setenv("BETTER_AUTH_SECRET", "x" * 32)
    engine = create_engine(Settings(_env_file=None))
    pool = engine.pool
    assert (pool.size(), pool._max_overflow) == (7, 3)  # type: ignore[attr-defined]
    # Neon suspends an idle compute after 300 s; a pooled connection must not outlive that.
    assert 0 < pool._recycle < 300
    # Dead pooled connections are replaced at checkout: test_database_restarted_while_idle.


async def test_libpq_style_parameters_connect_for_real() -> None:
    url = await create_scratch_database("todo_url")
    try:
        engine = create_engine(make_settings(f"{url}?sslmode=prefer&channel_binding=disable&application_name=todo-x"))
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW application_name")) == "todo-x"
        await engine.dispose()
    finally:
        await drop_scratch_database(url)


async def test_a_direct_server_is_not_mistaken_for_a_pooler(caplog: pytest.LogCaptureFixture) -> None:
    """No hint in the URL: the first connection checks for a pooler and finds the timeout applied."""
    url = await create_scratch_database("todo_direct")
    try:
        engine = create_engine(make_settings(url, db_pgbouncer=None))
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW statement_timeout")) == "10s"
        assert engine.get_execution_options()[AUTOCOMMIT_READS] is True
        await engine.dispose()
    finally:
        await drop_scratch_database(url)
    assert "transaction pooler" not in caplog.text
