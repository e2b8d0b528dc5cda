"""A real uvicorn server on a free port, for tests that need a browser or several worker processes."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from backend.config import Settings
from backend.tests.factories import TEST_SECRET

STARTUP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(workdir: Path, **overrides: str) -> dict[str, str]:
    """The caller's environment without any app setting, plus a throwaway SQLite database."""
    settings_names = {name.upper() for name in Settings.model_fields}
    environment = {name: value for name, value in os.environ.items() if name not in settings_names}
    return {
        **environment,
        "APP_ENV": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/live.db",
        "BETTER_AUTH_SECRET": TEST_SECRET,
        "RATE_LIMIT": "100000/minute",
        **overrides,
    }


@contextmanager
def live_server(
    workdir: Path, *, workers: int = 1, app: str = "backend.main:app", cwd: Path | None = None, **environment: str
) -> Iterator[str]:
    """Serve `app` until the block ends; yields the base URL.

    Runs in `cwd` (default `workdir`, which has no .env); the log and the SQLite database live in `workdir`.
    """
    port = free_port()
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--no-access-log"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd or workdir, env=server_environment(workdir, **environment), stdout=log, stderr=log
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {STARTUP_SECONDS} s:\n{log_path.read_text()}")
