"""Schemathesis over the app's own OpenAPI document, with a bearer token and without one.

Every generated request, valid or deliberately invalid, must get a documented status with a body
matching its documented schema, and never a 5xx. PostgreSQL is the database: it refuses more (NUL
bytes, integer overflow) than SQLite, so it finds more. Examples are bounded and derandomised
to keep CI fast and stable.

Schemathesis' own pytest integration (`from_fixture`) does not run on pytest 9, so each operation
gets a Hypothesis test of its own here, built from the operation's strategy.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.db import Datastore, create_engine, migrate_to_head
from backend.main import create_app
from backend.tests.conftest import create_scratch_database, drop_scratch_database, make_settings
from backend.tests.external_servers import record_figure
from backend.tests.factories import auth_headers, create_task, principal

pytestmark = pytest.mark.slow

USER = "fuzz-user"
EXISTING_TASKS = 20  # ids 1..20 exist, so that generated ids sometimes hit a task
EXAMPLES = 50  # per operation, mode and identity
CASES: dict[str, int] = {}
# What the contract promises. Not positive_data_acceptance / negative_data_rejection: the schema
# does not spell out every input rule (no control characters, not blank after trimming), and
# fields a body may not set are ignored by contract rather than refused.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
async def api_schema() -> AsyncIterator[Any]:
    url = await create_scratch_database("todo_fuzz")
    config = make_settings(url, rate_limit="1000000/minute")
    engine = create_engine(config)
    await migrate_to_head(engine)
    datastore = Datastore.pooled(engine, config)
    for number in range(EXISTING_TASKS):
        await create_task(datastore.for_request(), principal(USER), title=f"task {number}", tags=["fuzz"])
    await engine.dispose()
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(config))
    finally:
        asgi.shutdown_lifespans()  # schemathesis runs the app's lifespan in a thread of its own
        await drop_scratch_database(url)
        record_figure("Schemathesis", ", ".join(f"{count} {kind}" for kind, count in CASES.items()))


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def fuzz(operation: Any, mode: GenerationMode, label: str, headers: dict[str, str] | None) -> None:
    fixed = {"user_id": USER} if headers and "user_id" in operation.path_parameters else None

    @FUZZ
    @given(case=operation.as_strategy(mode, path_parameters=fixed))
    def run(case: Any) -> None:
        CASES[label] = CASES.get(label, 0) + 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        # An operation without inputs (GET /graphql declares none) has no invalid variant.
    except Exception as exc:
        exc.add_note(f"operation: {operation.label}, {mode.value} data")
        raise


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
@pytest.mark.parametrize("identity", ["authenticated", "anonymous"])
def test_every_operation_conforms(api_schema: Any, identity: str, mode: GenerationMode) -> None:
    headers = auth_headers(USER) if identity == "authenticated" else None
    found = operations(api_schema)
    assert len(found) >= 18, [o.label for o in found]
    for operation in found:
        fuzz(operation, mode, f"{identity} {mode.value} cases", headers)
