"""One measured case (wrk under load, with the CPU each party spent) and the sequential probes."""

import asyncio
import functools
import http.client
import json
import math
import resource
import statistics
import time
from typing import Any

import asyncpg

from bench import proc
from bench.ceiling import COLUMNS, LIST_SQL
from bench.harness import LIST_PATH, BenchEnv, Server, http_call, postgres_backends, reset_data, wait_for_quiet
from bench.wrk import Request, run_wrk


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_idle(server: Server, *, limit: float) -> float:
    """Wait until the workers stop using CPU (requests a finished load left in flight are done); seconds waited."""
    started = time.monotonic()
    workers = server.worker_pids()
    before = sum(proc.cpu_seconds(pid) for pid in workers)
    while time.monotonic() - started < limit:
        time.sleep(0.3)
        now = sum(proc.cpu_seconds(pid) for pid in workers)
        if now - before < 0.015:  # at most one clock tick in 0.3 s
            break
        before = now
    return round(time.monotonic() - started, 1)


def measure_case(
    env: BenchEnv, server: Server, name: str, request: Request, *, connections: int, warmup: bool = True
) -> dict[str, Any]:
    """Warm up, then one wrk run; CPU per request of the workers, PostgreSQL and wrk, and load."""
    settings = env.settings
    quiet_before = wait_for_quiet(settings)  # before the warm-up, so that no idle pause follows it
    load = functools.partial(
        run_wrk,
        server.base_url,
        request,
        env.tokens_file,
        connections=connections,
        timeout_seconds=settings.timeout,
        threads=settings.threads,
    )
    idle_wait = 0.0
    if warmup and settings.warmup > 0:
        load(seconds=settings.warmup)
        # At 1000 connections the warm-up leaves requests in flight that would run inside the measured window.
        idle_wait = wait_until_idle(server, limit=settings.timeout + 10)
    workers = server.worker_pids()
    backends, sessions_before = postgres_backends(env)
    load_before = proc.load_average()
    worker_cpu = sum(proc.cpu_seconds(pid) for pid in workers)
    worker_sys = sum(proc.cpu_times(pid)[1] for pid in workers)
    postgres_cpu = sum(proc.cpu_seconds(pid) for pid in backends)
    wrk_cpu = children_cpu()
    machine = proc.machine_cpu()
    started = time.monotonic()
    result = load(seconds=settings.duration)
    wall = time.monotonic() - started
    machine_after = proc.machine_cpu()
    worker_cpu = sum(proc.cpu_seconds(pid) for pid in workers) - worker_cpu
    worker_sys = sum(proc.cpu_times(pid)[1] for pid in workers) - worker_sys
    backends_after, sessions_after = postgres_backends(env)
    # Backends that ended during the run take their CPU time with them: with sessions opened,
    # the PostgreSQL figure is a lower bound.
    new_backends = set(backends_after) - set(backends)
    postgres_cpu = sum(proc.cpu_seconds(pid) for pid in [*backends, *new_backends]) - postgres_cpu
    wrk_cpu = children_cpu() - wrk_cpu
    machine_busy = machine_after.busy - machine.busy
    memory = [proc.memory_mb(pid) for pid in workers]
    requests = max(result.requests, 1)
    errors = result.summary["errors"]
    row: dict[str, Any] = {
        "case": name,
        "server": server.name,
        "app": server.app,
        "workers": server.workers,
        "connections": connections,
        "method": request.method,
        "path": request.path,
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "rps": round(result.requests_per_second, 1),
        "p50_ms": result.latency_ms("50"),
        "p90_ms": result.latency_ms("90"),
        "p99_ms": result.latency_ms("99"),
        "max_ms": result.summary["latency_us"]["max"] / 1000,
        "non2xx": result.summary["non2xx"],
        "statuses": result.summary["statuses"],
        "graphql_errors": result.summary["graphql_errors"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"],
        "timeouts": errors["timeout"],
        "failures": result.failures,
        "idle_wait_after_warmup_s": idle_wait,
        "worker_cpu_ms_per_req": round(worker_cpu * 1000 / requests, 3),
        "worker_cpu_cores": round(worker_cpu / wall, 2),
        "worker_kernel_share": round(worker_sys / worker_cpu, 2) if worker_cpu else 0.0,  # syscalls: socket I/O
        "postgres_cpu_ms_per_req": round(max(0.0, postgres_cpu) * 1000 / requests, 3),
        "postgres_sessions_opened": sessions_after - sessions_before - 1,  # minus our own look-up
        "wrk_cpu_cores": round(wrk_cpu / wall, 2),
        # CPU that neither the app, its database backends nor wrk used: other work on the machine.
        "other_cpu_cores_before": quiet_before,
        "other_cpu_cores": round(max(0.0, machine_busy - worker_cpu - postgres_cpu - wrk_cpu) / wall, 2),
        "load_before": load_before,
        "load_after": proc.load_average(),
        "worker_rss_mb": [round(m["rss_mb"], 1) for m in memory],
        "worker_peak_rss_mb": [round(m["peak_rss_mb"], 1) for m in memory],
        "wrk_output": result.output,
    }
    print(
        f"  {name:<22} {server.name:<10} c={connections:<5} {row['rps']:>8.1f} req/s  p50 {row['p50_ms']:.1f} ms"
        f"  p99 {row['p99_ms']:.1f} ms  failures {row['failures']}  cpu {row['worker_cpu_ms_per_req']:.2f} ms/req"
        f"  pg sessions +{row['postgres_sessions_opened']}  other load {row['other_cpu_cores']:.2f} cores"
        f"  load {load_before[0]:.2f}"
    )
    return row


def best_of(
    env: BenchEnv, server: Server, name: str, request: Request, *, connections: int, reset: bool = False
) -> dict[str, Any]:
    """The case BENCH_REPEAT times (the data reset after each when it writes); the run with most req/s."""
    runs = []
    for _ in range(max(1, env.settings.repeat)):
        runs.append(measure_case(env, server, name, request, connections=connections))
        if reset:
            wait_until_idle(server, limit=env.settings.timeout + 10)  # creates still in flight would land after it
            reset_data(env)
    best = max(runs, key=lambda run: (run["failures"] == 0, run["rps"]))
    if len(runs) > 1:
        best = {**best, "all_rps": [run["rps"] for run in runs]}
    return best


def check_responses(env: BenchEnv, server: Server, cases: list[tuple[str, Request]]) -> list[str]:
    """Each case's request once, checked for the right status and shape before anything is timed."""
    problems = []
    for name, request in cases:
        status, headers, body = http_call(server.port, request.method, request.path, env.small_token, request.body)
        expected = 201 if request.method == "POST" and not request.graphql else 200
        problem = None
        if status != expected:
            problem = f"status {status} (expected {expected}): {body[:300]!r}"
        elif request.graphql:
            document = json.loads(body)
            if document.get("errors") or len(document["data"]["tasks"]["items"]) != 20:
                problem = f"unexpected GraphQL answer: {body[:300]!r}"
        elif request.method == "GET":
            if len(json.loads(body)) != 20:
                problem = "a list page without 20 items"
            elif server.name.startswith("app") and headers.get("x-total-count") != str(env.data.tasks_per_user):
                problem = f"X-Total-Count {headers.get('x-total-count')} (expected {env.data.tasks_per_user})"
        if problem:
            problems.append(f"{server.name} {name}: {problem}")
            print(f"  CHECK FAILED {server.name} {name}: {problem}")
    return problems


def check_counting_in_redis(server: Server, redis_url: str) -> list[str]:
    """The Redis case measured Redis only if the worker counted there, and never fell back to memory."""
    import redis

    from backend.rate_limit import KEY_PREFIX

    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        counters = next(iter(client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000)), None)
    problems = []
    if counters is None:
        problems.append(f"{server.name}: no rate-limit counters in Redis")
    if "rate limit storage unreachable" in server.log_path.read_text(errors="replace"):
        problems.append(f"{server.name}: the worker lost Redis during the case; see {server.log_path}")
    for problem in problems:
        print(f"  CHECK FAILED {problem}")
    return problems


