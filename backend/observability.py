"""Request ids, one access log line per request, JSON or text logs, and request metrics (pure ASGI).

Log lines carry attacker-chosen text (user ids from tokens, methods, exception messages), so both
formats keep every record on its own line whatever that text holds.
"""

import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fastapi.routing import iter_route_contexts
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import metrics
from backend.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
# Ids from a proxy or client are kept when they are short and plain (uuid, ulid, hex, base64);
# anything else could forge log lines or headers, so the request gets a fresh id instead.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
NO_REQUEST_ID = "-"
UNMATCHED_ROUTE = "<unmatched>"
CORS_PREFLIGHT_ROUTE = "<cors-preflight>"  # answered by CORSMiddleware before any route is chosen
# Load balancers and Prometheus call these every few seconds: their lines go to DEBUG.
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = ("levelname", "name", "message", "request_id")
JSON_RENAMED_FIELDS = {"levelname": "level", "name": "logger"}
JSON_SKIPPED_ATTRS = (*RESERVED_ATTRS, "color_message")  # uvicorn's ANSI-coloured copy of the message
# Every line of a traceback starts with this, so a line that does not always starts a new record.
CONTINUATION_PREFIX = "  | "
# orjson writes these raw; str.splitlines() and some log shippers split lines on them.
_JSON_LINE_SEPARATORS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

_request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST_ID)
access_logger = logging.getLogger("backend.access")


def request_id_of(request: Request) -> str:
    """The id of a request whose middleware context has already ended (the 500 handler runs outside it)."""
    return str(request.scope.get("state", {}).get("request_id", NO_REQUEST_ID))


@contextmanager
def request_id_bound(request_id: str) -> Iterator[None]:
    """Log records created inside carry `request_id` (the middleware binds it for each request)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def _install_request_id_record_factory() -> None:
    # A record factory, not a handler filter: every handler sees the id, including ones
    # added later (pytest's caplog, an APM agent's).
    base_factory = logging.getLogRecordFactory()
    if getattr(base_factory, "adds_request_id", False):
        return

    def record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base_factory(*args, **kwargs)
        record.__dict__["request_id"] = _request_id.get()
        return record

    record_with_request_id.adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record_with_request_id)


def escape_unprintable(text: str) -> str:
    """`text` on one line: each character repr() would escape (newline, CR, U+2028, U+0085, other C0/C1
    controls, bidi overrides, lone surrogates, ...) is written as that escape instead."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class SingleLineFormatter(logging.Formatter):
    """Text lines: the message and its fields escaped onto one line; a traceback or stack follows on
    indented lines, escaped too, so no text in it can start a line that looks like a record."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [escape_unprintable(self.formatMessage(record))]
        # Formatted here, not taken from record.exc_text: another handler's formatter may have cached it.
        if record.exc_info:
            lines.extend(_continuation(self.formatException(record.exc_info)))
        elif record.exc_text:
            lines.extend(_continuation(record.exc_text))
        if record.stack_info:
            lines.extend(_continuation(self.formatStack(record.stack_info)))
        return "\n".join(lines)


def _continuation(text: str) -> list[str]:
    return [CONTINUATION_PREFIX + escape_unprintable(line) for line in text.split("\n")]


class SingleLineJsonFormatter(OrjsonFormatter):
    """One JSON object per line, also for readers that split on U+2028/U+2029/U+0085, and also when a
    value holds a lone surrogate (orjson refuses those, which would lose the record)."""

    def jsonify_log_record(self, log_data: Any) -> str:
        try:
            text = super().jsonify_log_record(log_data)
        except TypeError:  # orjson.JSONEncodeError
            text = super().jsonify_log_record(_surrogates_escaped(log_data))
        return text if text.isascii() else text.translate(_JSON_LINE_SEPARATORS)


def _surrogates_escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_surrogates_escaped(key): _surrogates_escaped(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_surrogates_escaped(item) for item in value]
    return value


class _AppLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one root handler this app installs; found again when another app is created in-process."""


