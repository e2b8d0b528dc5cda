"""SQL expressions that mean the same on PostgreSQL and SQLite (compiled per dialect)."""

from typing import Any

from sqlalchemy import ColumnElement, Text, cast, exists, func, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import Boolean


class unicode_lower(GenericFunction[str]):
    """lower() for all of Unicode: PostgreSQL's own; on SQLite a function db.py registers."""

    type = Text()
    inherit_cache = True


@compiles(unicode_lower, "postgresql")
def _unicode_lower_pg(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


class contains_ignoring_case(ColumnElement[bool]):
    """`needle` occurs in `column`, ignoring case; `%`, `_` and `\\` are literal.

    PostgreSQL: `lower(column) LIKE '%<needle, escaped>%'`, the expression of the trigram indexes
    (ix_tasks_title_trgm, ix_tasks_description_trgm), so a search does not read every row of a
    user with 100,000 tasks. SQLite: instr() on the folded texts (a scan of the user's rows).
    """

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's cache-key protocol)
        ("column", InternalTraversal.dp_clauseelement),
        ("needle", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], needle: ColumnElement[str]) -> None:
        self.column = column
        self.needle = needle


@compiles(contains_ignoring_case, "postgresql")
def _contains_ignoring_case_pg(element: contains_ignoring_case, compiler: SQLCompiler, **kw: Any) -> str:
    escaped = func.lower(element.needle)
    for special in ("\\", "%", "_"):  # LIKE's wildcards and escape taken literally (standard strings)
        escaped = func.replace(escaped, literal_column(f"'{special}'", Text), literal_column(f"'\\{special}'", Text))
    wildcard = literal_column("'%'", Text)
    pattern = wildcard + escaped + wildcard
    return compiler.process(func.lower(element.column).like(pattern, escape="\\"), **kw)


@compiles(contains_ignoring_case)
def _contains_ignoring_case_default(element: contains_ignoring_case, compiler: SQLCompiler, **kw: Any) -> str:
    position = func.instr(unicode_lower(element.column), unicode_lower(element.needle))
    return compiler.process(position > 0, **kw)


class has_tag(ColumnElement[bool]):
    """The JSON tag array contains `tag`, ignoring case.

    PostgreSQL matches the expression of the GIN index ix_tasks_tag_keys; SQLite scans the
    array of each of the user's rows (already narrowed by the user_id index).
    """

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's cache-key protocol)
        ("tags", InternalTraversal.dp_clauseelement),
        ("tag", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, tags: ColumnElement[Any], tag: ColumnElement[str]) -> None:
        self.tags = tags
        self.tag = tag


@compiles(has_tag, "postgresql")
def _has_tag_pg(element: has_tag, compiler: SQLCompiler, **kw: Any) -> str:
    tag_keys = cast(func.lower(cast(element.tags, Text)), JSONB)
    expression = tag_keys.op("@>")(func.jsonb_build_array(func.lower(element.tag)))
    return compiler.process(expression, **kw)


@compiles(has_tag)
def _has_tag_default(element: has_tag, compiler: SQLCompiler, **kw: Any) -> str:
    each = func.json_each(element.tags).table_valued("value").alias("tag_item")
    expression = exists(
        select(literal_column("1")).select_from(each).where(unicode_lower(each.c.value) == unicode_lower(element.tag))
    )
    return compiler.process(expression, **kw)
