"""External servers the tests start: throwaway PostgreSQL clusters, Redis, PgBouncer and uvicorn.

Each one runs on a spare loopback port in a temporary directory of its own and is removed
afterwards, so two test runs on one machine never meet. PostgreSQL and PgBouncer refuse to run
as root (CI runs as root), so they run as the `postgres` OS user then.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from backend.config import Settings

SERVICE_USER = "postgres"
START_TIMEOUT_SECONDS = 30.0
FIGURES: dict[str, str] = {}  # measured by the reliability tests, printed after the run


def record_figure(name: str, value: str) -> None:
    FIGURES[name] = value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def as_service_user(*command: str) -> list[str]:
    """A command that runs to its end as the service user (runuser: its environment is the user's)."""
    return ["runuser", "-u", SERVICE_USER, "--", *command] if os.geteuid() == 0 else list(command)


def service_user_process(command: list[str], **popen: Any) -> "subprocess.Popen[bytes]":
    """A long-running server started as the service user itself, so that terminate() reaches it.

    Under runuser a SIGTERM is passed on only to be followed by a 2 s wait and a SIGKILL.
    """
    if os.geteuid() == 0:
        popen.update(user=SERVICE_USER, group=SERVICE_USER, extra_groups=[])
    return subprocess.Popen(command, **popen)


@contextmanager
def service_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory the service user owns (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(directory, SERVICE_USER, SERVICE_USER)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgres_bin(program: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=lambda path: int(path.split("/")[4]))
    if candidates:
        return candidates[-1]
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's {program} is not installed")
    return found


class PostgresCluster:
    """A PostgreSQL server of its own (initdb + pg_ctl) that a test may stop, freeze and restart."""

    def __init__(self, directory: Path, **config: str) -> None:
        self.port = free_port()
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.config = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(directory), **config}
        subprocess.run(
            as_service_user(postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = " ".join([f"-p {self.port}", *(f"-c {name}={value}" for name, value in self.config.items())])
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-w", "-m", mode)

    def signal_all(self, signum: signal.Signals) -> None:
        """SIGSTOP freezes the server (connections hang instead of failing); SIGCONT thaws it."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            os.kill(pid, signum)

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            as_service_user(postgres_bin("pg_ctl"), "-D", str(self.data), *args), check=True, capture_output=True
        )


@contextmanager
def postgres_cluster(**config: str) -> Iterator[PostgresCluster]:
    with service_directory("todo-pg-") as directory:
        cluster = PostgresCluster(directory, **config)
        cluster.start()
        try:
            yield cluster
        finally:
            if (cluster.data / "postmaster.pid").exists():
                cluster.signal_all(signal.SIGCONT)
                cluster.stop("immediate")


class RedisServer:
    """redis-server on a spare port, keeping nothing on disk; a test may kill and restart it."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(self.directory)], stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="todo-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@contextmanager
def pgbouncer(server_host: str, server_port: int, **config: str) -> Iterator[int]:
    """PgBouncer in transaction pool mode (Neon's "-pooler" endpoints behave so); yields its port.

    Apart from `config` and the client limit, its settings are the packaged defaults: it refuses
    startup parameters it does not know (no `ignore_startup_parameters`).
    """
    if shutil.which("pgbouncer") is None:
        raise FileNotFoundError("pgbouncer is not installed: `apt-get install pgbouncer` (.ci/run does)")
    with service_directory("todo-pgbouncer-") as directory:
        port = free_port()
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(directory / "users.txt"),
            "pool_mode": "transaction",
            "max_client_conn": "2000",
            "default_pool_size": "10",
            "logfile": str(directory / "pgbouncer.log"),
            **config,
        }
        (directory / "users.txt").write_text('"postgres" ""\n')
        ini = "\n".join(
            ["[databases]", f"* = host={server_host} port={server_port}", "[pgbouncer]"]
            + [f"{name} = {value}" for name, value in settings.items()]
        )
        (directory / "pgbouncer.ini").write_text(ini + "\n")
        process = service_user_process(["pgbouncer", "-q", str(directory / "pgbouncer.ini")], stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)


APP_SETTING_NAMES = frozenset(name.upper() for name in Settings.model_fields)


@contextmanager
def uvicorn_server(
    env: Mapping[str, str],
    *,
    workers: int = 1,
    log: Path | None = None,
    app: str = "backend.main:app",
    cwd: Path | None = None,
) -> Iterator[str]:
    """The app under uvicorn as it is deployed (its own process, --no-server-header); yields its base URL.

    The app's settings come from `env` alone: none is inherited from the caller's environment.
    """
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--no-server-header", "--no-access-log", "--log-level", "warning"]
    inherited = {name: value for name, value in os.environ.items() if name not in APP_SETTING_NAMES}
    output = log.open("wb") if log else None
    process = subprocess.Popen(command, cwd=cwd, env={**inherited, **env}, stdout=output, stderr=output)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(base_url, process, log)
        yield base_url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if output:
            output.close()


def _wait_until_serving(base_url: str, process: subprocess.Popen[bytes], log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{log.read_text() if log else ''}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"uvicorn did not serve {base_url} within {START_TIMEOUT_SECONDS} s")


def asgi_client(
    app: FastAPI, *, client_ip: str = "203.0.113.7", headers: Mapping[str, str] | None = None
) -> httpx.AsyncClient:
    """An in-process client whose requests come from `client_ip`."""
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers)


@asynccontextmanager
async def serving(
    app: FastAPI, *, client_ip: str = "203.0.113.7", headers: Mapping[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (its own engine: real commits) and talk to it in-process."""
    async with app.router.lifespan_context(app), asgi_client(app, client_ip=client_ip, headers=headers) as client:
        yield client
