"""`make bench-profile`: where a worker's CPU goes under wrk load, grouped by layer (py-spy).

For each hot path (REST list, GraphQL list, REST create) on one worker: a plain measured run for
the CPU per request, then py-spy under the same load twice: a flamegraph SVG to look at and raw
folded stacks that are summed per layer. Each sample goes to the innermost frame that belongs to
a known layer (standard library and interpreter frames pass through to their caller), so the
shares add up to 100% of the worker's busy CPU.

The "new users" scenario (bench/new_users.py) is profiled on its 2 workers: one measured batch of
new users for the CPU per request, then a second batch with py-spy attached to both workers for
the whole batch, without pausing them (raw folded stacks per worker, summed). BENCH_CASES picks
among "REST list", "GraphQL list", "REST create" and "new users".
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import BenchEnv, BenchSettings, Server, bench_environment, reset_data, running
from bench.measure import check_responses, measure_case
from bench.new_users import NEW_USERS_CASE, new_users_server, run_scenario
from bench.run import APP_CASES
from bench.wrk import Request, run_wrk

# (layer, file prefixes); the first layer whose prefix a frame's file starts with claims it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("auth (PyJWT, token checks)", ("jwt/", "backend/auth.py", "cryptography/")),
    ("rate limiter (slowapi, limits)", ("slowapi/", "limits/", "backend/rate_limit.py", "deprecated/")),
    ("SQLAlchemy: ORM session, transaction", ("sqlalchemy/orm/", "sqlalchemy/ext/asyncio/")),
    ("SQLAlchemy: statement compile, cache keys", ("sqlalchemy/sql/",)),
    ("SQLAlchemy: engine, results, pool", ("sqlalchemy/engine/", "sqlalchemy/pool/", "sqlalchemy/event/")),
    ("SQLAlchemy: asyncpg adapter, greenlet", ("sqlalchemy/dialects/", "sqlalchemy/util/", "greenlet/", "sqlalchemy/")),
    ("asyncpg", ("asyncpg/",)),
    ("pydantic validation, serialisation", ("pydantic/", "pydantic_core/", "fastapi/encoders.py", "fastapi/_compat")),
    ("Strawberry, graphql-core", ("strawberry/", "graphql/", "cross_web/", "aiodataloader")),
    ("JSON", ("json/", "orjson")),
    (
        "middleware",
        ("starlette/middleware/", "fastapi/middleware/", "uvicorn/middleware/", "backend/middleware.py"),
    ),
    ("FastAPI routing, dependencies", ("fastapi/", "starlette/")),
    ("app code (routes, services, models, gql adapter)", ("backend/",)),
    ("server, event loop (uvicorn, httptools, uvloop)", ("uvicorn/", "httptools/", "uvloop/", "asyncio/")),
)
UNATTRIBUTED = "interpreter, other"
# Frames that pass their time to the caller: containers of library code rather than layers.
TRANSPARENT = ("asyncio/", "starlette/datastructures.py", "starlette/concurrency.py", "anyio/", "contextlib.py")
# A thread parked in a wait is not using CPU, whatever the sampler thinks (limits' Timer threads).
# uvicorn's health-check thread in each of several workers blocks on a pipe (or waits for the GIL after it).
WAITING = (
    "Condition.wait (threading.py",
    "lock_PyThread_acquire_lock",
    "PyThread_acquire_lock_timed",
    "Process.always_pong (uvicorn",
)

# What the time is spent *for*: the first operation any frame of a sample matches claims it, so
# the list goes from specific to broad and the shares add up to 100%.
OPERATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("garbage collector", ("gc_collect_main",)),
    ("pool pre-ping (BEGIN; ping; ROLLBACK at each checkout)", ("_async_ping", "do_ping (sqlalchemy")),
    (
        "BEGIN / ROLLBACK / COMMIT round trips",
        ("asyncpg/transaction.py", "_commit_impl", "_rollback_impl", "AsyncSession.commit"),
    ),
    ("pool checkout and return", ("sqlalchemy/pool/", "sqlalchemy/util/queue.py")),
    ("SQL compile and cache keys", ("_compile_w_cache", "_generate_cache_key", "_gen_cache_key")),
    ("rows to TaskPublic (pydantic)", ("_to_tasks",)),
    ("Link, Content-Range, Location, ETag headers", ("pagination_headers", "HTTPConnection.url", ".etag (")),
    (
        "first create: the insert's foreign-key error, the user's provisioning",
        ("ensure_user", "_owner_missing", "_handle_dbapi_exception"),
    ),
    # SQLAlchemy runs statements in a greenlet whose samples lose their callers: counted here.
    (
        "SQL statements sent, rows read (SQLAlchemy engine, greenlet, asyncpg)",
        ("AsyncSession.execute", "AsyncSession.scalar", "greenlet::", "sqlalchemy/engine/"),
    ),
    ("SQL statement built per request (select, where, values)", ("sqlalchemy/sql/", "_list_conditions", "_ordering")),
    ("session open and close", ("AsyncSession.close", "AsyncSession.__aexit__", "sessionmaker")),
    ("rate limit check (slowapi, limits, its Timer threads)", ("backend/rate_limit.py", "slowapi/", "limits/")),
    ("token verification (PyJWT)", ("TokenVerifier.verify",)),
    ("query and header parameters (TaskListQuery, ...)", ("request_params_to_args",)),
    ("request body to TaskCreate", ("request_body_to_args", "_extract_form_body", "Request.json")),
    ("response model check and JSON (FastAPI)", ("serialize_response", "Response.render", "JSONResponse.render")),
    ("GraphQL parse, validation rules", ("strawberry/extensions/", "graphql/validation/", "graphql/language/")),
    ("GraphQL execution, result, DataLoader", ("graphql/execution/", "aiodataloader", "strawberry/")),
    ("route handler and service code, other", ("run_endpoint_function",)),
    ("dependency solving (FastAPI)", ("solve_dependencies",)),
    ("middleware and routing", ("starlette/middleware/", "fastapi/", "starlette/routing.py", "backend/middleware.py")),
    ("HTTP server, event loop", ("uvicorn/", "uvloop", "httptools")),
)


def _frame_file(frame: str) -> str:
    """`func (path/file.py:12)` -> `path/file.py`; native frames -> their library."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    return inside.rsplit(":", 1)[0] if inside.endswith(tuple("0123456789")) and ":" in inside else inside


