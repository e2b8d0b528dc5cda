"""`make run`'s greeting: where the API, Swagger UI and GraphiQL are, and a token to try them with."""

import argparse

from sqlalchemy.engine import make_url

from backend.config import Settings, get_settings
from backend.dev_token import mint_dev_token
from backend.explorers import ASSETS_DIR

DEV_USER = "alice"


def banner(settings: Settings, base_url: str) -> str:
    token = mint_dev_token(settings, DEV_USER)
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    lines = [
        "",
        f"  REST API    {base_url}/api/tasks",
        f"  Swagger UI  {base_url}/docs      Authorize: paste the token below",
        f"  GraphiQL    {base_url}/graphql   Headers tab: paste the JSON line below",
        f"  Probes      {base_url}/health  {base_url}/ready  {base_url}/metrics",
        f"  Database    {database}",
        "",
        f"  A token for user '{DEV_USER}', valid 24 h (another user: make token USER=bob):",
        f"  {token}",
        f'  {{"Authorization": "Bearer {token}"}}',
        f"  curl -H 'Authorization: Bearer {token}' {base_url}/api/tasks",
        "",
    ]
    if not settings.graphiql_enabled:
        lines.insert(-1, "  GraphiQL is off (APP_ENV=production or GRAPHIQL=false).")
    if not (ASSETS_DIR / "graphiql").is_dir():
        lines.insert(-1, "  Explorer assets are missing: /docs and /graphql need `make install` with npm.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the API listens")
    print(banner(get_settings(), parser.parse_args().url.rstrip("/")))


if __name__ == "__main__":
    main()
