"""Rule: "a completed backup's event names its catalog, within a bounded size".

The ``BackupCompleted`` event carries the backup's catalog for the views, but an event must stay
far below the events topic's message limit whatever the cluster holds (tens of thousands of
tables). So the event lists every database that has tables (at most ``max_databases``) with its
``table_count``, and the tables of databases only while a total of ``max_tables`` allows; a
database listed without its tables, or a backup with more databases than listed, is read from the
backup's manifest (the full catalog) by whoever needs the detail (:func:`catalog_is_partial`,
:func:`database_is_partial`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

MAX_LISTED_DATABASES = 1000
MAX_LISTED_TABLES = 2000


class _Table(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...


class _Schema(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def tables(self) -> Sequence[_Table]: ...


class _Database(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def table_count(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def schemas(self) -> Sequence[_Schema]: ...


def summarise_catalog(
    databases: Sequence[_Database],
    max_tables: int = MAX_LISTED_TABLES,
    max_databases: int = MAX_LISTED_DATABASES,
) -> list[dict[str, Any]]:
    """The catalog as the event carries it (see the module docstring)."""
    budget = max_tables
    summary: list[dict[str, Any]] = []
    for db in databases:
        if db.table_count == 0:
            continue
        if len(summary) == max_databases:
            break
        listed = db.table_count <= budget
        if listed:
            budget -= db.table_count
        summary.append(
            {
                "name": db.name,
                "size_bytes": db.size_bytes,
                "table_count": db.table_count,
                "schemas": [
                    {
                        "name": schema.name,
                        "tables": [
                            {"name": t.name, "row_count": t.rows, "size_bytes": t.size_bytes}
                            for t in schema.tables
                        ],
                    }
                    for schema in db.schemas
                ]
                if listed
                else [],
            }
        )
    return summary


def listed_table_count(database: dict[str, Any]) -> int:
    return sum(len(schema["tables"]) for schema in database["schemas"])


def table_count(database: dict[str, Any]) -> int:
    """Tables in the database (events written before summaries listed all of them)."""
    count = database.get("table_count")
    return listed_table_count(database) if count is None else int(count)


def database_is_partial(database: dict[str, Any]) -> bool:
    return listed_table_count(database) < table_count(database)


def catalog_is_partial(catalog: list[dict[str, Any]], database_count: int) -> bool:
    """Whether databases with tables are missing from the event's catalog."""
    return sum(1 for db in catalog if table_count(db) > 0) < database_count