def sequential(port: int, path: str, token: str, count: int) -> dict[str, Any]:
    """`count` requests one at a time on one connection (after 20 unmeasured ones): latency percentiles."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    timings = []
    statuses: dict[int, int] = {}
    total = None
    try:
        for n in range(count + 20):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            statuses[response.status] = statuses.get(response.status, 0) + 1
            total = response.getheader("x-total-count")
            if n >= 20:  # the first few warm the connection and caches
                timings.append(elapsed * 1000)
    finally:
        connection.close()
    timings.sort()
    return {
        "path": path,
        "requests": count,
        "statuses": {str(k): v for k, v in statuses.items()},
        "total_count": int(total) if total is not None and total.isdigit() else None,
        "p50_ms": round(statistics.median(timings), 3),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 3),
        "p99_ms": round(timings[max(0, math.ceil(len(timings) * 0.99) - 1)], 3),
        "max_ms": round(timings[-1], 3),
        "mean_ms": round(statistics.fmean(timings), 3),
    }


def large_user_probes(env: BenchEnv, server: Server) -> dict[str, Any]:
    """First page for the 100k-task user vs a 50-task user, a deep page, one request at a time."""
    count = env.settings.probe_requests
    deep_page = max(1, env.data.big_user_tasks // 20 * 4 // 5)  # page 4000 of 5000
    probes: dict[str, Any] = {
        "small_first_page": sequential(server.port, LIST_PATH, env.small_token, count),
        "big_first_page": sequential(server.port, LIST_PATH, env.big_token, count),
        "big_deep_page": sequential(server.port, f"{LIST_PATH}&page={deep_page}", env.big_token, max(50, count // 3)),
    }
    for name, probe in probes.items():
        print(f"  probe {name:<18} p50 {probe['p50_ms']:.2f} ms  p95 {probe['p95_ms']:.2f} ms  {probe['statuses']}")
    probes["big_vs_small_first_page"] = round(
        probes["big_first_page"]["p50_ms"] / probes["small_first_page"]["p50_ms"], 2
    )
    probes["deep_page"] = deep_page
    return probes


def plan_nodes(plan: list[str]) -> str:
    """`Limit > Index Scan Backward using ix_... on tasks`: the plan's nodes, outermost first."""
    nodes = [line.strip().removeprefix("->").strip().split("  (cost")[0] for line in plan if "(cost" in line]
    return " > ".join(nodes)


