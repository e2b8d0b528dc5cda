"""The load generator of the "new users" scenario: every user's whole flow at once, each on its own connection.

    python -m bench.users SPEC.json RESULT.json

bench/new_users.py runs it in a process of its own, so that its CPU is measured apart from the
servers'. SPEC names the server (host, port), one bearer token per user, the create body and the
per-request timeout. Every user connects when all are ready, then, one request after another on
one keep-alive connection:

    4 x POST /api/tasks, 2 x GET /api/tasks, 1 x POST /graphql (a list of up to 100),
    PATCH /api/tasks/{id}/complete {"completed": true} for each task created, DELETE one of them.

A minimal HTTP/1.1 client on asyncio streams (uvloop when installed) keeps the generator's own
CPU per request small. Any response that is not a 2xx, a GraphQL body with `errors`, a timeout or a
broken connection is an error. RESULT gets the counts, latency percentiles per operation and
overall, errors by operation and status, and completions per second.
"""

import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CREATES_PER_USER = 4
LISTS_PER_USER = 2
GRAPHQL_QUERY = "{ tasks(limit: 100) { items { id title completed } } }"
GRAPHQL_BODY = orjson.dumps({"query": GRAPHQL_QUERY})
COMPLETE_BODY = b'{"completed": true}'
OPERATIONS = ("first create", "create", "list", "graphql", "complete", "delete")
REQUESTS_PER_FLOW = CREATES_PER_USER + LISTS_PER_USER + 1 + CREATES_PER_USER + 1


class NoResponse(Exception):
    """The connection broke (or closed) before a whole response arrived."""


@dataclass(frozen=True, slots=True)
class Outcome:
    operation: str
    status: int  # 0: no response
    started: float  # seconds after the start signal
    seconds: float
    error: str = ""  # "" for a success; else the status, "timeout", "connection" or "graphql errors"


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection, reopened after a timeout or a close."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    connects: list[float] = field(default_factory=list)

    async def open(self) -> None:
        started = time.perf_counter()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.connects.append(time.perf_counter() - started)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, token: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
        try:
            status, headers = _parse_head(await self.reader.readuntil(b"\r\n\r\n"))
            payload = await _read_body(self.reader, status, headers)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.close()
            raise NoResponse(str(exc)) from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> bytes:
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])
    return await reader.readexactly(int(headers.get("content-length", "0")))


@dataclass
class Flow:
    """One new user's requests, in order, on one connection."""

    token: str
    connection: Connection
    create_body: bytes
    timeout: float
    epoch: float
    outcomes: list[Outcome] = field(default_factory=list)

    async def call(self, operation: str, method: str, path: str, body: bytes | None = None) -> bytes | None:
        """The response body of a success, else None (the failure is recorded)."""
        started = time.perf_counter()
        status, payload, error = 0, b"", ""
        try:
            async with asyncio.timeout(self.timeout):
                status, payload = await self.connection.request(method, path, self.token, body)
        except TimeoutError:
            self.connection.close()  # a late response would answer the next request
            error = "timeout"
        except (NoResponse, OSError):
            error = "connection"
        if not error and not 200 <= status <= 299:
            error = str(status)
        elif not error and operation == "graphql" and b'"errors"' in payload:
            error = "graphql errors"
        ended = time.perf_counter()
        self.outcomes.append(Outcome(operation, status, started - self.epoch, ended - started, error))
        return None if error else payload

    async def run(self) -> None:
        created: list[int] = []
        for number in range(CREATES_PER_USER):
            # The first provisions the user's row: timed apart from the others.
            operation = "first create" if number == 0 else "create"
            payload = await self.call(operation, "POST", "/api/tasks", self.create_body)
            task_id = _task_id(payload) if payload is not None else None
            if task_id is not None:
                created.append(task_id)
        for _ in range(LISTS_PER_USER):
            await self.call("list", "GET", "/api/tasks")
        await self.call("graphql", "POST", "/graphql", GRAPHQL_BODY)
        for task_id in created:
            await self.call("complete", "PATCH", f"/api/tasks/{task_id}/complete", COMPLETE_BODY)
        if created:
            await self.call("delete", "DELETE", f"/api/tasks/{created[0]}")
        self.connection.close()


def _task_id(payload: bytes) -> int | None:
    try:
        return int(orjson.loads(payload)["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(value * 1000 for value in seconds)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50), 1),
        "p95_ms": round(percentile(ordered, 0.95), 1),
        "p99_ms": round(percentile(ordered, 0.99), 1),
        "max_ms": round(ordered[-1], 1) if ordered else 0.0,
    }


def summarize(flows: list[Flow], wall: float) -> dict[str, Any]:
    outcomes = [outcome for flow in flows for outcome in flow.outcomes]
    errors = Counter(f"{outcome.operation}: {outcome.error}" for outcome in outcomes if outcome.error)
    statuses = Counter(str(outcome.status) if outcome.status else outcome.error for outcome in outcomes)
    per_second: Counter[int] = Counter(int(outcome.started + outcome.seconds) for outcome in outcomes)
    failed_per_second: Counter[int] = Counter(
        int(outcome.started + outcome.seconds) for outcome in outcomes if outcome.error
    )
    last_second = max(per_second, default=-1)
    connects = [seconds for flow in flows for seconds in flow.connection.connects]
    return {
        "users": len(flows),
        "requests": len(outcomes),
        "expected_requests": len(flows) * REQUESTS_PER_FLOW,
        "wall_s": round(wall, 3),
        "rps": round(len(outcomes) / wall, 1) if wall else 0.0,
        "errors": sum(errors.values()),
        "errors_by_operation": dict(errors.most_common()),
        "statuses": dict(statuses.most_common()),
        "flows_without_error": sum(1 for flow in flows if not any(outcome.error for outcome in flow.outcomes)),
        "latency": latency_summary([outcome.seconds for outcome in outcomes]),
        "latency_by_operation": {
            operation: latency_summary([o.seconds for o in outcomes if o.operation == operation])
            for operation in OPERATIONS
        },
        "connect": latency_summary(connects),
        "connections_opened": len(connects),
        "completed_per_second": [per_second.get(second, 0) for second in range(last_second + 1)],
        "failed_per_second": [failed_per_second.get(second, 0) for second in range(last_second + 1)],
    }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    create_body = spec["create_body"].encode()
    start = asyncio.Event()
    epoch = 0.0
    flows = [
        Flow(token, Connection(spec["host"], int(spec["port"])), create_body, float(spec["timeout"]), 0.0)
        for token in spec["tokens"]
    ]

    async def user(flow: Flow) -> None:
        await start.wait()
        flow.epoch = epoch
        await flow.run()

    tasks = [asyncio.create_task(user(flow)) for flow in flows]
    await asyncio.sleep(0.1)  # every task is parked on the start signal
    epoch = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return summarize(flows, time.perf_counter() - epoch)


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(spec))
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
