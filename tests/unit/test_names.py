"""Names with quotes, semicolons, spaces, path separators, NUL, newlines and Unicode never escape
their SQL identifier, their connection string or their object-store prefix (property tests).

The contract (``contracts/commands.py``: :func:`postgres_name`) accepts exactly the names
PostgreSQL can hold; every name it accepts is quoted (:func:`quote_ident`), put in a
connection string (:meth:`ClusterAccess.database`) or a store key (:func:`chain_prefix`, cluster
ids only: database and table names never reach a key) without changing what it names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from pydantic import TypeAdapter, ValidationError

from managed_backups.contracts.commands import (
    RESERVED_DATABASE_PREFIX,
    ClusterId,
    RestoreObject,
    RestoreOptions,
)
from managed_backups.shared.dataplane.manifest import chain_prefix, manifest_key
from managed_backups.shared.dataplane.restore_plan import TEMP_PREFIX, ClusterAccess
from managed_backups.shared.dataplane.sql import quote_ident, quote_literal

EXAMPLES = int(os.environ.get("MANAGED_BACKUPS_PROPERTY_EXAMPLES", "100"))
"""Examples per property (``.ci/run``'s fuzz step runs 1000)."""
HOSTILE = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\"';/\\. -_$*?[]()%\n\r\t\x00\x7f`")),
        st.characters(codec="utf-8"),
        st.characters(),  # lone surrogates too
    ),
    min_size=0,
    max_size=70,
)


def holdable(name: str) -> bool:
    """What PostgreSQL (and its client tools) can hold as a name, stated independently."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 0 < size <= 63 and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def accepted(name: str) -> bool:
    try:
        RestoreObject(database=name, schema=name, table=name)
    except ValidationError:
        return False
    return True


@settings(max_examples=EXAMPLES)
@given(HOSTILE)
def test_the_contract_accepts_exactly_the_names_postgresql_can_hold(name: str) -> None:
    assert accepted(name) == holdable(name)


@settings(max_examples=EXAMPLES)
@given(HOSTILE)
def test_a_restore_never_names_a_temporary_database(name: str) -> None:
    target = RESERVED_DATABASE_PREFIX + name
    with pytest.raises(ValidationError):
        RestoreOptions(new_db_name=target)
    with pytest.raises(ValidationError):
        RestoreOptions(into_db=target)


def test_the_reserved_prefix_is_the_restore_services_own() -> None:
    assert RESERVED_DATABASE_PREFIX == TEMP_PREFIX


@settings(max_examples=EXAMPLES)
@given(HOSTILE)
def test_a_name_never_escapes_its_connection_string(name: str) -> None:
    if not holdable(name):
        return
    access = ClusterAccess(dsn="host=db.example port=5432 dbname=postgres user=backup")
    params = conninfo_to_dict(access.database(name))
    assert params == {"host": "db.example", "port": "5432", "dbname": name, "user": "backup"}


@pytest.fixture(scope="module")
def conn(postgres_server: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS names_canary (id int)")
        yield conn
        conn.execute("DROP TABLE names_canary")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(HOSTILE)
def test_a_name_never_escapes_its_sql_identifier_or_literal(
    conn: psycopg.Connection[tuple[object, ...]], name: str
) -> None:
    """Run through the simple query protocol (several statements allowed), so an escape would
    run: the name comes back as exactly one column's name and one value, and nothing else
    happened (the canary table is still there)."""
    if not holdable(name):
        return
    cursor = conn.execute(
        f"SELECT {quote_literal(name)} AS {quote_ident(name)}".encode(), prepare=False
    )
    assert cursor.description is not None and [c.name for c in cursor.description] == [name]
    assert cursor.fetchall() == [(name,)]
    assert conn.execute("SELECT to_regclass('names_canary') IS NOT NULL").fetchone() == (True,)


@settings(max_examples=EXAMPLES)
@given(HOSTILE, st.uuids())
def test_a_cluster_id_never_escapes_its_object_store_prefix(name: str, chain: UUID) -> None:
    try:
        cluster_id = TypeAdapter(ClusterId).validate_python(name)
    except ValidationError:
        return
    root = Path("/store")
    key = manifest_key(cluster_id, str(chain), str(chain))
    resolved = (root / key).resolve()
    assert resolved.is_relative_to(root / "clusters" / cluster_id / "chains" / str(chain))
    assert key.startswith(chain_prefix(cluster_id, str(chain)) + "/")
