"""The OpenAPI document that frontends generate clients from: its operation ids are an interface."""

from typing import Any

import pytest

from backend.main import create_app
from backend.tests.conftest import make_settings

# A renamed or vanished id silently breaks every generated client: change this list deliberately.
OPERATION_IDS = {
    ("GET", "/api/me"): "get_me",
    ("GET", "/api/users/me"): "get_users_me",
    ("GET", "/api/tasks"): "list_tasks",
    ("POST", "/api/tasks"): "create_task",
    ("GET", "/api/tasks/{task_id}"): "get_task",
    ("PUT", "/api/tasks/{task_id}"): "replace_task",
    ("PATCH", "/api/tasks/{task_id}"): "update_task",
    ("DELETE", "/api/tasks/{task_id}"): "delete_task",
    ("PATCH", "/api/tasks/{task_id}/complete"): "complete_task",
    ("GET", "/api/{user_id}/tasks"): "list_tasks_for_user",
    ("POST", "/api/{user_id}/tasks"): "create_task_for_user",
    ("GET", "/api/{user_id}/tasks/{task_id}"): "get_task_for_user",
    ("PUT", "/api/{user_id}/tasks/{task_id}"): "replace_task_for_user",
    ("PATCH", "/api/{user_id}/tasks/{task_id}"): "update_task_for_user",
    ("DELETE", "/api/{user_id}/tasks/{task_id}"): "delete_task_for_user",
    ("PATCH", "/api/{user_id}/tasks/{task_id}/complete"): "complete_task_for_user",
    ("GET", "/graphql"): "graphql_get",
    ("POST", "/graphql"): "graphql_post",
}
ERROR_MODELS = {"#/components/schemas/ErrorResponse", "#/components/schemas/ValidationErrorResponse"}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(make_settings("sqlite+aiosqlite://")).openapi()
    return schema


def operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in openapi["paths"].items() for method, op in item.items()}


def rest_operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {key: op for key, op in operations(openapi).items() if key[1].startswith("/api/")}


def test_operation_ids_are_exactly_the_published_ones(openapi: dict[str, Any]) -> None:
    assert {key: op["operationId"] for key, op in operations(openapi).items()} == OPERATION_IDS


def test_every_operation_is_tagged_and_summarised(openapi: dict[str, Any]) -> None:
    declared_tags = {tag["name"] for tag in openapi["tags"]}
    for key, op in operations(openapi).items():
        assert op["tags"], key
        assert set(op["tags"]) <= declared_tags, key
    for key, op in rest_operations(openapi).items():
        assert op.get("summary"), key


def test_rest_operations_require_the_bearer_scheme(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A Better Auth JWT: `Authorization: Bearer <token>`",
    }
    for key, op in rest_operations(openapi).items():
        assert op["security"] == [{"HTTPBearer": []}], key


def test_every_rest_error_response_has_its_model(openapi: dict[str, Any]) -> None:
    for key, op in rest_operations(openapi).items():
        errors = {status: response for status, response in op["responses"].items() if int(status) >= 400}
        assert {"401", "422", "429", "503"} <= set(errors), key
        for status, response in errors.items():
            schema_ref = response["content"]["application/json"]["schema"]["$ref"]
            assert schema_ref in ERROR_MODELS, (key, status)
            assert response["description"], (key, status)


def test_every_request_body_has_an_example(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    bodies = [op["requestBody"] for op in rest_operations(openapi).values() if "requestBody" in op]
    assert len(bodies) == 8
    for body in bodies:
        schema = body["content"]["application/json"]["schema"]
        ref = schema.get("$ref") or next(option["$ref"] for option in schema["anyOf"] if "$ref" in option)
        assert schemas[ref.rsplit("/", 1)[1]]["examples"], ref
