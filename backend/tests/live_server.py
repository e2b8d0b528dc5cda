"""The app served on a throwaway SQLite database, for tests that need a browser or several worker processes."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.tests.external_servers import uvicorn_server
from backend.tests.factories import TEST_SECRET


@contextmanager
def live_server(
    workdir: Path, *, workers: int = 1, app: str = "backend.main:app", cwd: Path | None = None, **environment: str
) -> Iterator[str]:
    """Serve `app` until the block ends; yields the base URL.

    Runs in `cwd` (default `workdir`, which has no .env); the log and the SQLite database live in `workdir`.
    """
    settings = {
        "APP_ENV": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/live.db",
        "BETTER_AUTH_SECRET": TEST_SECRET,
        "RATE_LIMIT": "100000/minute",
        **environment,
    }
    with uvicorn_server(settings, workers=workers, log=workdir / "server.log", app=app, cwd=cwd or workdir) as base_url:
        yield base_url
