"""Run GraphQL tests in both execution modes: compiled plans (GRAPHQL_COMPILED=true, the default) and
graphql-core alone.

A pytest plugin (conftest.py lists it in `pytest_plugins`). Mark a module (`pytestmark =
pytest.mark.graphql_modes`) or a test, and each of its tests runs twice, `[compiled]` and
`[graphql-core]`, on the `app` fixture with its settings switched before the test's first request.
Unmarked tests, and marked ones that do not use the app, are left alone.
"""

from typing import Any

import pytest

MODES = ("compiled", "graphql-core")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "graphql_modes: run the test with compiled GraphQL plans and without them")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("graphql_modes") is not None
    if marked and "app" in metafunc.fixturenames:  # a test without the app (schema checks) runs once
        metafunc.parametrize("graphql_mode", MODES, indirect=True)


@pytest.fixture(autouse=True)
def graphql_mode(request: pytest.FixtureRequest) -> Any:
    """The mode of a marked test (its app switched to it); None for any other test."""
    mode: str | None = getattr(request, "param", None)
    if mode is None:
        return None
    app = request.getfixturevalue("app")
    app.state.settings = app.state.settings.model_copy(update={"graphql_compiled": mode == "compiled"})
    return mode
