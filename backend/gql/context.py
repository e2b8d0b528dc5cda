"""The GraphQL request context: the same authentication and database access as REST."""

from fastapi import Request
from strawberry.fastapi import BaseContext

from backend.auth import authenticate
from backend.config import Settings
from backend.db import Database
from backend.errors import Unauthenticated
from backend.gql.loaders import UserLoader, UserTasksLoader
from backend.principal import Principal


class Context(BaseContext):
    def __init__(self, principal: Principal | None, db: Database, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        # Sibling fields resolve concurrently: `Database` gives them its connection one at a time.
        self.db = db
        self._principal = principal
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


async def get_context(request: Request) -> Context:
    """Strawberry's context_getter, a FastAPI dependency: the token is checked (and one unit of the
    rate budget charged) before Strawberry parses the request, as on REST."""
    principal = await authenticate(request, required=False)
    state = request.app.state
    return Context(principal, state.datastore.for_request(), state.settings)