def layer_of(stack: list[str]) -> tuple[str, str]:
    """The layer that a sample's time belongs to, and the frame that claimed it."""
    outermost_container: tuple[str, str] | None = None
    for frame in reversed(stack):
        file = _frame_file(frame)
        for layer, prefixes in LAYERS:
            if file.startswith(prefixes):
                if file.startswith(TRANSPARENT):
                    outermost_container = outermost_container or (layer, frame)
                    break
                return layer, frame
    return outermost_container or (UNATTRIBUTED, stack[-1] if stack else "?")


def operation_of(stack_text: str) -> str:
    for operation, markers in OPERATIONS:
        if any(marker in stack_text for marker in markers):
            return operation
    return UNATTRIBUTED


def _shares(counter: Counter[str], total: int) -> list[tuple[str, float]]:
    return [(name, count / total) for name, count in counter.most_common()]


def summarize(folded: Path) -> dict[str, Any]:
    layers: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    frames: dict[str, Counter[str]] = defaultdict(Counter)
    total = waiting = 0
    for line in folded.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        if "Thread._bootstrap" in stack_text and any(marker in stack_text for marker in WAITING):
            waiting += count
            continue
        stack = [frame for frame in stack_text.split(";") if not frame.startswith("process ")]
        layer, frame = layer_of(stack)
        layers[layer] += count
        frames[layer][frame] += count
        operations[operation_of(stack_text)] += count
        total += count
    total = max(total, 1)
    return {
        "samples": total,
        "waiting_samples_dropped": waiting,
        "layers": [
            {
                "layer": layer,
                "share": share,
                "top_frames": [(frame, n / total) for frame, n in frames[layer].most_common(5)],
            }
            for layer, share in _shares(layers, total)
        ],
        "operations": [{"operation": name, "share": share} for name, share in _shares(operations, total)],
    }


def _py_spy() -> str:
    beside_python = Path(sys.executable).with_name("py-spy")
    found = str(beside_python) if beside_python.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is required: make install (it is a dev extra)")
    return found


