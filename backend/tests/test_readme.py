"""The README stays true: the configuration table, the fetch example, `make token`."""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from backend.config import Settings
from backend.tests.factories import auth_headers, make_token
from backend.tests.live_server import live_server

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def documented_default(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]*)` \|", README, flags=re.MULTILINE))
    expected = {name.upper(): documented_default(field.default) for name, field in Settings.model_fields.items()}
    assert rows == expected


def fetch_example() -> str:
    section = README[README.index("## Frontend integration") :]
    return section[section.index("```js\n") + len("```js\n") : section.index("\n```", section.index("```js"))]


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but node is not installed")
        pytest.skip("node not installed")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("readme")) as base_url:
        yield base_url


@pytest.mark.slow
def test_the_fetch_example_reads_the_list_headers(node: str, server: str, tmp_path: Path) -> None:
    for number in range(3):
        response = httpx.post(f"{server}/api/tasks", json={"title": f"Task {number}"}, headers=auth_headers("ivan"))
        assert response.status_code == 201
    script = tmp_path / "example.js"
    script.write_text(
        fetch_example()
        + "\nlistTasks(process.argv[2], process.argv[3], { limit: 2 })"
        + ".then((page) => console.log(JSON.stringify(page)));\n"
    )

    result = subprocess.run(
        [node, str(script), server, make_token("ivan")], capture_output=True, text=True, timeout=30, check=True
    )

    page = json.loads(result.stdout)
    assert page["total"] == 3
    assert [task["title"] for task in page["tasks"]] == ["Task 2", "Task 1"]
    assert page["next"].startswith(f"{server}/api/tasks?")  # the relative Link, resolved against the API's URL
    assert "page=2" in page["next"]
    assert page["prev"] is None


@pytest.mark.parametrize(
    ("make_arguments", "expected_user"),
    [
        pytest.param([], "alice", id="default"),
        pytest.param(["USER=bob"], "bob", id="user-on-the-command-line"),
    ],
)
def test_make_token_mints_for_the_user_named_on_the_command_line(make_arguments: list[str], expected_user: str) -> None:
    """`make token` is alice's unless USER= is given: the login name in the environment is not taken."""
    environment = {**os.environ, "USER": "login-name"}
    result = subprocess.run(
        ["make", "-s", "token", *make_arguments],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    claims = jwt.decode(result.stdout.strip().splitlines()[-1], options={"verify_signature": False})
    assert claims["sub"] == expected_user
