"""README's "Try it" runs as written (only the address differs) and ends with something to see."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from backend.tests.factories import TEST_SECRET
from backend.tests.live_server import live_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def try_it_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("\n```", start)]


def test_try_it_runs_verbatim_and_ends_with_the_completed_task(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with live_server(tmp_path) as base_url:
        address = base_url.removeprefix("http://")
        script = try_it_block().replace("localhost:8000", address)
        environment = {**os.environ, "BETTER_AUTH_SECRET": TEST_SECRET}  # what `make token` signs with
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
    created, overdue, completed, listed = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert created["title"] == "Buy milk"
    assert overdue["data"]["tasks"]["items"][0]["title"] == "Buy milk"
    assert re.fullmatch(r'"[0-9a-f]{24}"', overdue["data"]["tasks"]["items"][0]["version"])
    assert completed["data"]["completeTasks"] == [{"id": str(created["id"]), "title": "Buy milk", "completed": True}]
    assert [(task["title"], task["completed"]) for task in listed] == [("Buy milk", True)]
