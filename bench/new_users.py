""" "A thousand new users at once": brand-new users arrive together, each running a short flow.

BENCH_NEW_USERS users (1000) the app has never seen (fresh ids, fresh tokens, no user rows) start
at the same moment against 2 uvicorn workers on PostgreSQL; each runs bench/users.py's flow (4
creates, 2 REST lists, a GraphQL list of up to 100, a complete per task, a delete) on its own
connection. The load generator runs in a process of its own. Measured: requests, wall time, req/s,
errors by status, latency percentiles (overall, per operation, connects), the workers' and
PostgreSQL's CPU per request, the generator's CPU, peak database connections and what the backends
were doing (sampled every 0.1 s), each worker's RSS after, and what the server logged meanwhile.
"""

import asyncio
import json
import os
import re
import secrets
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import asyncpg

from bench import proc
from bench.harness import (
    CREATE_BODY,
    GRAPHQL_LIST,
    REPO,
    REST_CREATE,
    REST_LIST,
    BenchEnv,
    Server,
    reset_data,
    running,
    wait_for_quiet,
)
from bench.measure import check_responses, children_cpu, wait_until_idle
from bench.seed import forget_users
from bench.users import REQUESTS_PER_FLOW, latency_summary
from bench.wrk import run_wrk

NEW_USERS_CASE = "new users"
NEW_USERS_WORKERS = 2
MONITOR_INTERVAL = 0.1
LOG_SAMPLES = 8

# Runs around the load generator with the workers' pids (the profile attaches py-spy here).
During = Callable[[list[int]], AbstractContextManager[None]]


def fresh_users(count: int) -> tuple[list[str], list[str]]:
    """Ids nobody has used (not from the seed's generator) and a token for each."""
    from backend.config import get_settings
    from backend.dev_token import mint_dev_token

    alphabet = string.ascii_letters + string.digits
    user_ids = ["".join(secrets.choice(alphabet) for _ in range(32)) for _ in range(count)]
    settings = get_settings()
    return user_ids, [mint_dev_token(settings, user_id) for user_id in user_ids]


def _user_table() -> str:
    from backend.config import get_settings

    return get_settings().user_table


