"""Generate a PostgreSQL event store written by the code at commit dd09f9e (whose recorder took
``LOCK TABLE … IN EXCLUSIVE MODE`` on every insert).

Run from a checkout of that commit, with PostgreSQL 15's binaries on PATH::

    PYTHONPATH=. python tests/data/postgres-store-table-lock/generate.py OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg

from managed_backups.contracts.enums import BackupType
from managed_backups.shared.domain.ids import scheduled_backup_id
from managed_backups.shared.eventstore import open_event_store
from tests.factories import new_backup, new_cluster
from tests.infra.postgres import LocalPostgres

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
T0 = datetime(2026, 1, 5, tzinfo=UTC)


def command(n: int) -> UUID:
    return UUID(int=n)


with LocalPostgres() as pg:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "events"')
    store = open_event_store(pg.url_for("events"))
    one = new_cluster("pg-one", organization="acme", frequency_minutes=5, at=T0)
    two = new_cluster("pg-two", organization="acme", at=T0)
    store.save_all(one, two)
    chain = None
    # 105 slots: the Cluster gets a snapshot (interval 100); one chain, slot 50 failed.
    for k in range(105):
        slot = T0 + timedelta(minutes=5 * k)
        backup_id = scheduled_backup_id("pg-one", one.generation, slot)
        full = k == 0
        chain = backup_id if full else chain
        assert chain is not None
        kind = BackupType.FULL if full else BackupType.INCREMENTAL
        one.schedule_backup(backup_id, kind, slot, chain, slot, "scheduler")
        store.save_all(one)
        backup = new_backup(
            "pg-one",
            backup_id,
            backup_type=kind.value,
            chain_id=chain,
            reason="SCHEDULED",
            scheduled_for=slot,
            command_id=command(k + 1),
            at=slot,
        )
        if k == 50:
            backup.fail("CONNECTION_FAILED", "could not connect", "connect", slot, "executor")
        else:
            backup.complete(
                as_of_time=slot,
                size_bytes=1000 + k,
                database_count=1,
                catalog=[],
                manifest_key=f"clusters/pg-one/chains/{chain}/manifests/{backup_id}.json",
                expires_at=slot + timedelta(days=30),
                at=slot + timedelta(seconds=30),
                by="executor",
            )
        store.save_all(backup)
    store.close()
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--no-privileges", "--dbname", pg.url_for("events")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (out / "store.sql").write_text(dump)
