"""Search on the 100k-task user and a 50-task user: sequential REST probes, then the statement in PostgreSQL.

For a selective term (seed.SELECTIVE_WORD: 2 of a small user's tasks, 10 of the big user's) and a
broad one (seed.BROAD_WORD: ~42% of the tasks), on one worker: BENCH_SEARCH_REQUESTS requests of
`GET /api/tasks?search=<term>` one at a time (p50/p95/p99/max), then the app's own statement for
that request (compiled from backend/services/task_statements.py when it still has that shape, else
the bench's copy of it) timed as a prepared statement and run under EXPLAIN (ANALYZE, BUFFERS) with
a custom plan, a generic plan, and the plan PostgreSQL settles on after five executions (what a
pooled connection's statement cache ends up running). Also checks that the migrated database has
the trigram indexes the search relies on.
"""

import asyncio
import re
import statistics
import time
from typing import Any
from urllib.parse import quote

import asyncpg

from bench.harness import REST_LIST, BenchEnv, Server, running
from bench.measure import check_responses, plan_nodes, sequential
from bench.seed import BROAD_WORD, SELECTIVE_WORD

SEARCH_CASE = "search"
TRIGRAM_INDEXES = ("ix_tasks_title_trgm", "ix_tasks_description_trgm")
# What the app sent on 2026-12-02 for GET /api/tasks?search=...: used when its statement cannot be built here.
SEARCH_SQL_COPY = (
    "SELECT tasks.id, tasks.user_id, tasks.title, tasks.description, tasks.completed, tasks.priority, tasks.tags, "
    "tasks.due_date, tasks.created_at, tasks.updated_at, count(*) OVER () AS total FROM tasks "
    "WHERE tasks.user_id = $1::VARCHAR AND (lower(tasks.title) LIKE ('%' || replace(replace(replace("
    "lower($2::VARCHAR), '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%') ESCAPE '\\' OR lower(tasks.description) "
    "LIKE ('%' || replace(replace(replace(lower($2::VARCHAR), '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%') "
    "ESCAPE '\\') ORDER BY tasks.created_at DESC, tasks.id DESC LIMIT $3::INTEGER OFFSET $4::INTEGER"
)
PLAN_MODES = {"custom": "force_custom_plan", "generic": "force_generic_plan"}
TIMED_EXECUTIONS = 30


def search_statement(user_id: str, term: str) -> tuple[str, list[Any], str]:
    """The SQL and arguments of the app's first page for `?search=term`, and where the SQL came from."""
    try:
        from sqlalchemy.dialects.postgresql.asyncpg import dialect

        from backend.principal import Principal
        from backend.schemas import TaskListQuery
        from backend.services.task_statements import ListShape, list_parameters, page_statement

        query = TaskListQuery.model_validate({"search": term})
        asyncpg_dialect = dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves the dialect unannotated
        compiled = page_statement(ListShape.of(query)).compile(dialect=asyncpg_dialect)
        parameters = compiled.construct_params(list_parameters(Principal(user_id=user_id), query))
        arguments = [parameters[name] for name in compiled.positiontup or ()]
        return compiled.string, arguments, "the app's statement, compiled by the bench"
    except (ImportError, AttributeError, TypeError, ValueError, KeyError) as exc:
        print(f"  search: the app's statement could not be built ({type(exc).__name__}); using the bench's copy")
        return SEARCH_SQL_COPY, [user_id, term, 20, 0], "the bench's copy of the app's statement (2026-12-02)"


def _literal(value: Any) -> str:
    """A SQL literal for EXECUTE; only the bench's own values (ids, terms, numbers) come here."""
    if isinstance(value, bool | int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _execution_ms(plan: list[str]) -> float | None:
    for line in plan:
        found = re.match(r"\s*Execution Time: ([0-9.]+) ms", line)
        if found:
            return float(found.group(1))
    return None


async def _explain(connection: asyncpg.Connection, name: str, arguments: list[Any]) -> dict[str, Any]:
    rows = await connection.fetch(
        f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name}({', '.join(_literal(value) for value in arguments)})"
    )
    plan = [row[0] for row in rows]
    text = "\n".join(plan)
    return {
        "plan_nodes": plan_nodes(plan),
        "execution_ms": _execution_ms(plan),
        "uses_trigram_index": any(index in text for index in TRIGRAM_INDEXES),
        "plan": plan,
    }


