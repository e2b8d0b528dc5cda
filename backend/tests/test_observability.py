"""Request ids, the access log line, JSON logs and the Prometheus metrics."""

import io
import json
import logging
import random
import re
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from prometheus_client import REGISTRY

from backend.config import Settings
from backend.db import create_engine
from backend.main import create_app
from backend.metrics import METHOD_LABELS, instrument_pool
from backend.observability import CONTINUATION_PREFIX, configure_logging
from backend.tests.conftest import make_settings
from backend.tests.external_servers import serving
from backend.tests.factories import auth_headers

pytestmark = pytest.mark.single_database

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "backend.access"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- X-Request-ID ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["abc-123", "3f2b1c9e-8d7a-4e6f-9a0b-1c2d3e4f5a6b", "Root=1-67891233:abc+/="])
async def test_a_plain_request_id_is_kept_and_echoed(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize("request_id", [None, "", "has spaces", "x" * 129, 'quote"d', "new\\nline", "ünïcode"])
async def test_a_missing_or_unsafe_request_id_is_replaced(client: httpx.AsyncClient, request_id: str | None) -> None:
    headers = [] if request_id is None else [(b"X-Request-ID", request_id.encode())]
    response = await client.get("/health", headers=headers)
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


async def test_request_id_is_on_errors_and_differs_per_request(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/api/tasks"), await client.get("/api/tasks")
    assert first.status_code == second.status_code == 401
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# --- The access log -------------------------------------------------------------------------------


async def test_one_access_line_per_request_with_template_user_and_no_secrets(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    headers = auth_headers("alice")
    created = await client.post("/api/tasks", json={"title": "secret groceries"}, headers=headers)
    caplog.set_level(logging.INFO, logger="backend.access")
    caplog.clear()

    response = await client.get(
        f"/api/alice/tasks/{created.json()['id']}", headers={**headers, "X-Request-ID": "req-1"}
    )

    assert response.status_code == 200
    (record,) = access_records(caplog)
    fields = {name: vars(record)[name] for name in ("method", "route", "status", "user_id", "request_id")}
    assert fields == {
        "method": "GET",
        "route": "/api/{user_id}/tasks/{task_id}",
        "status": 200,
        "user_id": "alice",
        "request_id": "req-1",
    }
    assert isinstance(vars(record)["duration_ms"], float)
    logged = json.dumps([vars(r) for r in caplog.records], default=str)
    assert headers["Authorization"].split()[1] not in logged
    assert "secret groceries" not in logged


async def test_access_line_of_an_anonymous_failure(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend.access")
    await client.get("/api/tasks/12345", headers={"Authorization": "Bearer not-a-jwt"})
    await client.get("/no/such/path")
    first, second = (vars(record) for record in access_records(caplog))
    assert (first["route"], first["status"], first["user_id"]) == ("/api/tasks/{task_id}", 401, None)
    assert (second["route"], second["status"]) == ("<unmatched>", 404)
    assert "not-a-jwt" not in first["msg"] % first["args"]


async def test_probes_log_at_debug_only(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend.access")
    await client.get("/health")
    assert access_records(caplog) == []


async def test_every_log_line_of_a_request_carries_its_id(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def chatty() -> dict[str, str]:
        logging.getLogger("backend.services.example").warning("working on it")
        return {}

    app.add_api_route("/chatty", chatty)
    caplog.set_level(logging.INFO)
    await client.get("/chatty", headers={"X-Request-ID": "req-42"})
    lines = [r for r in caplog.records if r.name in ("backend.services.example", "backend.access")]
    assert [r.name for r in lines] == ["backend.services.example", "backend.access"]
    assert {vars(r)["request_id"] for r in lines} == {"req-42"}


async def test_an_unexpected_error_is_a_500_with_the_request_id(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/broken", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "INTERNAL", "detail": "Internal server error"}
    assert response.headers["x-request-id"] == "req-500"
    traceback_line = next(vars(r) for r in caplog.records if r.name == "backend.http_errors")
    access_line = next(vars(r) for r in caplog.records if r.name == "backend.access")
    assert traceback_line["request_id"] == access_line["request_id"] == "req-500"
    assert access_line["status"] == 500


def test_json_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    configure_logging(make_settings("sqlite+aiosqlite://", log_format="json"))
    handler = next(h for h in logging.getLogger().handlers if type(h).__name__ == "_AppLogHandler")
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(stream)
    try:
        logging.getLogger("backend.access").info(
            "GET /api/tasks 200 1.0ms user=alice", extra={"route": "/api/tasks", "status": 200, "user_id": "alice"}
        )
    finally:
        handler.setStream(previous)
        configure_logging(make_settings("sqlite+aiosqlite://"))
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["level"] == "INFO"
    assert line["logger"] == "backend.access"
    assert line["request_id"] == "-"
    assert (line["route"], line["status"], line["user_id"]) == ("/api/tasks", 200, "alice")
    assert line["time"].endswith("+00:00")


# --- Forged log lines ------------------------------------------------------------------------------

# Every character some reader treats as the end of a line (str.splitlines() splits on all of them),
# C1 controls (CSI starts a terminal escape), a bidi override and a lone surrogate.
LINE_BREAKERS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
ODD_CHARACTERS = [*LINE_BREAKERS, "\x00", "\x1b[2J", "\x7f", "\x9b", "\u202e", "\ud800"]
FORGED = "2026-01-01 00:00:00,000 INFO backend.access [forged] GET /api/tasks 200 1.0ms user=admin"
FORGED_JSON = '{"level":"INFO","logger":"backend.access","message":"forged","request_id":"forged"}'


@contextmanager
def app_log_stream(log_format: str) -> Iterator[io.StringIO]:
    """What the app's own log handler writes while the block runs, in `log_format`."""
    configure_logging(make_settings("sqlite+aiosqlite://", log_format=log_format))
    handler = next(h for h in logging.getLogger().handlers if type(h).__name__ == "_AppLogHandler")
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)
        configure_logging(make_settings("sqlite+aiosqlite://"))


def raise_with(message: str) -> None:
    raise ValueError(message)


@contextmanager
def forgery_logger() -> Iterator[logging.Logger]:
    """A logger writing to the app's handler alone: pytest's capture would carry a lone surrogate
    into its test report, which pytest-xdist cannot send between processes."""
    handler = next(h for h in logging.getLogger().handlers if type(h).__name__ == "_AppLogHandler")
    logger = logging.getLogger("backend.tests.forgery")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.propagate = True
        logger.removeHandler(handler)


@pytest.mark.parametrize("breaker", ODD_CHARACTERS)
def test_text_log_records_stay_on_their_lines(breaker: str) -> None:
    with app_log_stream("text") as stream, forgery_logger() as logger:
        logger.warning("user=%s done", f"mallory{breaker}{FORGED}")
        try:
            raise_with(f"bad id {breaker}{FORGED}")
        except ValueError:
            logger.exception("failed for %s", f"mallory{breaker}{FORGED}")
    message_line, warning_line, *traceback_lines = stream.getvalue().splitlines()
    assert message_line.endswith(f"user=mallory{repr(breaker)[1:-1]}{FORGED} done")
    assert warning_line.endswith(f"failed for mallory{repr(breaker)[1:-1]}{FORGED}")
    # Our own traceback goes on over several lines, each marked as a continuation, attacker text escaped.
    assert traceback_lines[0] == f"{CONTINUATION_PREFIX}Traceback (most recent call last):"
    assert all(line.startswith(CONTINUATION_PREFIX) for line in traceback_lines)
    # A newline in an exception message goes on in the traceback (it is multi-line), marked too.
    assert traceback_lines[-1].endswith(FORGED)
    assert f"ValueError: bad id {repr(breaker.strip(chr(10)))[1:-1]}" in "".join(traceback_lines)
    assert not any(line.startswith(FORGED[:10]) for line in stream.getvalue().splitlines())


@pytest.mark.parametrize("breaker", ODD_CHARACTERS)
def test_json_log_records_stay_on_their_lines(breaker: str) -> None:
    with app_log_stream("json") as stream, forgery_logger() as logger:
        logger.warning("user=%s", f"mallory{breaker}{FORGED_JSON}", extra={"user_id": f"mallory{breaker}"})
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    visible = breaker.encode("utf-8", "backslashreplace").decode()  # a lone surrogate cannot be UTF-8
    assert record["message"] == f"user=mallory{visible}{FORGED_JSON}"
    assert record["user_id"] == f"mallory{visible}"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_forged_user_id_makes_exactly_one_access_line_per_request(log_format: str, tmp_path: Path) -> None:
    forgery = FORGED if log_format == "text" else FORGED_JSON
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/todo.db", log_format=log_format))
    with app_log_stream(log_format) as stream:
        async with serving(app) as client:
            for breaker in LINE_BREAKERS:
                await client.get("/api/tasks", headers=auth_headers(f"mallory{breaker}{forgery}"))

    lines = stream.getvalue().splitlines()
    access_lines = [line for line in lines if "backend.access" in line]
    assert len(access_lines) == len(LINE_BREAKERS)
    if log_format == "text":
        assert not any(line.startswith(FORGED[:23]) for line in lines)
        return
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert not any(record["request_id"] == "forged" for record in records)
    users = [json.loads(line)["user_id"] for line in access_lines]
    # The token's id exactly, where the API accepts it (it refuses ids with C0 controls: 401, no user).
    assert [user for user in users if user is not None] == [
        f"mallory{breaker}{forgery}" for breaker in LINE_BREAKERS if breaker in "\x85\u2028\u2029"
    ]


# --- Metrics ----------------------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_and_status(client: httpx.AsyncClient) -> None:
    labels = {"method": "GET", "route": "/api/tasks/{task_id}", "status": "404"}
    before = sample("http_requests_total", **labels)
    seconds_before = sample("http_request_duration_seconds_count", **labels)
    for task_id in (999_001, 999_002):
        await client.get(f"/api/tasks/{task_id}", headers=auth_headers())

    assert sample("http_requests_total", **labels) == before + 2
    assert sample("http_request_duration_seconds_count", **labels) == seconds_before + 2
    exposition = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/api/tasks/{task_id}",status="404"}' in exposition
    assert "todo_db_pool_checked_out" in exposition
    assert "todo_rate_limit_rejections_total" in exposition


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "2/minute"}])
async def test_rate_limit_rejections_are_counted(client: httpx.AsyncClient, settings_overrides: dict[str, Any]) -> None:
    before = sample("todo_rate_limit_rejections_total")
    statuses = [(await client.get("/api/me", headers=auth_headers("carol"))).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert sample("todo_rate_limit_rejections_total") == before + 2


@pytest.mark.parametrize("settings_overrides", [{"metrics_enabled": False}])
async def test_metrics_can_be_turned_off(client: httpx.AsyncClient, settings_overrides: dict[str, Any]) -> None:
    assert (await client.get("/metrics")).status_code == 404


def request_series() -> set[tuple[str, str, str]]:
    return {
        (sample.labels["method"], sample.labels["route"], sample.labels["status"])
        for metric in REGISTRY.collect()
        if metric.name == "http_requests"
        for sample in metric.samples
        if sample.name == "http_requests_total"
    }


def random_token(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-_.~!$&'*+^`|", k=length))


async def test_a_flood_of_odd_methods_and_paths_adds_a_bounded_number_of_series(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/todo.db"))
    templates = {context.path_format for context in iter_route_contexts(app.routes)}
    rng = random.Random(2026)
    before = request_series()
    async with serving(app) as client:
        for number in range(1000):
            method = random_token(rng, rng.randint(1, 40)) if number % 2 else rng.choice(["GET", "OPTIONS", "get"])
            path = rng.choice(["/", "/static/", "/api/tasks/", "/docs/", "/graphql/"]) + random_token(rng, 12)
            headers = {}
            if number % 5 == 0:  # a CORS preflight, allowed origin or not
                method = "OPTIONS"
                headers = {"Origin": rng.choice(["http://localhost:3000", f"http://{random_token(rng, 8)}.example"])}
                headers["Access-Control-Request-Method"] = random_token(rng, 6)
            await client.request(method, path, headers=headers)

    added = request_series() - before
    assert {method for method, _, _ in added} <= METHOD_LABELS | {"other"}
    assert {route for _, route, _ in added} <= templates | {"<unmatched>", "<cors-preflight>", "/static/{path}"}
    assert {status for _, _, status in added} <= {"200", "400", "401", "404", "405"}
    # method x route x status, each from a small fixed set: here at most a dozen or so in all.
    assert len(added) <= 20, sorted(added)


async def test_static_files_and_preflights_have_their_own_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/todo.db"))
    caplog.set_level(logging.INFO, logger="backend.access")
    async with serving(app) as client:
        await client.get("/static/swagger-ui/no-such-file.js")
        preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
        await client.options("/api/tasks", headers=preflight)
        await client.get("/no/such/path")
    routes = [vars(record)["route"] for record in access_records(caplog)]
    assert routes == ["/static/{path}", "<cors-preflight>", "<unmatched>"]


async def test_pool_gauges_follow_checkouts(tmp_path: Any) -> None:
    engine = create_engine(Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/pool.db"))
    size_before, in_use_before = sample("todo_db_pool_size"), sample("todo_db_pool_checked_out")
    stop = instrument_pool(engine)
    try:
        assert sample("todo_db_pool_size") == size_before + 1
        async with engine.connect():
            assert sample("todo_db_pool_checked_out") == in_use_before + 1
        assert sample("todo_db_pool_checked_out") == in_use_before
    finally:
        stop()
        await engine.dispose()
    assert sample("todo_db_pool_size") == size_before


def test_log_level_is_case_insensitive() -> None:
    assert make_settings("sqlite+aiosqlite://", log_level="debug").log_level == "DEBUG"