def configure_logging(settings: Settings) -> None:
    formatter: logging.Formatter
    if settings.log_format == "json":
        formatter = SingleLineJsonFormatter(
            JSON_FIELDS, rename_fields=JSON_RENAMED_FIELDS, reserved_attrs=JSON_SKIPPED_ATTRS, timestamp="time"
        )
    else:
        formatter = SingleLineFormatter(TEXT_FORMAT)
    _install_request_id_record_factory()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _AppLogHandler)), None)
    if handler is None:
        handler = _AppLogHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(settings.log_level)
    # uvicorn's own lines go through the same handler and format; its access log would
    # duplicate ours, which knows the route template and the user.
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _SAFE_REQUEST_ID.fullmatch(candidate) else None
    return None


class RouteTemplates:
    """The path template of the route that served a request, e.g. `/api/{user_id}/tasks/{task_id}`.

    FastAPI puts the selected route in `scope["route"]`, but a router included twice (under
    /api/tasks and /api/{user_id}/tasks) shares its route objects, so the template comes from
    FastAPI's route contexts, indexed once, with the path deciding between prefixes.


    Requests no route claims get a fixed label too: a mount's template (FastAPI does not set
    `scope["route"]` for mounts), `<cors-preflight>`, else `<unmatched>`. So every label comes from
    the app's own routes, never from the request.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._by_route: dict[int, list[tuple[re.Pattern[str], str]]] = defaultdict(list)
        for context in iter_route_contexts(routes):
            path_regex, path_format = getattr(context, "path_regex", None), context.path_format
            if path_regex is not None and path_format:
                self._by_route[id(context.original_route)].append((path_regex, path_format))
        self._mounts = [(mount.path_regex, mount.path_format) for mount in routes if isinstance(mount, Mount)]

    def template(self, scope: Scope, path: str) -> str:
        """`path`: the request's path below the app's root path, taken before routing (a mount
        extends `scope["root_path"]`)."""
        route = scope.get("route")
        if route is None:
            return self._template_without_route(scope, path)
        candidates = self._by_route.get(id(route))
        if not candidates:
            return str(getattr(route, "path_format", UNMATCHED_ROUTE))  # a Mount: "/static/{path}"
        if len(candidates) == 1:
            return candidates[0][1]
        return next((template for regex, template in candidates if regex.match(path)), candidates[0][1])

    def _template_without_route(self, scope: Scope, path: str) -> str:
        if _is_cors_preflight(scope):
            return CORS_PREFLIGHT_ROUTE
        return next((template for regex, template in self._mounts if regex.match(path)), UNMATCHED_ROUTE)


def _is_cors_preflight(scope: Scope) -> bool:
    """Starlette's CORSMiddleware's own test: OPTIONS with Origin and Access-Control-Request-Method."""
    if scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


class ObservabilityMiddleware:
    """Outermost middleware: request id in, out and in every log line; one access line; request metrics."""

    def __init__(self, app: ASGIApp, *, record_metrics: bool = True) -> None:
        self.app = app
        self.record_metrics = record_metrics
        self._templates: RouteTemplates | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = _route_path(scope)
        request_id = _incoming_request_id(scope["headers"]) or uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500  # unless a response starts: an exception escaped every handler

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Set, not appended: the 500 handler may have set it already.
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with request_id_bound(request_id):
            try:
                await self.app(scope, receive, send_with_request_id)
            finally:
                self._record(scope, path, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, path: str, state: dict[str, Any], status: int, seconds: float) -> None:
        if self._templates is None:
            # Built on the first request: every route is registered by then.
            self._templates = RouteTemplates(scope["app"].routes)
        route = self._templates.template(scope, path)
        method: str = scope["method"]
        if self.record_metrics:
            metrics.observe_request(method, route, status, seconds)
        level = logging.DEBUG if route in PROBE_ROUTES else logging.INFO
        if access_logger.isEnabledFor(level):
            principal = state.get("principal")
            user_id = principal.user_id if principal is not None else None
            duration_ms = round(seconds * 1000, 1)
            access_logger.log(
                level,
                "%s %s %d %.1fms user=%s",
                method,
                route,
                status,
                duration_ms,
                user_id or "-",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                    "user_id": user_id,
                },
            )