async def _statement_in_postgres(connection: asyncpg.Connection, sql: str, arguments: list[Any]) -> dict[str, Any]:
    """Median time as a prepared statement, and its plans: custom, generic, and the one auto mode settles on."""
    prepared = await connection.prepare(sql)
    timings = []
    for n in range(TIMED_EXECUTIONS + 5):
        started = time.perf_counter()
        await prepared.fetch(*arguments)
        if n >= 5:
            timings.append((time.perf_counter() - started) * 1000)
    plans: dict[str, Any] = {}
    for label, mode in PLAN_MODES.items():
        await connection.execute(f"SET plan_cache_mode = {mode}")
        await connection.execute(f"PREPARE bench_search_{label} AS {sql}")
        plans[label] = await _explain(connection, f"bench_search_{label}", arguments)
        await connection.execute(f"DEALLOCATE bench_search_{label}")
    await connection.execute("RESET plan_cache_mode")
    await connection.execute(f"PREPARE bench_search_auto AS {sql}")
    execute = f"EXECUTE bench_search_auto({', '.join(_literal(value) for value in arguments)})"
    for _ in range(5):  # PostgreSQL weighs a generic plan from the sixth execution on
        await connection.fetch(execute)
    plans["auto"] = await _explain(connection, "bench_search_auto", arguments)
    await connection.execute("DEALLOCATE bench_search_auto")
    timings.sort()
    return {"median_ms": round(statistics.median(timings), 3), "max_ms": round(timings[-1], 3), "plans": plans}


async def _indexes(connection: asyncpg.Connection) -> dict[str, Any]:
    rows = await connection.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks' AND indexname = ANY($1::text[])",
        list(TRIGRAM_INDEXES),
    )
    extension = await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'")
    return {"pg_trgm": extension, "indexes": {row["indexname"]: row["indexdef"] for row in rows}}


def probe_targets(env: BenchEnv) -> list[tuple[str, str, str, str]]:
    """(probe name, user id, token, term) for each user and term."""
    users = (("100k-task user", env.data.big_user_id, env.big_token), ("50-task user", *_small_user(env)))
    terms = (("selective", SELECTIVE_WORD), ("broad", BROAD_WORD))
    return [
        (f"{user}, {kind} '{term}'", user_id, token, term) for user, user_id, token in users for kind, term in terms
    ]


def _small_user(env: BenchEnv) -> tuple[str, str]:
    return env.data.small_user_ids[0], env.small_token


async def _sql_part(env: BenchEnv, targets: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    connection = await asyncpg.connect(env.dsn)
    try:
        found: dict[str, Any] = {"indexes": await _indexes(connection), "statements": {}}
        for name, user_id, _token, term in targets:
            sql, arguments, source = search_statement(user_id, term)
            found["statements"][name] = {
                "source": source,
                "sql": sql,
                **await _statement_in_postgres(connection, sql, arguments),
            }
    finally:
        await connection.close()
    return found


def search_probes(env: BenchEnv, server: Server) -> tuple[dict[str, Any], list[str]]:
    """The REST probes on `server`, the statements in PostgreSQL, and the index check's problems."""
    targets = probe_targets(env)
    probes: dict[str, Any] = {}
    for name, _user_id, token, term in targets:
        probe = sequential(server.port, f"/api/tasks?search={quote(term)}", token, env.settings.search_requests)
        probes[name] = probe
        print(
            f"  search {name:<36} matches {probe['total_count']}  p50 {probe['p50_ms']:.2f} ms"
            f"  p99 {probe['p99_ms']:.2f} ms  {probe['statuses']}"
        )
    sql = asyncio.run(_sql_part(env, targets))
    for name, statement in sql["statements"].items():
        plans = statement["plans"]
        print(
            f"  search sql {name:<32} median {statement['median_ms']:.2f} ms"
            f"  custom: {plans['custom']['plan_nodes'][:70]}  generic: {plans['generic']['plan_nodes'][:70]}"
        )
    problems = []
    missing = [index for index in TRIGRAM_INDEXES if index not in sql["indexes"]["indexes"]]
    if missing or not sql["indexes"]["pg_trgm"]:
        problems.append(f"search: the seeded database lacks {', '.join(missing) or 'the pg_trgm extension'}")
    for name, probe in probes.items():
        if set(probe["statuses"]) != {"200"}:
            problems.append(f"search {name}: statuses {probe['statuses']}")
    for problem in problems:
        print(f"  CHECK FAILED {problem}")
    return {"probes": probes, **sql}, problems


def bench_search(env: BenchEnv, results: dict[str, Any]) -> None:
    """The search probes on a 1-worker server of their own."""
    server = Server("app-w1-search", env.settings.app, 1, env, {})
    with running(server, env.small_token):
        print(f"{SEARCH_CASE}: uvicorn {env.settings.app} --workers 1 on {server.base_url}")
        results["problems"] += check_responses(env, server, [("REST list", REST_LIST)])
        results["search"], problems = search_probes(env, server)
        results["problems"] += problems