def _record(pid: int, seconds: float, rate: int, output: Path, fmt: str) -> None:
    command = [_py_spy(), "record", f"--pid={pid}", f"--rate={rate}", f"--duration={round(seconds)}", "--native"]
    done = subprocess.run([*command, f"--format={fmt}", f"--output={output}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _profile_under_load(env: BenchEnv, server: Server, request: Request, stem: Path, seconds: float) -> None:
    pid = server.worker_pids()[0]
    load = threading.Thread(
        target=run_wrk,
        args=(server.base_url, request, env.tokens_file),
        kwargs={
            "connections": env.settings.connections,
            "seconds": 2 * seconds + 3,
            "timeout_seconds": env.settings.timeout,
        },
    )
    load.start()
    try:
        _record(pid, seconds, 100, stem.with_suffix(".svg"), "flamegraph")
        _record(pid, seconds, 250, stem.with_suffix(".folded"), "raw")
    finally:
        load.join()


def _table(profiles: dict[str, dict[str, Any]], view: str, key: str, title: str) -> list[str]:
    names = list(profiles)
    rows: list[str] = []
    for profile in profiles.values():
        rows += [entry[key] for entry in profile[view] if entry[key] not in rows]
    lines = [f"| {title} | " + " | ".join(f"{name} % | ms/req" for name in names) + " |"]
    lines.append("|---|" + "--:|--:|" * len(names))
    for row in rows:
        cells = []
        for name in names:
            entry = next((e for e in profiles[name][view] if e[key] == row), None)
            share = entry["share"] if entry else 0.0
            cells.append(f"{share:.0%} | {share * profiles[name]['cpu_ms_per_req']:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"100% | {profiles[name]['cpu_ms_per_req']:.2f}" for name in names)
    lines.append(f"| **worker CPU per request** | {totals} |")
    return lines


def render(profiles: dict[str, dict[str, Any]]) -> str:
    kernel = ", ".join(f"{name} {profile['kernel_share']:.0%}" for name, profile in profiles.items())
    lines = [f"Worker CPU in the kernel (system calls, mostly socket I/O): {kernel}.", ""]
    lines += ["What the worker's CPU is spent for (first matching operation in the stack):", ""]
    lines += _table(profiles, "operations", "operation", "Operation")
    lines += ["", "Which layer's own code runs (innermost library frame of each sample):", ""]
    lines += _table(profiles, "layers", "layer", "Layer")
    for name, profile in profiles.items():
        lines += ["", f"Top frames, {name} (share of the worker's CPU):", ""]
        for entry in profile["layers"][:8]:
            top = "; ".join(f"`{frame[:90]}` {share:.1%}" for frame, share in entry["top_frames"][:3])
            lines.append(f"- {entry['layer']} ({entry['share']:.0%}): {top}")
    return "\n".join(lines) + "\n"


@contextmanager
def _py_spy_on(workers: list[int], stem: Path, rate: int) -> Iterator[list[Path]]:
    """py-spy on each worker until the block ends (SIGINT makes it write its raw folded stacks)."""
    paths = [stem.with_name(f"{stem.name}-w{number + 1}.folded") for number in range(len(workers))]
    # --nonblocking: pausing the workers 100 times a second would change the very waits being looked at
    # (py-spy reads native stacks only while the process is paused, so C code counts under its Python caller).
    command = [_py_spy(), "record", f"--rate={rate}", "--nonblocking", "--format=raw"]
    recorders = [
        subprocess.Popen(
            [*command, f"--pid={pid}", f"--output={path}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for pid, path in zip(workers, paths, strict=True)
    ]
    try:
        yield paths
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            _, stderr = recorder.communicate(timeout=60)
            if recorder.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"py-spy failed ({recorder.returncode}): {stderr.decode()[-2000:]}")


def _profile_new_users(env: BenchEnv, results_dir: Path) -> dict[str, Any]:
    """A measured batch of new users (CPU per request), then a fresh batch with py-spy on both workers."""
    stem = results_dir / "profile-new-users"
    results: dict[str, Any] = {"problems": []}
    profiled: list[Path] = []

    @contextmanager
    def during(workers: list[int]) -> Iterator[None]:
        with _py_spy_on(workers, stem, 100) as paths:
            profiled.extend(paths)
            yield

    with new_users_server(env, results) as server:
        measured = run_scenario(env, server, env.settings.new_users)
        run_scenario(env, server, env.settings.new_users, label="profiled", during=during)
    combined = stem.with_suffix(".folded")
    combined.write_text("".join(path.read_text() for path in profiled))
    summary = summarize(combined)
    summary["cpu_ms_per_req"] = measured["worker_cpu_ms_per_req"]
    summary["rps"] = measured["rps"]
    summary["other_cpu_cores"] = measured["other_cpu_cores"]
    summary["kernel_share"] = measured["worker_kernel_share"]
    summary["measured"] = measured
    summary["problems"] = results["problems"]
    return summary


def profile(settings: BenchSettings, results_dir: Path) -> None:
    _py_spy()
    seconds = float(os.environ.get("BENCH_PROFILE_SECONDS", "10"))
    profiles: dict[str, dict[str, Any]] = {}
    with bench_environment(settings, results_dir) as env:
        cases = [(name, request) for name, request in APP_CASES if settings.selects(name)]
        if cases:
            server = Server("app-w1", settings.app, 1, env, {})
            with running(server, env.small_token):
                check_responses(env, server, cases)
                reset_data(env)
                for name, request in cases:
                    measured = measure_case(env, server, name, request, connections=settings.connections)
                    stem = results_dir / f"profile-{name.lower().replace(' ', '-')}"
                    _profile_under_load(env, server, request, stem, seconds)
                    summary = summarize(stem.with_suffix(".folded"))
                    summary["cpu_ms_per_req"] = measured["worker_cpu_ms_per_req"]
                    summary["rps"] = measured["rps"]
                    summary["other_cpu_cores"] = measured["other_cpu_cores"]
                    summary["kernel_share"] = measured["worker_kernel_share"]
                    profiles[name] = summary
                    reset_data(env)
        if settings.selects(NEW_USERS_CASE):
            profiles[f"{NEW_USERS_CASE} (2 workers)"] = _profile_new_users(env, results_dir)
    (results_dir / "profile.json").write_text(json.dumps(profiles, indent=2) + "\n")
    markdown = render(profiles)
    (results_dir / "profile.md").write_text(markdown)
    print()
    print(markdown, end="")
    print(f"\nflamegraphs and folded stacks: {results_dir}")
