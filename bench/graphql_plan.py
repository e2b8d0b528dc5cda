"""`python -m bench.graphql_plan`: compiled GraphQL plans against graphql-core, in process.

Per case (a list of 20 tasks, a nested query, a create), the time per request at two levels, the two
modes interleaved so that drift hits both alike:
- `schema.execute`: Strawberry with parse and validation cached, the request rules and the database
  call included (what GRAPHQL_COMPILED changes);
- the whole app through ASGI (httpx, no network): authentication, middlewares, routing, JSON.
For the list, also the service call alone (the database part both modes share). Reported: the median
wall time and the mean CPU time of this process per request (with PostgreSQL the CPU time is the
worker's own work; SQLite's thread counts in it too).

The database is a fresh SQLite file unless `--database-url` names an empty PostgreSQL database
(the schema is migrated in, the caller's tasks seeded through the service layer). Figures only: no
assertion on speed, but each case's results must be equal in both modes.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.requests import Request

from backend.config import Settings
from backend.db import Datastore, create_engine, migrate_to_head
from backend.dev_token import mint_dev_token
from backend.gql.context import Context
from backend.gql.schema import build_schema
from backend.main import create_app
from backend.principal import Principal
from backend.schemas import TaskCreate, TaskListQuery
from backend.services import tasks as task_service

LIST = "{ tasks(limit: 20) { items { id title completed createdAt } } }"
NESTED = (
    "{ me { id name tasks(limit: 20) { total hasNext items { id title priority tags dueDate owner { id email } } } } }"
)
CREATE = (
    "mutation($input: CreateTaskInput!) { createTask(input: $input) "
    "{ id version title completed priority tags dueDate createdAt } }"
)
CASES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "list 20 tasks": (LIST, None),
    "nested (me, 20 tasks, owners)": (NESTED, None),
    "create": (CREATE, {"input": {"title": "Benchmark task", "priority": "HIGH", "tags": ["bench"]}}),
}
SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"
MODES = ("graphql-core", "compiled")
T = TypeVar("T")
PRINCIPAL = Principal(user_id="bench", email="bench@example.com", name="Bench")


def bench_settings(database_url: str, *, compiled: bool) -> Settings:
    return Settings(
        _env_file=None,
        app_env="test",
        database_url=database_url,
        better_auth_secret=SECRET,
        rate_limit="100000000/minute",
        graphql_compiled=compiled,
        log_level="WARNING",
        metrics_enabled=False,
    )


class Samples:
    """Per request: wall time (database waits included) and this process's CPU time (what a worker spends)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    async def timed(self, awaitable: Awaitable[T]) -> T:
        wall, cpu = time.perf_counter(), time.process_time()
        result = await awaitable
        self.cpu.append(time.process_time() - cpu)
        self.wall.append(time.perf_counter() - wall)
        return result


def report(label: str, samples: dict[str, Samples]) -> None:
    """Median wall time and mean CPU time per request, in ms, for each mode."""
    print(label)
    for mode, sample in samples.items():
        wall, cpu = statistics.median(sample.wall) * 1000, statistics.mean(sample.cpu) * 1000
        print(f"  {mode:<20} wall {wall:7.3f} ms   CPU {cpu:7.3f} ms")


async def main(database_url: str, requests: int) -> None:
    settings = {mode: bench_settings(database_url, compiled=mode == "compiled") for mode in MODES}
    engine = create_engine(settings["compiled"])
    await migrate_to_head(engine)
    datastore = Datastore.pooled(engine, settings["compiled"])
    for index in range(40):
        data = TaskCreate(title=f"Task {index}", tags=["bench"], priority="high" if index % 3 else "low")
        await task_service.create_task(datastore.for_request(), PRINCIPAL, data=data, quota=1_000_000)

    app = create_app(settings["compiled"], engine=engine)
    async with app.router.lifespan_context(app):
        schema = build_schema(settings["compiled"])
        request = Request({"type": "http", "app": app, "headers": [], "client": ("127.0.0.1", 1), "state": {}})
        request.state.principal = PRINCIPAL

        async def execute(mode: str, query: str, variables: dict[str, Any] | None) -> Any:
            context = Context(PRINCIPAL, app.state.datastore.for_request(), settings[mode])
            context.request = request
            result = await schema.execute(query, variable_values=variables, context_value=context)
            return result.data, [error.formatted for error in result.errors or ()]

        list_query = TaskListQuery(limit=20)
        print(f"{requests} requests per mode and case, interleaved; database: {engine.dialect.name}")
        print("schema.execute (parse and validation cached, database included):")
        for label, (query, variables) in CASES.items():
            samples = {mode: Samples() for mode in (*MODES, "service call alone")}
            for _ in range(requests):
                results = [await samples[mode].timed(execute(mode, query, variables)) for mode in MODES]
                if label != "create":  # a create's ids and times differ
                    assert results[0] == results[1], results
                if label == "list 20 tasks":  # the database part both modes share
                    listed = task_service.list_tasks(app.state.datastore.for_request(), PRINCIPAL, query=list_query)
                    await samples["service call alone"].timed(listed)
            report(label, {mode: sample for mode, sample in samples.items() if sample.wall})

        token = mint_dev_token(settings["compiled"], PRINCIPAL.user_id)
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        print("whole app through ASGI (httpx in process):")
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, (query, variables) in CASES.items():
                samples = {mode: Samples() for mode in MODES}
                body = {"query": query, "variables": variables}
                for _ in range(requests):
                    for mode in MODES:
                        app.state.settings = settings[mode]
                        response = await samples[mode].timed(client.post("/graphql", json=body, headers=headers))
                        assert response.status_code == 200, response.text
                        assert "errors" not in response.json(), response.text
                report(label, samples)
    await engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: a new SQLite file)")
    parser.add_argument("--requests", type=int, default=500, help="requests per mode and case (default: 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        asyncio.run(main(url, args.requests))


if __name__ == "__main__":
    cli()
