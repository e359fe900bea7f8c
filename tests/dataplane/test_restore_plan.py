"""Restore kinds against a real PostgreSQL: DATABASE and TABLE restores from a full backup and
from an incremental chain restore exactly the backed-up data (row count and checksum per table,
sequences' next values, views and constraints), dependencies are refused by name or skipped
on request, and a failure (a name clash, a corrupted chunk) leaves the destination as it was.
Identifiers need quoting everywhere: spaces, quotes, semicolons, Unicode."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter, quote_ident
from managed_backups.shared.dataplane.restore_plan import (
    NOT_KEPT,
    ClusterAccess,
    PlanError,
    RestoreOutcome,
    RestorePlan,
    TableRef,
    execute_plan,
    plan_bytes,
)
from tests.infra.postgres import LocalPostgres
from tests.infra.s3 import create_bucket, s3_store_url
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration

DB = 'we;ird "db" ü'
SCHEMA = "sales dept"
ODD = 'odd "name";x'
# (schema, table, ORDER BY) of every table checked
TABLES = [(SCHEMA, "customers", "id"), (SCHEMA, "orders", "id"), ("public", ODD, "id")]


def q(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


@dataclass
class Source:
    pg: LocalPostgres
    access: ClusterAccess
    store: ObjectStore
    root: Path
    chain: list[Manifest] = field(default_factory=list)
    expected: list[dict[tuple[str, str], tuple[int, str]]] = field(default_factory=list)
    sequences: list[dict[str, int]] = field(default_factory=list)

    def connect(self, db: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.url_for(db), autocommit=True)

    def backup(self) -> None:
        adapter = PostgresAdapter(self.pg.dsn_for(), password=self.pg.password)
        request = BackupRequest(self.store, "c1", f"b{len(self.chain)}")
        manifest = (
            adapter.incremental_backup(request, self.chain[-1])
            if self.chain
            else adapter.full_backup(request)
        )
        self.chain.append(manifest)
        self.expected.append({(s, t): digest(self, DB, s, t, o) for s, t, o in TABLES})
        self.sequences.append(next_values(self, DB))


def digest(source: Source, db: str, schema: str, table: str, order: str) -> tuple[int, str]:
    return table_digest(source.pg.url_for(db), schema, table, order)


def next_values(source: Source, db: str) -> dict[str, int]:
    """The value each sequence would hand out next (read without consuming it)."""
    out = {}
    with source.connect(db) as conn:
        for schema, name in conn.execute(
            "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2"
        ).fetchall():
            row = conn.execute(
                f"SELECT s.last_value, s.is_called, p.increment_by FROM {q(schema, name)} s, "
                "pg_sequences p WHERE p.schemaname = %s AND p.sequencename = %s",
                (schema, name),
            ).fetchone()
            assert row is not None
            last, called, step = row
            out[f"{schema}.{name}"] = last + step if called else last
    return out


def databases(source: Source) -> set[str]:
    with source.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("restore-plan")
    with LocalPostgres() as pg:
        access = ClusterAccess(pg.dsn_for(), password=pg.password)
        src = Source(pg, access, ObjectStore((tmp / "store").as_uri()), tmp / "store")
        with src.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {quote_ident(DB)}")
        with src.connect(DB) as conn:
            conn.execute(f"CREATE SCHEMA {quote_ident(SCHEMA)}")
            conn.execute("CREATE SEQUENCE public.shared_seq START 1000")
            conn.execute(
                f"CREATE TABLE {q(SCHEMA, 'customers')} (id int PRIMARY KEY, name text NOT NULL)"
            )
            conn.execute(
                f"CREATE TABLE {q(SCHEMA, 'orders')} (id serial PRIMARY KEY, "
                f"customer_id int NOT NULL REFERENCES {q(SCHEMA, 'customers')}, amount numeric, "
                "ticket bigint DEFAULT nextval('public.shared_seq'))"
            )
            conn.execute(f"CREATE INDEX orders_by_amount ON {q(SCHEMA, 'orders')} (amount)")
            conn.execute(f'CREATE TABLE {q("public", ODD)} (id bigint PRIMARY KEY, "col ü;" text)')
            conn.execute(
                f"CREATE VIEW {q(SCHEMA, 'big orders')} AS SELECT * FROM {q(SCHEMA, 'orders')} "
                "WHERE amount > 100"
            )
            conn.execute(
                f"CREATE VIEW {q(SCHEMA, 'order customers')} AS SELECT o.id, c.name "
                f"FROM {q(SCHEMA, 'orders')} o JOIN {q(SCHEMA, 'customers')} c "
                "ON c.id = o.customer_id"
            )
            conn.execute(
                f"INSERT INTO {q(SCHEMA, 'customers')} SELECT g, 'c ' || g "
                "FROM generate_series(1, 500) g"
            )
            conn.execute(
                f"INSERT INTO {q(SCHEMA, 'orders')} (customer_id, amount) "
                "SELECT 1 + g % 500, g * 0.5 FROM generate_series(1, 5000) g"
            )
            conn.execute(
                f"INSERT INTO {q('public', ODD)} SELECT g, E'tab\\there ü ' || g "
                "FROM generate_series(1, 300) g"
            )
        with src.connect("postgres") as conn:
            conn.execute('CREATE ROLE "app reader" NOLOGIN')
        src.backup()
        with src.connect(DB) as conn:
            conn.execute(f"UPDATE {q(SCHEMA, 'orders')} SET amount = amount + 1 WHERE id % 7 = 0")
            conn.execute(f"DELETE FROM {q(SCHEMA, 'orders')} WHERE id % 11 = 0")
            conn.execute(
                f"INSERT INTO {q(SCHEMA, 'orders')} (customer_id, amount) "
                "SELECT 1, g FROM generate_series(1, 300) g"
            )
            conn.execute(f"DELETE FROM {q('public', ODD)} WHERE id > 290")
        src.backup()
        with src.connect(DB) as conn:  # after the last backup: must not appear in restores
            conn.execute(f"INSERT INTO {q(SCHEMA, 'customers')} VALUES (9999, 'late')")
        with src.connect("postgres") as conn:
            conn.execute('DROP ROLE "app reader"')
        yield src


def plan(kind: str, target: str, **kwargs: Any) -> RestorePlan:
    return RestorePlan(
        kind=kind, source_database=DB, target_database=target, job_id=uuid.uuid4(), **kwargs
    )


def run(source: Source, chain: list[Manifest], p: RestorePlan) -> tuple[RestoreOutcome, int]:
    """What the restore wrote and left out, and the bytes it reported."""
    written: list[int] = []
    outcome = execute_plan(source.store, chain, p, source.access, written.append)
    return outcome, sum(written)


def relations(outcome: RestoreOutcome) -> list[str]:
    return [r for r in outcome.restored if r.startswith(("table ", "view "))]


def no_temporary_databases(source: Source) -> bool:
    return not any(name.startswith("mb_restore_") for name in databases(source))


@pytest.mark.parametrize("upto", [1, 2], ids=["full", "chain"])
def test_database_restore_is_exact(source: Source, upto: int) -> None:
    chain = source.chain[:upto]
    target = f"restored {upto} ü;"
    p = plan("DATABASE", target)
    outcome, written = run(source, chain, p)
    # A role of the backup ("app reader") was dropped since: owners and grants are not kept,
    # and the result says so.
    assert outcome == RestoreOutcome([f"database {target}"], [NOT_KEPT])
    assert written > 0 and plan_bytes(chain, p) > 0
    for schema, table, order in TABLES:
        assert (
            digest(source, target, schema, table, order)
            == source.expected[upto - 1][(schema, table)]
        ), f"{schema}.{table}"
    assert next_values(source, target) == source.sequences[upto - 1]
    with source.connect(target) as conn:
        assert conn.execute(f"SELECT count(*) FROM {q(SCHEMA, 'big orders')}").fetchone()
        constraints = {
            r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f'")
        }
        assert constraints == {"orders_customer_id_fkey"}
        assert conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'orders_by_amount'"
        ).fetchone()
    assert no_temporary_databases(source)


def test_database_name_clash_is_refused_and_changes_nothing(source: Source) -> None:
    with source.connect("postgres") as conn:
        conn.execute('CREATE DATABASE "taken"')
    with source.connect("taken") as conn:
        conn.execute("CREATE TABLE mine (x int)")
    with pytest.raises(PlanError) as refused:
        run(source, source.chain, plan("DATABASE", "taken"))
    assert refused.value.code == "NAME_CLASH" and "taken" in refused.value.message
    with source.connect("taken") as conn:
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (0,)
    assert no_temporary_databases(source)


def test_table_restore_refuses_missing_dependencies_by_name(source: Source) -> None:
    orders = (TableRef(SCHEMA, "orders"),)
    with pytest.raises(PlanError) as fk:
        run(source, source.chain, plan("TABLE", "t_fk", tables=orders))
    assert fk.value.code == "MISSING_DEPENDENCY"
    assert "orders_customer_id_fkey references sales dept.customers" in fk.value.message
    with pytest.raises(PlanError) as seq:
        run(
            source,
            source.chain,
            plan("TABLE", "t_seq", tables=orders, skip_missing_foreign_keys=True),
        )
    assert seq.value.code == "MISSING_DEPENDENCY" and "public.shared_seq" in seq.value.message
    assert "t_fk" not in databases(source) and "t_seq" not in databases(source)
    assert no_temporary_databases(source)


def test_views_restore_with_what_they_read_or_are_refused_or_skipped(source: Source) -> None:
    orders = (TableRef(SCHEMA, "orders"),)
    joined = (TableRef(SCHEMA, "order customers"),)
    skips = {"skip_missing_foreign_keys": True, "skip_missing_sequences": True}
    with pytest.raises(PlanError) as refused:
        run(source, source.chain, plan("TABLE", "v1", tables=orders, views=joined, **skips))
    assert refused.value.code == "MISSING_DEPENDENCY"
    assert f"view {SCHEMA}.order customers reads relations not restored: {SCHEMA}.customers" in (
        refused.value.message
    )
    p = plan(
        "TABLE",
        "v2",
        tables=orders,
        views=(TableRef(SCHEMA, "big orders"), *joined),
        skip_missing_views=True,
        **skips,
    )
    outcome, _ = run(source, source.chain, p)
    assert relations(outcome) == [f"table v2.{SCHEMA}.orders", f"view v2.{SCHEMA}.big orders"]
    assert (
        f"view {SCHEMA}.order customers reads relations not restored: {SCHEMA}.customers "
        "(skip_missing_views)"
    ) in outcome.left_out
    with source.connect("v2") as conn:
        big = conn.execute(f"SELECT count(*) FROM {q(SCHEMA, 'big orders')}").fetchone()
        assert big is not None and big[0] > 0
        assert conn.execute(
            "SELECT count(*) FROM pg_views WHERE viewname = 'order customers'"
        ).fetchone() == (0,)
    assert "v1" not in databases(source) and no_temporary_databases(source)


def test_table_restore_into_an_existing_database_with_skips(source: Source) -> None:
    with source.connect("postgres") as conn:
        conn.execute('CREATE DATABASE "into here"')
    with source.connect("into here") as conn:
        conn.execute("CREATE TABLE keep (x int)")
        conn.execute("INSERT INTO keep VALUES (1)")
    p = plan(
        "TABLE",
        "into here",
        tables=(TableRef(SCHEMA, "orders"), TableRef("public", ODD)),
        into_existing=True,
        skip_missing_foreign_keys=True,
        skip_missing_sequences=True,
    )
    outcome, _ = run(source, source.chain, p)
    assert sorted(relations(outcome)) == [
        f"table into here.public.{ODD}",
        f"table into here.{SCHEMA}.orders",
    ]
    # Every object left out is in the result, with its reason, once.
    assert sorted(outcome.left_out) == [
        f"default of {SCHEMA}.orders.ticket (uses sequence public.shared_seq, neither restored "
        "nor in the target; skip_missing_sequences)",
        f"foreign key {SCHEMA}.orders.orders_customer_id_fkey references {SCHEMA}.customers: "
        "neither restored nor in the target (skip_missing_foreign_keys)",
    ]
    for schema, table, order in TABLES[1:]:
        assert (
            digest(source, "into here", schema, table, order)
            == source.expected[-1][(schema, table)]
        )
    values = next_values(source, "into here")
    assert values == {f"{SCHEMA}.orders_id_seq": source.sequences[-1][f"{SCHEMA}.orders_id_seq"]}
    with source.connect("into here") as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone() == (1,)
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        ).fetchone() == (0,)
        default = conn.execute(
            "SELECT column_default FROM information_schema.columns WHERE column_name = 'ticket'"
        ).fetchone()
        assert default == (None,)
    # The same tables again: refused, nothing changes.
    with pytest.raises(PlanError) as again:
        run(source, source.chain, p)
    assert again.value.code == "TABLE_EXISTS" and "sales dept.orders" in again.value.message
    assert no_temporary_databases(source)


def test_tables_with_their_dependencies_into_a_new_database(source: Source) -> None:
    tables = (TableRef(SCHEMA, "customers"), TableRef(SCHEMA, "orders"))
    p = plan("TABLE", "two tables", tables=tables, skip_missing_sequences=True)
    run(source, source.chain[:1], p)
    for schema, table, order in TABLES[:2]:
        assert (
            digest(source, "two tables", schema, table, order)
            == source.expected[0][(schema, table)]
        )
    with source.connect("two tables") as conn:
        fks = conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f'").fetchall()
        assert fks == [("orders_customer_id_fkey",)]
    assert no_temporary_databases(source)


def test_a_corrupted_chunk_leaves_the_destination_as_it_was(source: Source, tmp_path: Path) -> None:
    # A copy of the chain's objects with one data chunk of the orders table corrupted.
    import shutil

    root = tmp_path / "store"
    shutil.copytree(source.root, root)
    store = ObjectStore(root.as_uri())
    entry = source.chain[0].table(DB, SCHEMA, "orders")
    assert entry is not None
    victim = next(p for p in root.rglob(entry.data[-1].hash + "*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with source.connect("postgres") as conn:
        conn.execute('CREATE DATABASE "untouched"')
    current = digest(source, DB, SCHEMA, "customers", "id")
    before = databases(source)
    for p in (
        plan("CLUSTER", ""),
        plan("DATABASE", "never created"),
        plan(
            "TABLE",
            "untouched",
            tables=(TableRef(SCHEMA, "orders"),),
            into_existing=True,
            skip_missing_foreign_keys=True,
            skip_missing_sequences=True,
        ),
    ):
        with pytest.raises(PlanError) as failed:
            execute_plan(store, source.chain, p, source.access, lambda n: None)
        assert failed.value.code == "CHUNK_CORRUPT", failed.value
    assert databases(source) == before | {"untouched"}
    assert digest(source, DB, SCHEMA, "customers", "id") == current  # CLUSTER: intact
    with source.connect("untouched") as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname = 'orders'"
        ).fetchone() == (0,)
    assert no_temporary_databases(source)


def test_restore_from_an_s3_store(source: Source, s3_endpoint: str) -> None:
    bucket = f"mb-{uuid.uuid4().hex[:12]}"
    create_bucket(s3_endpoint, bucket)
    s3 = ObjectStore(s3_store_url(s3_endpoint, bucket))
    for info in source.store.list("clusters/"):
        s3.put_new(info.key, source.store.get(info.key))
    p = plan("TABLE", "from s3", tables=(TableRef("public", ODD),))
    outcome = execute_plan(s3, source.chain, p, source.access, lambda n: None)
    assert outcome.restored == [f"table from s3.public.{ODD}"]
    assert digest(source, "from s3", "public", ODD, "id") == source.expected[-1][("public", ODD)]


def test_cluster_restore_replaces_every_database_and_brings_back_roles(source: Source) -> None:
    """Last in this module: it replaces the databases the other tests created."""
    with source.connect("postgres") as conn:
        conn.execute('CREATE DATABASE "created after the backup"')
    idle = source.connect(DB)  # a session on a replaced database is ended
    outcome, _ = run(source, source.chain, plan("CLUSTER", ""))
    restored = outcome.restored
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()
    assert f"database {DB}" in restored and restored[-1] == "roles"
    names = {d for d in databases(source) if not d.startswith("template")}
    assert names == {"postgres", DB}
    for schema, table, order in TABLES:
        assert digest(source, DB, schema, table, order) == source.expected[-1][(schema, table)]
    assert next_values(source, DB) == source.sequences[-1]
    with source.connect("postgres") as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app reader'").fetchone()
