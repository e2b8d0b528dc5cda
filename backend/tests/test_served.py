"""The app as deployed: uvicorn in its own process, spoken to over real sockets.

No server banner, protocol-level abuse answered with a 4xx, chunked bodies over the limit, and a
Redis that is down from the start: requests are served and the log says why limits are local.
"""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.tests.external_servers import free_port, uvicorn_server
from backend.tests.factories import TEST_SECRET, auth_headers
from backend.tests.live_server import live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served") / "uvicorn.log"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, log: Path) -> Iterator[str]:
    env = {
        "APP_ENV": "test",
        "BETTER_AUTH_SECRET": TEST_SECRET,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('served-db') / 'todo.db'}",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "RATE_LIMIT": "1000/minute",
    }
    with uvicorn_server(env, log=log) as url:
        yield url


def raw_request(base_url: str, request: bytes) -> bytes:
    """The response's status line and headers (not waiting for a kept-alive connection to close)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
            received += chunk
    return received


def status_of(raw_response: bytes) -> int:
    return int(raw_response.split(b" ", 2)[1])


def test_no_server_banner_and_security_headers(base_url: str) -> None:
    response = httpx.get(f"{base_url}/api/tasks", headers=auth_headers("alice"))
    assert response.status_code == 200
    assert "server" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_served_without_redis_and_the_log_says_so(base_url: str, log: Path) -> None:
    for _ in range(3):
        assert httpx.get(f"{base_url}/api/tasks", headers=auth_headers("alice")).status_code == 200
    assert "rate limit storage unreachable" in log.read_text()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /api/tasks HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 200_000 + b"\r\n\r\n", id="huge header"
        ),
        pytest.param(
            b"GET /api/tasks?search=\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="raw bytes"
        ),
        pytest.param(b"GET /api/tasks/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id="bad escape"),
        pytest.param(b"GARBAGE\x00\r\n\r\n", id="not HTTP"),
        pytest.param(
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n"
            b"Connection: close\r\n\r\n{}",
            id="huge content-length",
        ),
    ],
)
def test_protocol_abuse_is_a_4xx_and_the_server_carries_on(base_url: str, request_bytes: bytes) -> None:
    assert 400 <= status_of(raw_request(base_url, request_bytes)) < 500
    assert httpx.get(f"{base_url}/api/tasks", headers=auth_headers("alice")).status_code == 200


def test_chunked_body_over_the_limit_is_413_over_the_wire(base_url: str) -> None:
    body = json.dumps({"title": "x" * 70_000}).encode()
    response = httpx.post(
        f"{base_url}/api/tasks",
        content=iter([body[:30_000], body[30_000:]]),
        headers={**auth_headers("alice"), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert response.request.headers["Transfer-Encoding"] == "chunked"


def test_uvicorn_main_app_from_inside_backend_serves_the_api(tmp_path: Path) -> None:
    """`cd backend && uvicorn main:app` works as well as `uvicorn backend.main:app` from the root."""
    backend_dir = Path(__file__).resolve().parents[1]

    with live_server(tmp_path, app="main:app", cwd=backend_dir) as url:
        created = httpx.post(f"{url}/api/tasks", json={"title": "From backend/"}, headers=auth_headers("uma"))
        listed = httpx.get(f"{url}/api/tasks", headers=auth_headers("uma"))

    assert created.status_code == 201, created.text
    assert [task["title"] for task in listed.json()] == ["From backend/"]
