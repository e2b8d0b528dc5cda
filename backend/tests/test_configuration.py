"""Start-up configuration: one clear line for a bad setting; the same .env and SQLite file from any directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from backend.config import PROJECT_ROOT, Settings
from backend.database_url import anchored_sqlite_url
from backend.tests.external_servers import APP_SETTING_NAMES

BAD_SETTINGS = {
    "a malformed rate limit": ({"RATE_LIMIT": "abc"}, "Configuration error: RATE_LIMIT: couldn't parse"),
    "an unsupported database": ({"DATABASE_URL": "mysql://db/todo"}, "Configuration error: DATABASE_URL: unsupported"),
    "no secret in production": ({"APP_ENV": "production"}, "BETTER_AUTH_SECRET is required outside development"),
    "a wrong type": ({"DB_POOL_SIZE": "many"}, "Configuration error: DB_POOL_SIZE:"),
}


def clean_environment(**settings: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name not in APP_SETTING_NAMES}
    return {**inherited, **settings}


@pytest.mark.parametrize("case", BAD_SETTINGS)
@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-c", "import backend.main"], id="import"),
        pytest.param([sys.executable, "-m", "uvicorn", "main:app", "--port", "0"], id="cd backend && uvicorn"),
    ],
)
def test_a_bad_setting_is_one_clear_line(case: str, command: list[str]) -> None:
    settings, expected = BAD_SETTINGS[case]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT / "backend",
        env=clean_environment(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_the_settings_come_from_the_repository_wherever_the_process_starts() -> None:
    """`make run` starts in the repository, the seed's `cd backend && uvicorn main:app` in backend/."""
    program = "from backend.config import get_settings; print(get_settings().database_url)"
    urls = {
        subprocess.run(
            [sys.executable, "-c", program],
            cwd=cwd,
            env=clean_environment(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for cwd in (PROJECT_ROOT, PROJECT_ROOT / "backend")
    }
    assert len(urls) == 1  # one database file, whichever the directory
    assert Settings.model_config.get("env_file") == PROJECT_ROOT / ".env"  # and one .env


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///./todo.db", "/repo/todo.db"),
        ("sqlite+aiosqlite:///data/todo.db", "/repo/data/todo.db"),
        ("sqlite+aiosqlite:////var/lib/todo.db", "/var/lib/todo.db"),
        ("sqlite+aiosqlite:///:memory:", ":memory:"),
    ],
)
def test_relative_sqlite_paths_are_anchored_at_the_repository(url: str, expected: str) -> None:
    assert make_url(anchored_sqlite_url(url, Path("/repo"))).database == expected
    assert anchored_sqlite_url("postgresql://db/todo", Path("/repo")) == "postgresql://db/todo"
