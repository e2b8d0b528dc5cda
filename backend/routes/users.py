"""GET /api/me (alias /api/users/me): who the token says you are."""

from fastapi import APIRouter

from backend.auth import AuthenticatedRoute, ContextDep
from backend.http_errors import ERROR_RESPONSES
from backend.schemas import UserPublic
from backend.services import users as user_service

router = APIRouter(tags=["users"], route_class=AuthenticatedRoute, responses=ERROR_RESPONSES)


@router.get("/me", summary="The authenticated user")
async def get_me(context: ContextDep) -> UserPublic:
    """Your id, e-mail and name, as Better Auth stores them (else as your token carries them)."""
    return await user_service.get_me(context.db, context.principal)


@router.get("/users/me", summary="The authenticated user (alias of /api/me)")
async def get_users_me(context: ContextDep) -> UserPublic:
    """Alias of `GET /api/me`."""
    return await user_service.get_me(context.db, context.principal)
