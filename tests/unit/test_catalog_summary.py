"""A completed backup's event stays small whatever the catalog (the views read the rest)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from managed_backups.contracts.events import CatalogDatabase
from managed_backups.shared.domain.catalog import (
    catalog_is_partial,
    database_is_partial,
    summarise_catalog,
    table_count,
)


@dataclass
class Table:
    name: str
    rows: int = 1
    size_bytes: int = 8192


@dataclass
class Schema:
    name: str
    tables: list[Table]


@dataclass
class Database:
    name: str
    schemas: list[Schema] = field(default_factory=list)
    size_bytes: int = 1

    @property
    def table_count(self) -> int:
        return sum(len(s.tables) for s in self.schemas)


def database(name: str, tables: int) -> Database:
    return Database(
        name, [Schema("public", [Table(f"t_{i:06d}_{'x' * 50}") for i in range(tables)])]
    )


def test_tens_of_thousands_of_tables_make_a_small_event() -> None:
    databases = [database("small", 3), database("huge", 60_000), database("empty", 0)]
    databases += [database(f"db{i}", 1) for i in range(5000)]
    summary = summarise_catalog(databases)
    assert len(json.dumps(summary)) < 300_000
    by_name = {db["name"]: db for db in summary}
    assert "empty" not in by_name
    assert not database_is_partial(by_name["small"]) and table_count(by_name["small"]) == 3
    assert database_is_partial(by_name["huge"]) and table_count(by_name["huge"]) == 60_000
    assert catalog_is_partial(summary, 5002)
    for db in summary:
        CatalogDatabase.model_validate(db)


def test_a_small_catalog_is_listed_whole_and_old_events_still_count() -> None:
    summary = summarise_catalog([database("a", 2), database("b", 1)])
    assert not catalog_is_partial(summary, 2)
    assert not any(database_is_partial(db) for db in summary)
    old = {"name": "a", "size_bytes": 0, "schemas": [{"name": "s", "tables": [{}, {}]}]}
    assert table_count(old) == 2 and not database_is_partial(old)
