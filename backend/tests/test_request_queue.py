"""Requests are served first come, first served: a bounded number at a time, the rest waiting in order of
arrival with their bodies read; probes never wait."""

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from backend.main import create_app
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings
from backend.tests.external_servers import serving
from backend.tests.factories import auth_headers

ALICE = auth_headers("alice")


async def test_one_at_a_time_in_order_of_arrival_and_probes_skip_the_queue() -> None:
    url = await create_scratch_database("todo_queue")
    app = create_app(make_settings(url, max_concurrent_requests=1))
    try:
        async with serving(app) as client:
            assert (await client.get("/api/tasks", headers=ALICE)).status_code == 200  # migrated, warm
            finished: list[str] = []

            async def list_as(name: str) -> None:
                response = await client.get("/api/tasks", headers=auth_headers(name))
                assert response.status_code == 200
                finished.append(name)

            async with app.state.engine.connect() as blocker:
                await blocker.execute(text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
                first = asyncio.create_task(list_as("first"))
                await asyncio.sleep(0.3)  # the first holds the only turn, waiting on the lock
                rest = [asyncio.create_task(list_as(f"then-{n}")) for n in range(3)]
                await asyncio.sleep(0.3)
                health = await asyncio.wait_for(client.get("/health"), timeout=2)
                assert health.status_code == 200  # probes never queue
                assert finished == []
                await blocker.rollback()
            await asyncio.gather(first, *rest)
            assert finished == ["first", "then-0", "then-1", "then-2"]
    finally:
        await drop_scratch_database(url)


async def test_a_slow_body_holds_no_turn(tmp_path: Any) -> None:
    app: FastAPI = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/slow.db", max_concurrent_requests=1))
    async with serving(app) as client:
        body_sent = asyncio.Event()
        sent: list[MutableMapping[str, Any]] = []

        async def trickling_receive() -> dict[str, Any]:
            if not body_sent.is_set():
                body_sent.set()
                return {"type": "http.request", "body": b'{"title": ', "more_body": True}
            await asyncio.sleep(3600)  # the rest of the body never comes
            return {"type": "http.disconnect"}

        async def record(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/tasks",
            "raw_path": b"/api/tasks",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *_authorization()],
            "client": ("203.0.113.9", 5000),
            "server": ("testserver", 80),
        }
        slow = asyncio.create_task(app(scope, trickling_receive, record))
        await body_sent.wait()
        response = await asyncio.wait_for(client.post("/api/tasks", json={"title": "quick"}, headers=ALICE), timeout=5)
        assert response.status_code == 201  # served while the slow body still trickles
        assert sent == []
        slow.cancel()


def _authorization() -> list[tuple[bytes, bytes]]:
    return [(b"authorization", ALICE["Authorization"].encode())]


async def test_the_body_limit_holds_for_a_chunked_body(tmp_path: Any) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/chunks.db"))

    async def chunks() -> Any:
        for _ in range(70):
            yield b"x" * 1024

    async with serving(app) as client:
        response = await client.post(
            "/api/tasks", content=chunks(), headers={**ALICE, "Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert isinstance(response, httpx.Response)
