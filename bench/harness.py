"""The pieces every benchmark run shares: settings, scratch database, tokens, servers, HTTP calls."""

import asyncio
import http.client
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench import proc
from bench.seed import DataSet, reset, seed
from bench.wrk import Request

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

LIST_PATH = "/api/tasks?limit=20&sort=created&order=desc"
GRAPHQL_QUERY = "{ tasks(limit: 20) { items { id title completed createdAt } } }"
CREATE_BODY = {
    "title": "Write the benchmark report",
    "description": "Per core, against the peer",
    "priority": "high",
    "tags": ["bench", "perf"],
    "due_date": "2026-12-31T17:00:00Z",
}
REST_LIST = Request("GET", LIST_PATH)
GRAPHQL_LIST = Request("POST", "/graphql", body=json.dumps({"query": GRAPHQL_QUERY}), graphql=True)
REST_CREATE = Request("POST", "/api/tasks", body=json.dumps(CREATE_BODY))


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_names(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


CEILING_VARIANTS = ("bare", "fastapi")


def _ceilings(value: str) -> tuple[str, ...]:
    if value.strip() in ("", "0"):
        return ()
    if value.strip() == "1":
        return CEILING_VARIANTS
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in CEILING_VARIANTS]
    if unknown:
        raise SystemExit(f"BENCH_CEILING: unknown {unknown}; use 1, 0 or some of {', '.join(CEILING_VARIANTS)}")
    return names


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run can vary, from BENCH_* environment variables."""

    duration: float = field(default_factory=lambda: _env_float("BENCH_DURATION", 12))
    warmup: float = field(default_factory=lambda: _env_float("BENCH_WARMUP", 3))
    connections: int = field(default_factory=lambda: _env_int("BENCH_CONNECTIONS", 64))
    stress_connections: int = field(default_factory=lambda: _env_int("BENCH_STRESS_CONNECTIONS", 1000))
    timeout: float = field(default_factory=lambda: _env_float("BENCH_TIMEOUT", 10))
    threads: int = field(default_factory=lambda: _env_int("BENCH_THREADS", 1))
    workers: tuple[int, ...] = field(
        default_factory=lambda: tuple(int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",") if n.strip())
    )
    rate_limit: str = field(default_factory=lambda: os.environ.get("BENCH_RATE_LIMIT", "1000000/minute"))
    # Redis for the case that counts the rate limit there (empty: a throwaway redis-server); the other cases count
    # in the worker's memory.
    redis_url: str = field(default_factory=lambda: os.environ.get("BENCH_REDIS_URL", ""))
    # Only the cases named here, comma-separated (empty: all, with the sequential and SQL probes).
    cases: tuple[str, ...] = field(default_factory=lambda: _env_names("BENCH_CASES"))
    probe_requests: int = field(default_factory=lambda: _env_int("BENCH_PROBE_REQUESTS", 300))
    # The "new users" scenario: this many brand-new users at once, each running bench/users.py's flow.
    new_users: int = field(default_factory=lambda: _env_int("BENCH_NEW_USERS", 1000))
    # Its per-request timeout: above the app's own 10 s database limits, so that the app's 503 is what gets seen.
    new_users_timeout: float = field(default_factory=lambda: _env_float("BENCH_NEW_USERS_TIMEOUT", 30))
    # Sequential requests per search probe (after 20 unmeasured ones).
    search_requests: int = field(default_factory=lambda: _env_int("BENCH_SEARCH_REQUESTS", 100))
    users: int = field(default_factory=lambda: _env_int("BENCH_USERS", 1000))
    tasks_per_user: int = field(default_factory=lambda: _env_int("BENCH_TASKS_PER_USER", 50))
    big_user_tasks: int = field(default_factory=lambda: _env_int("BENCH_BIG_USER_TASKS", 100_000))
    admin_url: str = field(
        default_factory=lambda: os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    # The ASGI app under test; another import string (PYTHONPATH is passed on) compares a variant.
    app: str = field(default_factory=lambda: os.environ.get("BENCH_APP", "backend.main:app"))
    # The ceiling apps in the run: "bare" (bench/ceiling.py), "fastapi" (bench/ceiling_fastapi.py); 1: both, 0: none.
    ceilings: tuple[str, ...] = field(default_factory=lambda: _ceilings(os.environ.get("BENCH_CEILING", "1")))
    repeat: int = field(default_factory=lambda: _env_int("BENCH_REPEAT", 1))  # best of N runs per case
    # Before each case, wait (up to quiet_wait s) until other work uses at most quiet_cores CPUs.
    quiet_cores: float = field(default_factory=lambda: _env_float("BENCH_QUIET_CORES", 0.5))
    quiet_wait: float = field(default_factory=lambda: _env_float("BENCH_QUIET_WAIT", 60))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "admin_url"}

    def selects(self, case: str) -> bool:
        return not self.cases or case in self.cases


@dataclass
class BenchEnv:
    """A seeded scratch database, tokens for its users, and where results go."""

    settings: BenchSettings
    dsn: str  # asyncpg form
    database_url: str  # the app's form
    secret: str
    data: DataSet
    tokens_file: Path  # one token per small user, in user order: requests rotate through them
    small_token: str
    big_token: str
    results_dir: Path
    app_env: dict[str, str]


def raise_open_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate_schema(database_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from backend.database_url import normalize_database_url
    from backend.db import migrate_to_head

    engine = create_async_engine(normalize_database_url(database_url))
    try:
        await migrate_to_head(engine)
    finally:
        await engine.dispose()


@contextmanager
def bench_environment(settings: BenchSettings, results_dir: Path) -> Iterator[BenchEnv]:
    """Create and seed a uniquely named database, mint tokens; drop the database afterwards."""
    name = f"todo_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dsn = _with_database(settings.admin_url, name)
    database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    secret = secrets.token_urlsafe(48)  # a real 64-character secret, new every run
    app_env = {
        "APP_ENV": "production",
        "BETTER_AUTH_SECRET": secret,
        "DATABASE_URL": database_url,
        "RATE_LIMIT": settings.rate_limit,  # rate limiting stays on, with a budget the load never exhausts
        "REDIS_URL": "",  # counted in memory; the Redis case sets its own
    }
    # The app's modules read their settings at import: import them only once this is set.
    os.environ.update(app_env)
    asyncio.run(_admin(settings.admin_url, f'CREATE DATABASE "{name}"'))
    try:
        from backend.config import get_settings
        from backend.dev_token import mint_dev_token

        app_settings = get_settings()
        asyncio.run(_migrate_schema(database_url))
        print(
            f"seeding {name}: {settings.users} users x {settings.tasks_per_user} tasks + 1 x {settings.big_user_tasks}"
        )
        data = asyncio.run(
            seed(
                dsn,
                user_table=app_settings.user_table,
                users=settings.users,
                tasks_per_user=settings.tasks_per_user,
                big_user_tasks=settings.big_user_tasks,
            )
        )
        print(f"seeded in {data.seconds:.1f} s")
        tokens = [mint_dev_token(app_settings, user_id) for user_id in data.small_user_ids]
        tokens_file = results_dir / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        yield BenchEnv(
            settings=settings,
            dsn=dsn,
            database_url=database_url,
            secret=secret,
            data=data,
            tokens_file=tokens_file,
            small_token=tokens[0],
            big_token=mint_dev_token(app_settings, data.big_user_id),
            results_dir=results_dir,
            app_env=app_env,
        )
    finally:
        asyncio.run(_admin(settings.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        print(f"dropped {name}")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def redis_for_bench(settings: BenchSettings) -> Iterator[str | None]:
    """BENCH_REDIS_URL, else a redis-server of our own on a spare port (None when none is installed)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="todo-bench-redis-") as directory:
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen([*command, "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _listening(port):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"redis-server did not listen on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


def busy_cores(seconds: float = 2.0) -> float:
    """CPUs in use on the whole machine over a short window (our servers idle: other work)."""
    before = proc.machine_cpu()
    time.sleep(seconds)
    after = proc.machine_cpu()
    return (after.busy - before.busy) / seconds


def wait_for_quiet(settings: BenchSettings) -> float:
    """Wait until other work leaves the CPUs alone (or give up); returns the load seen last."""
    deadline = time.monotonic() + settings.quiet_wait
    cores = busy_cores()
    while cores > settings.quiet_cores and time.monotonic() < deadline:
        print(f"  waiting for a quieter machine: other work uses {cores:.2f} cores")
        cores = busy_cores(5.0)
    return round(cores, 2)


def reset_data(env: BenchEnv) -> None:
    asyncio.run(reset(env.dsn, env.data))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_call(
    port: int, method: str, path: str, token: str, body: str = "", *, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        if body:
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class Server:
    """One uvicorn serving `app` with production flags; stopped (with its workers) on exit."""

    def __init__(self, name: str, app: str, workers: int, env: BenchEnv, extra_env: dict[str, str]) -> None:
        self.name = name
        self.app = app
        self.workers = workers
        self.port = free_port()
        self.log_path = env.results_dir / f"server-{name}.log"
        self._env = {**os.environ, **env.app_env, **extra_env}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def worker_pids(self) -> list[int]:
        return proc.uvicorn_workers(self.pid)

    def start(self, token: str) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--workers={self.workers}",
            "--loop=uvloop",
            "--http=httptools",
            "--no-server-header",
            "--no-proxy-headers",  # the app applies them itself
            "--no-access-log",
            "--log-level=warning",
            "--lifespan=on",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, cwd=REPO, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}; see {self.log_path}")
            try:
                status, _, _ = http_call(self.port, "GET", LIST_PATH, token, timeout=5)
                if status == 200 and len(self.worker_pids()) == self.workers:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within 60 s; see {self.log_path}")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        os.killpg(self._process.pid, signal.SIGTERM)  # our own session: uvicorn and its workers
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


@contextmanager
def running(server: Server, token: str) -> Iterator[Server]:
    try:
        server.start(token)
        yield server
    finally:
        server.stop()


async def _backends(dsn: str) -> tuple[list[int], int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        sessions = await connection.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows], int(sessions or 0)


def postgres_backends(env: BenchEnv) -> tuple[list[int], int]:
    """The server processes behind the pool's connections, and how many sessions the database has had.

    Sessions that start during a case mean the pool opened connections under load (and closed
    others): each costs a connect, authentication and asyncpg's setup.
    """
    return asyncio.run(_backends(env.dsn))
