"""The domain errors both transports render: a status, a stable code and a readable message.

No web framework here: services raise these; `backend/http_errors.py` renders them for REST and
`backend/gql/errors.py` for GraphQL.
"""

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

RETRY_AFTER_DB_SECONDS = 5


class DomainError(Exception):
    """An expected outcome the client must see: status, a stable code and a readable message."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    default_message: ClassVar[str] = "Bad request"

    def __init__(self, message: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = dict(headers or {})
        super().__init__(self.message)

    @property
    def extensions(self) -> dict[str, Any]:
        """What GraphQL clients read (graphql-core copies it into the error): the code, and a retry
        delay where the client should wait."""
        extensions: dict[str, Any] = {"code": self.code}
        retry_after = self.headers.get("Retry-After")
        if retry_after is not None and retry_after.isdigit():
            extensions["retryAfter"] = int(retry_after)
        return extensions


# RFC 6750 3: error_description holds only %x20-21 / %x23-5B / %x5D-7E. Everything else, `%` included,
# is percent-encoded (UTF-8), so text taken from a token can never break or forge the header.
_AUTH_PARAM_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) not in '"\\%')


def auth_param_value(text: str) -> str:
    return quote(text, safe=_AUTH_PARAM_SAFE)


class Unauthenticated(DomainError):
    status_code = 401
    code = "UNAUTHENTICATED"
    default_message = "Missing bearer token"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        description = auth_param_value(self.message)
        self.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{description}"'


class Forbidden(DomainError):
    status_code = 403
    code = "FORBIDDEN"
    default_message = "You may only access your own tasks"


class QuotaExceeded(DomainError):
    status_code = 403
    code = "QUOTA_EXCEEDED"
    default_message = "Task quota reached: delete tasks before creating more"


class NotFound(DomainError):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "Task not found"

    def __init__(self, message: str | None = None, *, ids: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ids = list(ids)

    @property
    def extensions(self) -> dict[str, Any]:
        """With `ids` when several tasks were asked for: the ones missing (GraphQL IDs are strings)."""
        return {**super().extensions, "ids": [str(task_id) for task_id in self.ids]} if self.ids else super().extensions


class Conflict(DomainError):
    status_code = 409
    code = "CONFLICT"
    default_message = "A request with this Idempotency-Key is still in progress"


class PreconditionFailed(DomainError):
    status_code = 412
    code = "PRECONDITION_FAILED"
    default_message = "The task has changed since you read it (If-Match does not match its ETag)"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body too large"


FieldPath = tuple[str | int, ...]


class InvalidInput(DomainError):
    status_code = 422
    code = "BAD_USER_INPUT"
    default_message = "Invalid input"

    def __init__(self, message: str | None = None, *, fields: Sequence[tuple[FieldPath, str]] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)

    @property
    def extensions(self) -> dict[str, Any]:
        """`fields`: one `{path, message}` per invalid field, paths as in REST's 422 `loc`, in camelCase."""
        fields = [{"path": list(path), "message": message} for path, message in self.fields]
        return {**super().extensions, "fields": fields}


class RateLimited(DomainError):
    status_code = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests: retry in {retry_after} s", headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "The database is unavailable; retry shortly"

    def __init__(self, message: str | None = None, *, retry_after: int = RETRY_AFTER_DB_SECONDS) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def as_domain_error(exc: BaseException) -> DomainError | None:
    """Map infrastructure failures the client can retry (database down, pool exhausted) to 503."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, PoolTimeoutError):
        return ServiceUnavailable("The server is busy; retry shortly")
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    ):
        return ServiceUnavailable()
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | OSError):
        return ServiceUnavailable()
    if isinstance(exc, DBAPIError) and _is_connection_failure(exc.orig):
        return ServiceUnavailable()
    return None


def _is_connection_failure(orig: BaseException | None) -> bool:
    # asyncpg's connection and timeout errors (class 08, 57P0x, query_canceled) reach
    # SQLAlchemy as a generic DBAPIError.
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "57P", "53")) or sqlstate == "57014"


def readable_validation_errors(errors: Sequence[Any]) -> str:
    """`body.title: must not be blank; query.limit: ...` out of pydantic's error list."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
        if error.get("type") == "json_invalid":
            parts.append("Request body is not valid JSON")
            continue
        message = _message(error)
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "Invalid input"


def invalid_input(errors: Sequence[Any], *, at: FieldPath = ()) -> InvalidInput:
    """BAD_USER_INPUT out of pydantic's errors for an argument at `at`: REST's message, and a field per error
    in camelCase (`input.dueDate`), as GraphQL clients name them."""
    fields = [((*at, *(_camel(part) for part in error.get("loc", ()))), _message(error)) for error in errors]
    return InvalidInput(readable_validation_errors(errors), fields=fields)


def _message(error: Any) -> str:
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def _camel(part: str | int) -> str | int:
    if isinstance(part, int):
        return part
    head, *rest = part.split("_")
    return head + "".join(word.title() for word in rest)
