"""`make bench`: seed a scratch database, load the app (1 and 2 workers) and the ceiling apps with wrk.

Also the search probes and the "new users" scenario (bench/search.py, bench/new_users.py).

    python -m bench.run                     # measure; prints the tables, writes bench/results/<run>/
    python -m bench.run --profile           # py-spy profiles of the hot paths under load (make bench-profile)
    python -m bench.run --render FILE.json  # the markdown tables of an earlier run, for docs/benchmarks.md

Settings come from BENCH_* environment variables (see bench/harness.py: BenchSettings).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import proc, report
from bench.harness import (
    GRAPHQL_LIST,
    REST_CREATE,
    REST_LIST,
    RESULTS,
    BenchEnv,
    BenchSettings,
    Server,
    bench_environment,
    raise_open_file_limit,
    redis_for_bench,
    reset_data,
    running,
)
from bench.measure import best_of, check_counting_in_redis, check_responses, large_user_probes, sql_probes
from bench.new_users import NEW_USERS_CASE, bench_new_users
from bench.search import SEARCH_CASE, bench_search
from bench.wrk import Request, ensure_wrk

PACKAGES: tuple[str, ...] = ("fastapi", "starlette", "strawberry-graphql", "graphql-core", "sqlalchemy", "sqlmodel")
PACKAGES += ("asyncpg", "pydantic", "uvicorn", "uvloop", "httptools", "pyjwt", "orjson", "limits", "redis")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_kib / 1024 / 1024, "kernel": platform.release()}


def versions(env: BenchEnv) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "-"
    server = subprocess.run(
        ["psql", env.dsn, "-Atc", "SHOW server_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    found["postgresql"] = server.split()[0] if server else "?"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout + wrk.stderr).split()[1] if (wrk.stdout + wrk.stderr).split() else "?"
    return found


APP_CASES: list[tuple[str, Request]] = [
    ("REST list", REST_LIST),
    ("GraphQL list", GRAPHQL_LIST),
    ("REST create", REST_CREATE),
]
CEILING_CASES: list[tuple[str, Request]] = [("REST list", REST_LIST), ("REST create", REST_CREATE)]


REDIS_CASE = "REST list (Redis)"


def app_cases(settings: BenchSettings) -> list[tuple[str, Request, int]]:
    """Each hot path at BENCH_CONNECTIONS and at BENCH_STRESS_CONNECTIONS (its tail latency)."""
    stress = settings.stress_connections
    return [
        ("REST list", REST_LIST, settings.connections),
        ("GraphQL list", GRAPHQL_LIST, settings.connections),
        (f"REST list @{stress}", REST_LIST, stress),
        (f"GraphQL list @{stress}", GRAPHQL_LIST, stress),
        ("REST create", REST_CREATE, settings.connections),
        (f"REST create @{stress}", REST_CREATE, stress),
    ]


def bench_app(env: BenchEnv, workers: int, results: dict[str, Any]) -> None:
    settings = env.settings
    cases = [case for case in app_cases(settings) if settings.selects(case[0])]
    if not cases:
        return
    server = Server(f"app-w{workers}", settings.app, workers, env, {})
    with running(server, env.small_token):
        print(f"{server.name}: uvicorn {settings.app} --workers {workers} on {server.base_url}")
        results["problems"] += check_responses(env, server, APP_CASES)
        reset_data(env)
        for name, request, connections in cases:
            reset = request.method == "POST"
            results["cases"].append(best_of(env, server, name, request, connections=connections, reset=reset))
        if workers == 1 and not settings.cases:
            results["probes"] = large_user_probes(env, server)


def bench_rate_limit_in_redis(env: BenchEnv, results: dict[str, Any]) -> None:
    """The REST list on one worker again, its rate limit counted in Redis instead of the worker's memory."""
    settings = env.settings
    with redis_for_bench(settings) as redis_url:
        if redis_url is None:
            print(f"{REDIS_CASE}: skipped, no redis-server installed and no BENCH_REDIS_URL")
            return
        server = Server("app-w1-redis", settings.app, 1, env, {"REDIS_URL": redis_url})
        with running(server, env.small_token):
            print(f"{REDIS_CASE}: uvicorn {settings.app} --workers 1 on {server.base_url}, REDIS_URL={redis_url}")
            results["problems"] += check_responses(env, server, [(REDIS_CASE, REST_LIST)])
            case = best_of(env, server, REDIS_CASE, REST_LIST, connections=settings.connections)
            results["cases"].append(case)
            results["problems"] += check_counting_in_redis(server, redis_url)


CEILING_APPS = {"bare": ("ceiling", "bench.ceiling:app"), "fastapi": ("ceiling-fastapi", "bench.ceiling_fastapi:app")}


def bench_ceiling(env: BenchEnv, variant: str, results: dict[str, Any]) -> None:
    """A ceiling app (bare ASGI, or the same work in FastAPI) with the list and create cases."""
    settings = env.settings
    cases = [case for case in CEILING_CASES if settings.selects(case[0])]
    if not cases:
        return
    from backend.config import get_settings

    app_settings = get_settings()
    pool_size = app_settings.db_pool_size + app_settings.db_max_overflow  # as many connections as the app may open
    extra = {"CEILING_DSN": env.dsn, "CEILING_POOL_SIZE": str(pool_size)}
    name, app = CEILING_APPS[variant]
    server = Server(name, app, 1, env, extra)
    with running(server, env.small_token):
        print(f"{name}: uvicorn {app} --workers 1 on {server.base_url} (asyncpg pool of {pool_size})")
        results["problems"] += check_responses(env, server, cases)
        reset_data(env)
        for case, request in cases:
            reset = request.method == "POST"
            results["cases"].append(best_of(env, server, case, request, connections=settings.connections, reset=reset))


def measure(settings: BenchSettings, results_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"cases": [], "problems": []}
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "settings": settings.as_dict(),
        "load_before": proc.load_average(),
    }
    with bench_environment(settings, results_dir) as env:
        meta["versions"] = versions(env)
        meta["seed_seconds"] = round(env.data.seconds, 1)
        for workers in settings.workers:
            bench_app(env, workers, results)
        if settings.selects(REDIS_CASE):
            bench_rate_limit_in_redis(env, results)
        if settings.selects(SEARCH_CASE):
            bench_search(env, results)
        if settings.selects(NEW_USERS_CASE):
            bench_new_users(env, results)
        for variant in settings.ceilings:
            bench_ceiling(env, variant, results)
        if not settings.cases:
            results["sql"] = sql_probes(env)
    meta["load_after"] = proc.load_average()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    return {"meta": meta, **results}


def _new_results_dir() -> Path:
    results_dir = RESULTS / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true", help="record py-spy profiles instead of measuring")
    parser.add_argument("--render", type=Path, help="print the markdown of an earlier results.json")
    args = parser.parse_args(argv)
    if args.render:
        print(report.render(json.loads(args.render.read_text())), end="")
        return 0
    ensure_wrk()
    open_files = raise_open_file_limit()
    settings = BenchSettings()
    if open_files < settings.stress_connections + 100:
        print(f"warning: only {open_files} open files allowed; the 1000-connection case may fail", file=sys.stderr)
    results_dir = _new_results_dir()
    if args.profile:
        from bench.profile import profile

        profile(settings, results_dir)
        return 0
    results = measure(settings, results_dir)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.render(results)
    (results_dir / "report.md").write_text(markdown)
    latest = RESULTS / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(results_dir.name)
    print()
    print(markdown, end="")
    print(f"\nraw results: {results_dir}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
