"""FastAPI's side of authentication: the bearer token is checked before anything else about a request,
and every handler gets one `RequestContext` (the verified principal and the request's database access)."""

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from backend.db import Database
from backend.errors import DomainError, ServiceUnavailable, Unauthenticated
from backend.principal import Principal
from backend.rate_limit import enforce_rate_limit
from backend.tokens import bearer_token

# The scheme OpenAPI (Swagger's "Authorize" button) shows on every AuthenticatedRoute; the check itself is
# `authenticate`. Declared rather than a FastAPI Security dependency: that would be one more dependency to
# solve on every request, to parse the header a second time.
BEARER_SCHEME_NAME = "HTTPBearer"
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A Better Auth JWT: `Authorization: Bearer <token>`",
}


async def authenticate(request: Request, *, required: bool = True) -> Principal | None:
    """Verify the bearer token, then charge the caller's rate budget (user, else client IP).

    The rate limit runs before a failed authentication is reported, so floods of bad tokens
    are limited too. With `required=False` a request without any Authorization header passes
    as anonymous (GraphQL introspection); a present but invalid token still fails.
    """
    authorization = request.headers.get("authorization")
    principal: Principal | None = None
    failure: DomainError | None = None
    try:
        principal = await request.app.state.token_verifier.verify(bearer_token(authorization))
    except (Unauthenticated, ServiceUnavailable) as exc:
        failure = exc
    request.state.principal = principal
    await enforce_rate_limit(request)
    if failure is not None and (required or authorization is not None):
        raise failure
    return principal


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler needs besides its input: who is calling, and the way to their data."""

    principal: Principal
    db: Database


async def get_request_context(request: Request) -> RequestContext:
    """The principal `AuthenticatedRoute` verified before FastAPI read the body, and a `Database`."""
    principal: Principal = request.state.principal
    return RequestContext(principal=principal, db=request.app.state.datastore.for_request())


class AuthenticatedRoute(APIRoute):
    """Authenticates (and rate-limits) before FastAPI reads the body, so a bad token always wins."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = kwargs.pop("openapi_extra", None) or {}
        super().__init__(path, endpoint, openapi_extra={**extra, "security": [{BEARER_SCHEME_NAME: []}]}, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def authenticated_handler(request: Request) -> Response:
            await authenticate(request)
            return await handle(request)

        return authenticated_handler


ContextDep = Annotated[RequestContext, Depends(get_request_context)]


def document_bearer_scheme(app: FastAPI) -> None:
    """Add the bearer scheme the AuthenticatedRoutes name to the OpenAPI document's components."""
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            components = build_openapi().setdefault("components", {})
            components.setdefault("securitySchemes", {})[BEARER_SCHEME_NAME] = BEARER_SCHEME
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def check_authenticated_routes(app: FastAPI) -> None:
    """Refuse to start when a route takes `ContextDep` without being an `AuthenticatedRoute`.

    Its handler would find no verified principal, and a router that forgot `route_class` would
    otherwise only show it as a 500 at run time.
    """
    for context in iter_route_contexts(app.routes):  # routers included into routers, too
        route = context.original_route
        if isinstance(route, APIRoute) and _depends_on(route.dependant, get_request_context):
            if not isinstance(route, AuthenticatedRoute):
                raise RuntimeError(
                    f"{context.path_format} ({route.name}) takes ContextDep but is not an AuthenticatedRoute: "
                    "give its APIRouter route_class=AuthenticatedRoute"
                )


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)