class ScenarioMonitor:
    """Samples, on a thread of its own, the database's backends (how many, what they are doing) and
    each worker's open file descriptors (how the clients' connections spread over the workers)."""

    def __init__(self, dsn: str, workers: list[int]) -> None:
        self._dsn = dsn
        self._workers = workers
        self.open_files_before = [_open_files(pid) for pid in workers]
        self.peak_open_files = list(self.open_files_before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-monitor", daemon=True)
        self.samples = 0
        self.peak_connections = 0
        self.peak_active = 0
        self.states: Counter[str] = Counter()
        self.pids: set[int] = set()
        self.error = ""

    def __enter__(self) -> "ScenarioMonitor":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._sample_until_stopped())
        except (OSError, asyncpg.PostgresError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def _sample_until_stopped(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            while not self._stop.is_set():
                rows = await connection.fetch(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
                self._record(rows)
                await asyncio.sleep(MONITOR_INTERVAL)
        finally:
            await connection.close()

    def _record(self, rows: list[Any]) -> None:
        self.samples += 1
        for number, pid in enumerate(self._workers):
            self.peak_open_files[number] = max(self.peak_open_files[number], _open_files(pid))
        self.peak_connections = max(self.peak_connections, len(rows))
        self.peak_active = max(self.peak_active, sum(1 for row in rows if row["state"] == "active"))
        for row in rows:
            self.pids.add(int(row["pid"]))
            self.states[_state_label(row["state"], row["wait_event_type"], row["wait_event"])] += 1

    def mean_backends_by_state(self) -> dict[str, float]:
        samples = max(self.samples, 1)
        return {state: round(count / samples, 2) for state, count in self.states.most_common()}


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _state_label(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    if state == "active":
        return f"active, waiting on {wait_type}:{wait_event}" if wait_type else "active (running)"
    return state or "unknown"


async def _backend_pids(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [int(row["pid"]) for row in rows]


# The app's access line (text format): "... backend.access [request id] METHOD ROUTE STATUS 12.3ms user=...".
ACCESS_LINE = re.compile(
    r" backend\.access \[[^\]]*\] (?P<method>[A-Z]+) (?P<route>\S+) (?P<status>\d{3}) (?P<ms>[0-9.]+)ms"
    r" user=(?P<user>\S+)"
)
ROUTE_OPERATIONS = {
    ("POST", "/api/tasks"): "create",
    ("GET", "/api/tasks"): "list",
    ("POST", "/graphql"): "graphql",
    ("PATCH", "/api/tasks/{task_id}/complete"): "complete",
    ("DELETE", "/api/tasks/{task_id}"): "delete",
}


def _access_entry(line: str) -> tuple[str, str, int, float] | None:
    """(operation, user, status, seconds) of an access log line, text or JSON; None for any other line."""
    found = ACCESS_LINE.search(line)
    if found:
        method, route, status, ms, user = found["method"], found["route"], found["status"], found["ms"], found["user"]
    elif line.startswith("{") and '"duration_ms"' in line:
        try:
            record = json.loads(line)
            method, route, status, ms = record["method"], record["route"], record["status"], record["duration_ms"]
            user = str(record.get("user_id"))
        except (ValueError, KeyError, TypeError):
            return None
    else:
        return None
    return ROUTE_OPERATIONS.get((method, route), f"{method} {route}"), user, int(status), float(ms) / 1000


def _log_summary(text: str) -> dict[str, Any]:
    """What the server logged during the scenario: the app's own view of each request's duration
    (from its access lines, timed from when the app got the request), and the other lines."""
    lines = [line for line in text.splitlines() if line.strip()]
    durations: dict[str, list[float]] = {}
    statuses: Counter[str] = Counter()
    others: list[str] = []
    created: set[str] = set()
    for line in lines:
        entry = _access_entry(line)
        if entry is None:
            others.append(line.strip())
            continue
        operation, user, status, seconds = entry
        if operation == "create" and user not in created:
            created.add(user)  # a user's creates run one after another: the first logged is the first sent
            operation = "first create"
        durations.setdefault(operation, []).append(seconds)
        statuses[str(status)] += 1
    samples: list[str] = []
    for line in others:
        if line[:240] not in samples and len(samples) < LOG_SAMPLES:
            samples.append(line[:240])
    return {
        "lines": len(lines),
        "access_lines": len(lines) - len(others),
        "server_statuses": dict(statuses.most_common()),
        "server_latency": latency_summary([seconds for values in durations.values() for seconds in values]),
        "server_latency_by_operation": {operation: latency_summary(values) for operation, values in durations.items()},
        "other_lines": len(others),
        "warnings": sum(1 for line in others if "WARNING" in line.upper()),
        "errors": sum(1 for line in others if "ERROR" in line.upper() or "Traceback" in line),
        "samples": samples,
    }


def _run_generator(env: BenchEnv, server: Server, tokens: list[str], label: str) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "tokens": tokens,
        "create_body": json.dumps(CREATE_BODY),
        "timeout": env.settings.new_users_timeout,
    }
    spec_path = env.results_dir / f"new-users-{label}-spec.json"
    result_path = env.results_dir / f"new-users-{label}-client.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "bench.users", str(spec_path), str(result_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    spec_path.unlink()  # tokens: not kept with the results
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def run_scenario(
    env: BenchEnv,
    server: Server,
    users: int,
    *,
    label: str = "measured",
    during: During | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """One batch of `users` new users against `server`; their rows are removed afterwards."""
    user_ids, tokens = fresh_users(users)
    quiet_before = wait_for_quiet(env.settings) if quiet else 0.0
    workers = server.worker_pids()
    backends_before = asyncio.run(_backend_pids(env.dsn))
    postgres_before = {pid: proc.cpu_seconds(pid) for pid in backends_before}
    worker_before = {pid: proc.cpu_times(pid) for pid in workers}
    log_offset = server.log_path.stat().st_size
    generator_before = children_cpu()
    machine_before = proc.machine_cpu()
    load_before = proc.load_average()
    try:
        with ScenarioMonitor(env.dsn, workers) as monitor, (during or _nothing)(workers):
            started = time.monotonic()
            client = _run_generator(env, server, tokens, label)
            wall = time.monotonic() - started
        machine_busy = proc.machine_cpu().busy - machine_before.busy
        generator_cpu = children_cpu() - generator_before
        worker_after = {pid: proc.cpu_times(pid) for pid in workers}
        seen = monitor.pids | set(backends_before)
        # A backend first seen during the scenario was opened by it: all its CPU counts.
        postgres_cpu = sum(proc.cpu_seconds(pid) - postgres_before.get(pid, 0.0) for pid in seen)
        memory = [proc.memory_mb(pid) for pid in workers]
        with server.log_path.open("rb") as log:
            log.seek(log_offset)
            logged = log.read().decode(errors="replace")
    finally:
        wait_until_idle(server, limit=env.settings.new_users_timeout)  # a timed-out request may still be running
        asyncio.run(forget_users(env.dsn, _user_table(), user_ids))
        reset_data(env)
    worker_cpu = sum(sum(worker_after[pid]) - sum(worker_before[pid]) for pid in workers)
    worker_sys = sum(worker_after[pid][1] - worker_before[pid][1] for pid in workers)
    requests = max(int(client["requests"]), 1)
    row: dict[str, Any] = {
        "case": NEW_USERS_CASE,
        "label": label,
        "server": server.name,
        "app": server.app,
        "workers": server.workers,
        "users": users,
        "requests_per_user": REQUESTS_PER_FLOW,
        **client,
        "worker_cpu_ms_per_req": round(worker_cpu * 1000 / requests, 3),
        "worker_cpu_cores": round(worker_cpu / wall, 2) if wall else 0.0,
        "worker_cpu_s": [round(sum(worker_after[pid]) - sum(worker_before[pid]), 2) for pid in workers],
        "worker_kernel_share": round(worker_sys / worker_cpu, 2) if worker_cpu else 0.0,
        "postgres_cpu_ms_per_req": round(max(0.0, postgres_cpu) * 1000 / requests, 3),
        "generator_cpu_ms_per_req": round(generator_cpu * 1000 / requests, 3),
        "generator_cpu_cores": round(generator_cpu / wall, 2) if wall else 0.0,
        "generator_wall_s": round(wall, 2),
        "peak_db_connections": monitor.peak_connections,
        "peak_db_active": monitor.peak_active,
        "db_backends_by_state": monitor.mean_backends_by_state(),
        "db_monitor_samples": monitor.samples,
        # Open files above each worker's count before the run, at their peak: mostly client connections.
        "worker_peak_extra_open_files": [
            peak - before for peak, before in zip(monitor.peak_open_files, monitor.open_files_before, strict=True)
        ],
        "db_monitor_error": monitor.error,
        "other_cpu_cores_before": quiet_before,
        "other_cpu_cores": round(max(0.0, machine_busy - worker_cpu - postgres_cpu - generator_cpu) / wall, 2),
        "load_before": load_before,
        "load_after": proc.load_average(),
        "worker_rss_mb": [round(m["rss_mb"], 1) for m in memory],
        "worker_peak_rss_mb": [round(m["peak_rss_mb"], 1) for m in memory],
        "server_log": _log_summary(logged),
    }
    latency = row["latency"]
    print(
        f"  {NEW_USERS_CASE} ({label}) {server.name}: {users} users, {row['requests']} requests"
        f" in {row['wall_s']:.1f} s"
        f" = {row['rps']:.0f} req/s, errors {row['errors']} {row['statuses']}, p50 {latency['p50_ms']:.0f} ms"
        f" p99 {latency['p99_ms']:.0f} ms max {latency['max_ms']:.0f} ms, worker cpu {row['worker_cpu_ms_per_req']:.2f}"
        f" ms/req, pg {row['postgres_cpu_ms_per_req']:.2f} ms/req, generator {row['generator_cpu_cores']:.2f} cores,"
        f" peak db connections {row['peak_db_connections']}, rss {row['worker_rss_mb']} MiB"
    )
    return row


@contextmanager
def _nothing(_workers: list[int]) -> Iterator[None]:
    yield


def warm_up(env: BenchEnv, server: Server) -> None:
    """Warm the workers' code paths with the seeded users (never the new ones), then one new user's flow."""
    settings = env.settings
    if settings.warmup > 0:
        for request in (REST_LIST, GRAPHQL_LIST, REST_CREATE):
            run_wrk(
                server.base_url,
                request,
                env.tokens_file,
                connections=settings.connections,
                seconds=settings.warmup,
                timeout_seconds=settings.timeout,
            )
        wait_until_idle(server, limit=settings.timeout + 10)
        reset_data(env)


def check_flow(env: BenchEnv, server: Server) -> list[str]:
    """One new user's whole flow, every response a success: the scenario measures what it means to."""
    check = run_scenario(env, server, 1, label="check", quiet=False)
    if check["errors"] or check["requests"] != REQUESTS_PER_FLOW:
        problem = (
            f"{server.name} {NEW_USERS_CASE}: one user's flow gave {check['statuses']} ({check['requests']} requests)"
        )
        print(f"  CHECK FAILED {problem}")
        return [problem]
    return []


@contextmanager
def new_users_server(env: BenchEnv, results: dict[str, Any]) -> Iterator[Server]:
    """The scenario's 2-worker server, checked, warmed up, and proven by one new user's flow."""
    settings = env.settings
    server = Server(f"app-w{NEW_USERS_WORKERS}-new-users", settings.app, NEW_USERS_WORKERS, env, {})
    with running(server, env.small_token):
        print(f"{NEW_USERS_CASE}: uvicorn {settings.app} --workers {NEW_USERS_WORKERS} on {server.base_url}")
        results["problems"] += check_responses(env, server, [("REST list", REST_LIST), ("GraphQL list", GRAPHQL_LIST)])
        warm_up(env, server)
        results["problems"] += check_flow(env, server)
        yield server


def bench_new_users(env: BenchEnv, results: dict[str, Any]) -> None:
    with new_users_server(env, results) as server:
        row = run_scenario(env, server, env.settings.new_users)
    results.setdefault("new_users", []).append(row)
