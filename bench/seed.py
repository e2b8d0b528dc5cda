"""The benchmark's data set, written straight into PostgreSQL with COPY (never through the API).

1,000 users with 50 tasks each and one user with 100,000 tasks: mixed titles, ~40% completed,
70% with a due date, created over 90 days, some priorities, tags and descriptions. The same
seed gives the same rows, so runs compare.

For the search probes, a few rows are titled SELECTIVE_TITLE (its word SELECTIVE_WORD: two tasks per
50-task user, one in 10,000 of the big user's), chosen by position so that every other row stays
what the random generator made; BROAD_WORD is in ~42% of the titles and descriptions.
"""

import json
import random
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

VERBS = ("Buy", "Call", "Write", "Review", "Fix", "Plan", "Book", "Clean", "Read", "Send", "Prepare", "Check")
NOUNS = (
    "milk",
    "the report",
    "dentist",
    "invoice",
    "flight to Berlin",
    "garage",
    "quarterly taxes",
    "birthday gift",
    "pull request #42",
    "Über order",
    "café booking",
    "slides",
    "insurance renewal",
    "kitchen sink",
)
EXTRAS = ("", "", "", " today", " before Friday", " (again)", " with Sam", " — urgent", " for the team offsite")
TAGS = ("work", "home", "errands", "health", "finance", "Urgent", "later", "family", "reading", "ops")
DESCRIPTIONS = (
    "Remember to bring the receipt.",
    "Two litres, semi-skimmed.\nAsk about the discount.",
    "See the thread from last week for details.",
    "Blocked on the vendor's answer.",
)
PRIORITIES = ("low", "medium", "medium", "high")
TASK_COLUMNS = (
    "user_id",
    "title",
    "description",
    "completed",
    "priority",
    "tags",
    "due_date",
    "created_at",
    "updated_at",
)
USER_COLUMNS = ("id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt")
SELECTIVE_WORD = "passport"
SELECTIVE_TITLE = "Renew passport"
BROAD_WORD = "the"
SELECTIVE_ROUNDS = (7, 31)  # a small user's tasks number 7 and 31 (of 50) are titled SELECTIVE_TITLE
SELECTIVE_EVERY = 10_000  # and one in this many of the big user's


@dataclass(frozen=True)
class DataSet:
    small_user_ids: list[str]
    big_user_id: str
    tasks_per_user: int
    big_user_tasks: int
    max_seed_task_id: int  # rows above this id were written by a benchmark case
    seconds: float


def _user_id(rng: random.Random) -> str:
    # Better Auth's ids: 32 letters and digits.
    return "".join(rng.choices(string.ascii_letters + string.digits, k=32))


def _task_row(rng: random.Random, user_id: str, now: datetime, *, selective: bool = False) -> tuple[Any, ...]:
    title = f"{rng.choice(VERBS)} {rng.choice(NOUNS)}{rng.choice(EXTRAS)}"
    if selective:
        title = SELECTIVE_TITLE  # after the draws above, so that the random sequence stays the same
    created_at = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
    updated_at = created_at + timedelta(seconds=rng.uniform(0, 3 * 86400)) if rng.random() < 0.3 else created_at
    updated_at = min(updated_at, now)
    due_date = created_at + timedelta(days=rng.uniform(-2, 30)) if rng.random() < 0.7 else None
    tags = rng.sample(TAGS, rng.randint(1, 3)) if rng.random() < 0.4 else []
    description = rng.choice(DESCRIPTIONS) if rng.random() < 0.3 else None
    return (
        user_id,
        title,
        description,
        rng.random() < 0.4,
        rng.choice(PRIORITIES),
        json.dumps(tags),
        due_date,
        created_at,
        updated_at,
    )


async def seed(
    dsn: str,
    *,
    user_table: str = "user",
    users: int = 1000,
    tasks_per_user: int = 50,
    big_user_tasks: int = 100_000,
    rng_seed: int = 5,
) -> DataSet:
    """Fill an empty schema (tables and indexes already created by the app's own code)."""
    started = time.perf_counter()
    rng = random.Random(rng_seed)
    now = datetime.now(UTC)
    small_user_ids = [_user_id(rng) for _ in range(users)]
    big_user_id = _user_id(rng)
    user_rows = [
        (user_id, f"Bench user {n}", f"{user_id.lower()}@bench.invalid", n % 3 == 0, None, now, now)
        for n, user_id in enumerate([*small_user_ids, big_user_id])
    ]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(user_table, records=user_rows, columns=USER_COLUMNS)
        # Interleave users over time as real traffic would, rather than one user's rows per block.
        small_rows = [
            _task_row(rng, user_id, now, selective=round_ in SELECTIVE_ROUNDS)
            for round_ in range(tasks_per_user)
            for user_id in small_user_ids
        ]
        await connection.copy_records_to_table("tasks", records=small_rows, columns=TASK_COLUMNS)
        big_rows = (
            _task_row(rng, big_user_id, now, selective=n % SELECTIVE_EVERY == SELECTIVE_EVERY // 2)
            for n in range(big_user_tasks)
        )
        await connection.copy_records_to_table("tasks", records=big_rows, columns=TASK_COLUMNS)
        # Fresh statistics and a visibility map, as autovacuum would leave a long-lived table.
        await connection.execute(f'VACUUM ANALYZE "{user_table}"')
        await connection.execute("VACUUM ANALYZE tasks")
        max_id = await connection.fetchval("SELECT max(id) FROM tasks")
    finally:
        await connection.close()
    return DataSet(
        small_user_ids=small_user_ids,
        big_user_id=big_user_id,
        tasks_per_user=tasks_per_user,
        big_user_tasks=big_user_tasks,
        max_seed_task_id=int(max_id),
        seconds=time.perf_counter() - started,
    )


async def forget_users(dsn: str, user_table: str, user_ids: list[str]) -> None:
    """Remove users the app provisioned during a case (their tasks and counts go with them: ON DELETE CASCADE)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DELETE FROM "{user_table}" WHERE id = ANY($1::text[])', user_ids)
    finally:
        await connection.close()


async def reset(dsn: str, data: DataSet) -> None:
    """Remove the tasks a create case added, so every case sees the same data set."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DELETE FROM tasks WHERE id > $1", data.max_seed_task_id)
        await connection.execute("VACUUM ANALYZE tasks")
    finally:
        await connection.close()
