"""Several uvicorn workers, one set of metrics: prometheus-client's multiprocess mode, as in the Docker image."""

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.tests.factories import auth_headers
from backend.tests.live_server import live_server

WORKERS = 2
REQUESTS = 12
STARTUP_SECONDS = 20


def wait_for_all_workers(base_url: str) -> None:
    """/health answers as soon as one worker is up; the pool gauge counts the workers that started."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while samples(httpx.get(f"{base_url}/metrics").text, "todo_db_pool_size") < WORKERS:
        assert time.monotonic() < deadline, "not every worker started"
        time.sleep(0.2)


def samples(exposition: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.slow
def test_a_scrape_of_any_worker_reports_all_workers(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    with live_server(tmp_path, workers=WORKERS, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as base_url:
        wait_for_all_workers(base_url)
        for _ in range(REQUESTS):
            # A new connection each time, so the kernel spreads them over the workers.
            assert httpx.get(f"{base_url}/api/me", headers=auth_headers()).status_code == 200
        scrapes = [httpx.get(f"{base_url}/metrics").text for _ in range(4)]

    for exposition in scrapes:
        assert samples(exposition, "http_requests_total", route="/api/me", status="200") == REQUESTS
        # Every worker's pool (SQLite: one connection each) adds to the one gauge.
        assert samples(exposition, "todo_db_pool_size") == WORKERS
