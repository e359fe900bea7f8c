"""No restore leaves a database behind, whatever it holds: a database holding a logical
replication subscription (which ``DROP DATABASE ... WITH (FORCE)`` refuses) is dropped with
its subscription disabled and detached from its slot first, so the publisher's slot, which the
source's own subscription (and the restored copy of it) uses, is never dropped with it.

A real subscription: a publisher (a throw-away server with ``wal_level = logical``) and, in
the cluster that is backed up and restored, a database subscribing to it. A TABLE restore (its
scratch database holds the schema, the subscription with it), a DATABASE restore that fails (a
corrupted chunk) and two CLUSTER restores (each replaced database holds a subscription, the
first time the live one) leave no ``mb_restore_*`` database; a database left by a killed job is
dropped by the reaper's call; and each time the publisher's slot and the replication still
work (after the CLUSTER restores, through the restored copy of the subscription, enabled).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import (
    ClusterAccess,
    PlanError,
    RestorePlan,
    TableRef,
    drop_temporary_databases,
    execute_plan,
    temporary_database_names,
)
from tests.infra.postgres import LocalPostgres

pytestmark = pytest.mark.integration

SLOT = "feed_sub"


@dataclass
class Source:
    pg: LocalPostgres
    publisher: LocalPostgres
    access: ClusterAccess
    store: ObjectStore
    root: Path
    chain: list[Manifest]

    def connect(self, db: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.url_for(db), autocommit=True)

    def databases(self) -> set[str]:
        with self.connect() as conn:
            return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}

    def temporary(self) -> set[str]:
        return {d for d in self.databases() if d.startswith("mb_restore_")}

    def replicates(self) -> None:
        """The source's subscription still streams from its slot: a row published now
        arrives (waits on the subscriber's table, the source of truth)."""
        marker = uuid.uuid4().int % 1_000_000_000
        with psycopg.connect(self.publisher.url, autocommit=True) as conn:
            conn.execute("INSERT INTO feed VALUES (%s, 'live')", (marker,))
        deadline = time.monotonic() + 60
        with self.connect("app") as conn:
            while conn.execute("SELECT 1 FROM feed WHERE id = %s", (marker,)).fetchone() is None:
                assert time.monotonic() < deadline, "replication stopped"
                time.sleep(0.05)

    def subscription(self) -> str:
        """The conninfo of a subscription to the publisher."""
        publisher = self.publisher
        return f"{publisher.dsn_for()} password={publisher.password}"


def plan(kind: str, target: str = "", **kwargs: Any) -> RestorePlan:
    return RestorePlan(
        kind=kind, source_database="app", target_database=target, job_id=uuid.uuid4(), **kwargs
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    tmp = tmp_path_factory.mktemp("temporary-databases")
    with (
        LocalPostgres(settings={"wal_level": "logical"}) as publisher,
        LocalPostgres() as pg,
    ):
        src = Source(
            pg,
            publisher,
            ClusterAccess(pg.dsn_for(), password=pg.password),
            ObjectStore((tmp / "store").as_uri()),
            tmp / "store",
            [],
        )
        with psycopg.connect(publisher.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE feed (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO feed SELECT g, 'first' FROM generate_series(1, 50) g")
            conn.execute("CREATE PUBLICATION feed_pub FOR TABLE feed")
        with src.connect() as conn:
            conn.execute("CREATE DATABASE app")
        with src.connect("app") as conn:
            conn.execute("CREATE TABLE feed (id int PRIMARY KEY, v text)")
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, amount int)")
            conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 5000) g")
            conn.execute(
                f"CREATE SUBSCRIPTION feed_sub CONNECTION '{src.subscription()}'"
                " PUBLICATION feed_pub"
            )
        src.replicates()
        adapter = PostgresAdapter(pg.dsn_for(), password=pg.password)
        src.chain.append(adapter.full_backup(BackupRequest(src.store, "c1", "full")))
        yield src


def test_a_table_restore_drops_its_scratch_database_holding_a_subscription(
    source: Source,
) -> None:
    p = plan("TABLE", "orders only", tables=(TableRef("public", "orders"),))
    outcome = execute_plan(source.store, source.chain, p, source.access, lambda n: None)
    assert outcome.restored == ["table orders only.public.orders"]
    assert source.temporary() == set()
    source.replicates()


def test_a_failed_database_restore_drops_its_temporary_database(source: Source) -> None:
    """It fails at its last step, the rename (the name was taken meanwhile), once its
    temporary database holds everything, the subscription included."""
    before = source.databases()
    once = threading.Lock()

    def take_the_name(_n: int) -> None:  # called by the threads copying rows
        if once.acquire(blocking=False):
            with source.connect() as conn:
                conn.execute('CREATE DATABASE "taken meanwhile"')

    with pytest.raises(PlanError) as failed:
        execute_plan(
            source.store,
            source.chain,
            plan("DATABASE", "taken meanwhile"),
            source.access,
            take_the_name,
        )
    assert failed.value.code == "NAME_CLASH", failed.value
    assert source.databases() == before | {"taken meanwhile"}
    source.replicates()


def test_the_reaper_drops_what_a_killed_job_left_whatever_it_holds(source: Source) -> None:
    """A killed job's temporary databases, one holding a copy of the subscription (as the
    schema restore makes it: disabled, naming the source's slot)."""
    job = uuid.uuid4()
    target, scratch = temporary_database_names(job)
    with source.connect() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
        conn.execute(f'CREATE DATABASE "{scratch}"')
    with source.connect(scratch) as conn:
        conn.execute(
            f"CREATE SUBSCRIPTION copied CONNECTION '{source.subscription()}'"
            f" PUBLICATION feed_pub WITH (connect = false, slot_name = '{SLOT}')"
        )
    report = drop_temporary_databases(source.access, job)
    assert sorted(report.dropped) == sorted([target, scratch]) and report.left == []
    assert source.temporary() == set()
    source.replicates()


def test_cluster_restores_leave_no_replaced_database_behind(source: Source) -> None:
    """Last: it replaces the databases (``app``'s live subscription with the backup's copy)."""
    for _ in range(2):
        outcome = execute_plan(
            source.store, source.chain, plan("CLUSTER"), source.access, lambda n: None
        )
        assert "database app" in outcome.restored
        assert source.temporary() == set()
    with source.connect() as conn:
        # The restored copy of the subscription (as pg_restore makes it: disabled, the same
        # slot, which stayed on the publisher for it).
        sub = conn.execute(
            "SELECT subenabled, subslotname FROM pg_subscription WHERE subname = 'feed_sub'"
        ).fetchone()
        assert sub == (False, SLOT)
    with source.connect("app") as conn:  # what pg_dump's documentation says to do after it
        conn.execute("ALTER SUBSCRIPTION feed_sub ENABLE")
        conn.execute("ALTER SUBSCRIPTION feed_sub REFRESH PUBLICATION WITH (copy_data = false)")
    source.replicates()
