"""The GraphQL request context: the same principal and session dependencies as REST."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.fastapi import BaseContext

from backend.auth import OptionalPrincipalDep
from backend.config import Settings
from backend.db import SessionDep
from backend.errors import Unauthenticated
from backend.gql.loaders import UserLoader, UserTasksLoader
from backend.principal import Principal


class Context(BaseContext):
    def __init__(self, session: AsyncSession, principal: Principal | None, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self._session = session
        # Sibling fields resolve concurrently and an AsyncSession runs one statement at a time.
        self._session_lock = asyncio.Lock()
        self._principal = principal
        self._closed = False
        self.users = UserLoader(self)
        self.user_tasks = UserTasksLoader(self)

    @property
    def anonymous(self) -> bool:
        """No Authorization header at all: only introspection may run."""
        return self._principal is None

    @property
    def principal(self) -> Principal:
        """The caller; anonymous requests may only introspect."""
        if self._principal is None:
            raise Unauthenticated("Missing bearer token")
        return self._principal

    @asynccontextmanager
    async def db(self) -> AsyncIterator[AsyncSession]:
        """Exclusive use of the request's session for one service call."""
        async with self._session_lock:
            if self._closed:
                raise RuntimeError("the GraphQL request has already finished")
            yield self._session

    async def close(self) -> None:
        """Wait for a resolver still using the session, then refuse further use.

        When a non-null field fails, graphql-core answers without awaiting its siblings;
        they must not touch the session while it is being closed.
        """
        async with self._session_lock:
            self._closed = True


async def _open_context(
    request: Request, session: SessionDep, principal: OptionalPrincipalDep
) -> AsyncIterator[Context]:
    context = Context(session, principal, request.app.state.settings)
    try:
        yield context
    finally:
        await context.close()


async def get_context(context: Annotated[Context, Depends(_open_context, scope="function")]) -> Context:
    """Strawberry's context_getter: a FastAPI dependency, like every REST handler's."""
    return context