async def _sql_probes(env: BenchEnv) -> dict[str, Any]:
    """The list's statements alone in PostgreSQL: page, deep page and count, with their plans."""
    deep_offset = (max(1, env.data.big_user_tasks // 20 * 4 // 5) - 1) * 20
    count_sql = "SELECT count(*) FROM tasks WHERE user_id = $1"
    # A candidate for deep pages: find the page's ids in the index alone, then read 20 rows.
    deferred_join_sql = (
        f"SELECT {COLUMNS} FROM tasks JOIN (SELECT id FROM tasks WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3) AS page USING (id) ORDER BY created_at DESC, id DESC"
    )
    statements = {
        "small_page": (LIST_SQL, (env.data.small_user_ids[0], 20, 0)),
        "small_count": (count_sql, (env.data.small_user_ids[0],)),
        "big_page": (LIST_SQL, (env.data.big_user_id, 20, 0)),
        "big_deep_page": (LIST_SQL, (env.data.big_user_id, 20, deep_offset)),
        "big_deep_page_deferred_join": (deferred_join_sql, (env.data.big_user_id, 20, deep_offset)),
        "big_count": (count_sql, (env.data.big_user_id,)),
    }
    connection = await asyncpg.connect(env.dsn)
    results: dict[str, Any] = {}
    try:
        for name, (sql, args) in statements.items():
            prepared = await connection.prepare(sql)
            timings = []
            for n in range(35):
                started = time.perf_counter()
                await prepared.fetch(*args)
                if n >= 5:
                    timings.append((time.perf_counter() - started) * 1000)
            plan = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            plan_lines = [row[0] for row in plan]
            results[name] = {
                "median_ms": round(statistics.median(timings), 3),
                "plan_nodes": plan_nodes(plan_lines),
                "plan": plan_lines,
            }
            print(f"  sql {name:<14} median {results[name]['median_ms']:.3f} ms  {results[name]['plan_nodes'][:90]}")
    finally:
        await connection.close()
    return results


def sql_probes(env: BenchEnv) -> dict[str, Any]:
    return asyncio.run(_sql_probes(env))
