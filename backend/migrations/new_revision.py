"""`make migration MSG="..."`: autogenerate the next revision from the models.

Autogenerate compares the models with a database at the newest revision: a scratch PostgreSQL
database, made on the server that --admin-url names, migrated to head, dropped afterwards. The
revision is named after its number and message (0003_add_task_notes.py); review it before committing
(the README says what autogenerate cannot write).
"""

import argparse
import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from backend.database_url import normalize_database_url
from backend.migrations import MIGRATIONS_DIR

REPO_ROOT = MIGRATIONS_DIR.parents[1]
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def next_revision_id(versions: Path, message: str) -> str:
    """The next four-digit number, then the message as a file-name slug: `0003_add_task_notes`."""
    numbers = [int(match[1]) for path in versions.glob("*.py") if (match := re.match(r"(\d{4})_", path.name))]
    # alembic_version.version_num is VARCHAR(32): four digits, "_", and at most 27 more.
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:27].rstrip("_")
    if not slug:
        raise ValueError("MSG must contain letters or digits: it names the revision")
    return f"{max(numbers, default=0) + 1:04d}_{slug}"


def alembic_cli_config(script_location: Path) -> Config:
    """alembic.ini (file names, ruff on the new file), pointed at `script_location`."""
    config = Config(REPO_ROOT / "alembic.ini")
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    return config


async def _admin(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(make_url(admin_url).set(drivername="postgresql").render_as_string(False))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def generate(admin_url: str, message: str, script_location: Path) -> None:
    rev_id = next_revision_id(script_location / "versions", message)
    name = f"todo_migration_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        engine = create_async_engine(normalize_database_url(admin_url).set(database=name))
        config = alembic_cli_config(script_location)

        def autogenerate(connection: Connection) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            command.revision(config, message=message, autogenerate=True, rev_id=rev_id)

        try:
            async with engine.begin() as connection:
                await connection.run_sync(autogenerate)
        finally:
            await engine.dispose()
    finally:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("message", help="what the revision changes, e.g. 'add task notes'")
    parser.add_argument(
        "--admin-url", default=DEFAULT_ADMIN_URL, help="a PostgreSQL server to make a scratch database on"
    )
    parser.add_argument("--script-location", type=Path, default=MIGRATIONS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        asyncio.run(generate(args.admin_url, args.message, args.script_location))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
