"""The restore service end to end: real broker, real PostgreSQL source and destination, backups
taken by the real executor; restores started over HTTP, on the topic and with the CLI."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Role
from managed_backups.services.cli import main as cli_main
from managed_backups.services.executor.service import run as run_executor
from managed_backups.services.restore.service import run as run_restore
from managed_backups.shared.domain.restore import Restore
from managed_backups.shared.eventstore import EventStore, event_topics, open_event_store
from managed_backups.shared.jobs import JobLeases
from managed_backups.shared.sqldb import SqlDatabase
from tests.harness import System, run_cluster_commands_only, service_process
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import connection_ref, take, wait_terminal
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration

SHOP = 'shop; "main" ü'


def digest(pg: LocalPostgres, db: str, table: str, schema: str = "public") -> tuple[int, str]:
    return table_digest(pg.url_for(db), schema, table)


def databases(pg: LocalPostgres) -> set[str]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "shop; ""main"" ü"')
            conn.execute('CREATE DATABASE "target"')
            # What people keep in the maintenance database is in a cluster's backup too.
            conn.execute(
                "CREATE TABLE kept_in_postgres AS SELECT g AS id FROM generate_series(1, 7) g"
            )
        with psycopg.connect(pg.url_for(SHOP), autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 300) g")
            conn.execute(
                "CREATE TABLE orders (id serial PRIMARY KEY, "
                "customer_id int REFERENCES customers, amount numeric)"
            )
            conn.execute(
                "INSERT INTO orders (customer_id, amount) "
                "SELECT 1 + g % 300, g FROM generate_series(1, 20000) g"
            )
            conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100")
            # Owners and grants are part of what a restore gives back.
            conn.execute("CREATE ROLE shop_owner")
            conn.execute("CREATE ROLE shop_reader")
            conn.execute("ALTER TABLE customers OWNER TO shop_owner")
            conn.execute("GRANT SELECT ON orders TO shop_reader")
        yield pg


@dataclass
class World:
    system: System
    pg: LocalPostgres
    cluster_id: str
    full_id: UUID
    incremental_id: UUID
    at_full: dict[str, tuple[int, str]]
    at_incremental: dict[str, tuple[int, str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, kafka: str, source: LocalPostgres
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("restore-service")
    system = await System.start(
        tmp,
        f"sqlite:///{tmp / 'events.sqlite'}",
        kafka,
        services=("projections",),
        restore_lease_seconds=4.0,
        api_port=free_port(),
    )
    await system.start_service("registry", run_cluster_commands_only)
    await system.start_service("backup-executor", run_executor)
    await system.start_service("restore", run_restore)
    await system.start_service("api")
    cluster_id = f"shop-{uuid4().hex[:6]}"
    result = await system.register(
        cluster_id,
        connection_ref=connection_ref(source),
        regions=["us-east-1"],
        secret=source.password,
    )
    assert result.code == 200
    full_id = await take(system, cluster_id)
    assert (await wait_terminal(system, full_id)).status == "COMPLETE"
    at_full = {t: digest(source, SHOP, t) for t in ("customers", "orders")}
    with psycopg.connect(source.url_for(SHOP), autocommit=True) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id % 10 = 0")
        conn.execute("DELETE FROM orders WHERE id % 13 = 0")
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 5), (2, 6)")
    incremental_id = await take(system, cluster_id, "INCREMENTAL", chain_id=str(full_id))
    assert (await wait_terminal(system, incremental_id)).status == "COMPLETE"
    at_incremental = {t: digest(source, SHOP, t) for t in ("customers", "orders")}
    with psycopg.connect(source.url_for(SHOP), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (customer_id, amount) VALUES (3, 7)"
        )  # after: not restored
    yield World(system, source, cluster_id, full_id, incremental_id, at_full, at_incremental)
    await system.close()


def find_restore(store: EventStore, restore_id: UUID) -> Restore | None:
    """The job a client knows by ``restore_id`` (its stream id derives from its cluster too)."""
    for row in store.notifications(0, 100_000, event_topics(Restore.RestoreRequested)):
        if store.domain_event(row).restore_id == restore_id:  # type: ignore[attr-defined]
            return store.get_or_none(row.originator_id, Restore)
    return None


async def wait_job(system: System, restore_id: str, timeout: float = 120) -> Restore:
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                job = await asyncio.to_thread(find_restore, store, UUID(restore_id))
                if job is not None and job.is_terminal:
                    await system.wait_projection(store.max_position())
                    return job
                await asyncio.sleep(0.1)
    finally:
        store.close()


def owners_and_grants(pg: LocalPostgres, db: str) -> tuple[Any, ...]:
    with psycopg.connect(pg.url_for(db), autocommit=True) as conn:
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'customers'"
        ).fetchone()
        reader = conn.execute("SELECT has_table_privilege('shop_reader', 'orders', 'SELECT')")
        return owner, reader.fetchone()


async def post_restore(world: World, body: dict[str, Any], cluster: str | None = None) -> Any:
    assert world.system.http is not None
    return await world.system.http.post(
        f"/api/v1/clusters/{cluster or world.cluster_id}/restores", json=body
    )


async def test_database_restore_from_the_full_over_http_with_the_job_view(world: World) -> None:
    answer = await post_restore(
        world,
        {
            "type": "DATABASE",
            "backup_id": str(world.full_id),
            "objects": [{"database": SHOP}],
            "restore_opts": {"new_db_name": "from full"},
        },
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["phases"][0]["phase"] == "PREPARING"  # recorded before the answer
    assert job["backup_id"] == str(world.full_id) and job["type"] == "DATABASE"
    ended = await wait_job(world.system, job["id"])
    assert ended.phase == "SUCCEEDED", ended.error
    for table, expected in world.at_full.items():
        assert digest(world.pg, "from full", table) == expected
    assert owners_and_grants(world.pg, "from full") == (("shop_owner",), (True,))
    with psycopg.connect(world.pg.url_for("from full"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM big_orders").fetchone()
        assert conn.execute("SELECT nextval('orders_id_seq')").fetchone() == (20001,)
    assert world.system.http is not None
    view = (
        await world.system.http.get(f"/api/v1/clusters/{world.cluster_id}/restores/{job['id']}")
    ).json()
    assert [p["phase"] for p in view["phases"]] == ["PREPARING", "RUNNING", "SUCCEEDED"]
    assert view["status"] == "SUCCESS" and view["completion_percent"] == 1.0
    assert view["completed_at"] and view["backup_end_time"] and view["bytes_done"] > 0
    assert view["source_cluster_name"] == view["destination_cluster_name"] == world.cluster_id
    assert view["objects"] == [{"database": SHOP}]
    assert view["client_error_code"] is None
    events = (await world.system.http.get(f"/api/v1/clusters/{world.cluster_id}/events")).json()[
        "events"
    ]
    kinds = [e["type"] for e in events if e.get("restore_id") == job["id"]]
    assert kinds[0] == "RestoreRequested" and kinds[1] == "RestoreRunning"
    assert kinds[-1] == "RestoreSucceeded"


async def test_table_restore_from_the_latest_backup_into_an_existing_database(
    world: World,
) -> None:
    answer = await post_restore(
        world,
        {
            "type": "TABLE",
            "objects": [
                {"database": SHOP, "schema": "public", "table": "orders"},
                {"database": SHOP, "table": "big_orders"},
            ],
            "restore_opts": {"into_db": "target", "skip_missing_foreign_keys": True},
        },
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["backup_id"] == str(world.incremental_id)  # the latest restorable backup
    ended = await wait_job(world.system, job["id"])
    assert ended.phase == "SUCCEEDED", ended.error
    assert digest(world.pg, "target", "orders") == world.at_incremental["orders"]
    assert digest(world.pg, "target", "big_orders")[0] > 0  # the view came along
    with psycopg.connect(world.pg.url_for("target"), autocommit=True) as conn:
        grant = conn.execute("SELECT has_table_privilege('shop_reader', 'orders', 'SELECT')")
        assert grant.fetchone() == (True,)  # the grant to a role that exists came back
    assert world.system.http is not None
    view = (
        await world.system.http.get(f"/api/v1/clusters/{world.cluster_id}/restores/{job['id']}")
    ).json()
    # What the option left out is in the job's result, not only in a log.
    assert view["left_out"] == [
        "foreign key public.orders.orders_customer_id_fkey references public.customers: "
        "neither restored nor in the target (skip_missing_foreign_keys)"
    ]
    listing = (
        await world.system.http.get(f"/api/v1/clusters/{world.cluster_id}/restores")  # type: ignore[union-attr]
    ).json()
    assert listing["restores"][0]["id"] == job["id"]  # newest first
    # The same table again: refused before anything is recorded, the table stays as restored.
    again = await post_restore(
        world,
        {
            "type": "TABLE",
            "objects": [{"database": SHOP, "table": "orders"}],
            "restore_opts": {"into_db": "target", "skip_missing_foreign_keys": True},
        },
    )
    assert again.status_code == 409 and "public.orders already exist" in again.json()["message"]
    assert digest(world.pg, "target", "orders") == world.at_incremental["orders"]


async def test_cli_follows_a_restore_to_its_end(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    api = f"http://127.0.0.1:{world.system.settings.api_port}"
    args = [
        "restore",
        "start",
        world.cluster_id,
        "--type",
        "DATABASE",
        "--database",
        SHOP,
        "--new-db-name",
        "by cli",
        "--backup-id",
        str(world.incremental_id),
        "--follow",
        "--api",
        api,
        "--credential",
        world.system.admin_key,
    ]
    code = await asyncio.to_thread(cli_main, args)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Succeeded" in out.out and "100.0%" in out.out and "restored: database by cli" in out.out
    for table, expected in world.at_incremental.items():
        assert digest(world.pg, "by cli", table) == expected
    # A refused restore: non-zero, with the reason.
    code = await asyncio.to_thread(
        cli_main, [*args[:-5], "--api", api, "--credential", world.system.admin_key]
    )
    out = capsys.readouterr()
    assert code == 1 and "by cli already exists" in out.err
    # A TABLE restore's follow output lists what it left out.
    table = ["--type", "TABLE", "--table", "orders", "--skip-missing-foreign-keys"]
    code = await asyncio.to_thread(
        cli_main, [*args[:3], *table, *args[5:7], "--new-db-name", "cli table", *args[9:]]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "restored: table cli table.public.orders" in out.out
    assert (
        "left out: foreign key public.orders.orders_customer_id_fkey references public.customers"
        in out.out
    )


async def test_rules_refuse_with_their_reason_before_any_data_moves(world: World) -> None:
    system = world.system
    before = databases(world.pg)
    other = f"other-{uuid4().hex[:6]}"
    assert (
        await system.register(
            other, connection_ref=connection_ref(world.pg), secret=world.pg.password
        )
    ).code == 200
    foreign = f"foreign-{uuid4().hex[:6]}"
    assert (
        await system.register(
            foreign,
            organization="globex",
            connection_ref=connection_ref(world.pg),
            secret=world.pg.password,
        )
    ).code == 200
    database = {"type": "DATABASE", "objects": [{"database": SHOP}]}
    cases: list[tuple[str | None, dict[str, Any], int, str]] = [
        (other, {**database, "source_cluster_id": world.cluster_id}, 409, "ADVANCED tier"),
        (foreign, {**database, "source_cluster_id": world.cluster_id}, 403, "another organization"),
        (None, {**database, "backup_id": str(uuid4())}, 404, "is not known"),
        (None, {"type": "DATABASE", "objects": [{"database": "nope"}]}, 404, "database nope"),
        (
            None,
            {"type": "TABLE", "objects": [{"database": SHOP, "table": "nope"}]},
            404,
            f"table {SHOP}.public.nope",
        ),
        (
            None,
            {"type": "DATABASE", "objects": [{"database": SHOP, "table": "orders"}]},
            400,
            "use type TABLE",
        ),
        (None, {"type": "TABLE", "objects": []}, 400, "needs objects"),
        (None, {**database}, 409, "already exists"),  # its own name: the source database exists
        (None, {**database, "restore_opts": {"new_db_name": "x" * 64}}, 400, "new_db_name"),
    ]
    for cluster, body, status, reason in cases:
        answer = await post_restore(world, body, cluster)
        assert answer.status_code == status, (body, answer.text)
        assert reason in answer.json()["message"], (body, answer.text)
    # ADVANCED clusters of one organization: multi-region into single-region, older version.
    src = f"adv-{uuid4().hex[:6]}"
    dst = f"adv1-{uuid4().hex[:6]}"
    old = f"old-{uuid4().hex[:6]}"
    ref = connection_ref(world.pg)
    assert (
        await system.register(src, tier="ADVANCED", connection_ref=ref, secret=world.pg.password)
    ).code == 200
    assert (
        await system.register(
            dst,
            tier="ADVANCED",
            regions=["us-east-1"],
            connection_ref=ref,
            secret=world.pg.password,
        )
    ).code == 200
    assert (
        await system.register(
            old,
            tier="ADVANCED",
            database_version="14",
            connection_ref=ref,
            secret=world.pg.password,
        )
    ).code == 200
    backup_id = await take(system, src)
    assert (await wait_terminal(system, backup_id)).status == "COMPLETE"
    cross = {**database, "source_cluster_id": src, "restore_opts": {"new_db_name": "cross"}}
    answer = await post_restore(world, cross, dst)
    assert answer.status_code == 409 and "skip_localities_check" in answer.json()["message"]
    answer = await post_restore(world, cross, old)
    assert answer.status_code == 409 and "older than the source" in answer.json()["message"]
    # The restore right on both clusters: an operator of the destination only is refused, the
    # source answered as a cluster that is not registered (the caller may not see it).
    key = await system.issue_key("dst-operator", Role.CLUSTER_OPERATOR, f"cluster:{dst}")
    assert system.http is not None
    answer = await system.http.post(
        f"/api/v1/clusters/{dst}/restores",
        json={**cross, "restore_opts": {"new_db_name": "cross", "skip_localities_check": True}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 404
    assert answer.json()["message"] == f"cluster {src} is not registered"
    # On the topic: a rejection with the same reason.
    result = await system.command(
        topics.RESTORE_COMMANDS,
        {
            "type": "StartRestore",
            "restore_id": str(uuid4()),
            "destination_cluster_id": other,
            "source_cluster_id": world.cluster_id,
            "restore_type": "DATABASE",
            "objects": [{"database": SHOP}],
        },
    )
    assert result.code == 409 and result.reason and "ADVANCED tier" in result.reason
    assert databases(world.pg) == before


async def test_restore_into_a_newer_major_and_never_into_an_older_one(world: World) -> None:
    """Restore to upgrade through the service (the source's server into one of a newer major),
    and the refusal of an older one, judged by the servers the clusters really run (both are
    registered as the source's version)."""
    system = world.system
    source_major = world.pg.major
    assert 13 < source_major < 18, "the source runs a major between the oldest and the newest"
    ref = connection_ref(world.pg)
    src = f"ver-{uuid4().hex[:6]}"
    assert (
        await system.register(src, tier="ADVANCED", connection_ref=ref, secret=world.pg.password)
    ).code == 200
    backup_id = await take(system, src)
    assert (await wait_terminal(system, backup_id)).status == "COMPLETE"
    with LocalPostgres(major=18) as newer, LocalPostgres(major=source_major - 1) as older:
        for server, prefix in ((newer, "newer"), (older, "older")):
            assert (
                await system.register(
                    f"{prefix}-{src}",
                    tier="ADVANCED",
                    database_version=str(source_major),
                    connection_ref=connection_ref(server),
                    secret=server.password,
                )
            ).code == 200
        body = {"type": "DATABASE", "source_cluster_id": src, "objects": [{"database": SHOP}]}
        answer = await post_restore(world, body, f"older-{src}")
        assert answer.status_code == 409, answer.text
        message = answer.json()["message"]
        assert f"PostgreSQL {source_major}." in message, message
        assert f"runs PostgreSQL {source_major - 1}." in message, message
        assert "same or a newer major" in message
        assert SHOP not in databases(older)
        answer = await post_restore(world, body, f"newer-{src}")
        assert answer.status_code == 200, answer.text
        ended = await wait_job(system, answer.json()["id"])
        assert ended.phase == "SUCCEEDED", ended.error
        for table in ("customers", "orders"):
            assert digest(newer, SHOP, table) == digest(world.pg, SHOP, table)


async def test_killed_service_and_corrupted_chunk_leave_the_destination_as_it_was(
    world: World, tmp_path: Path
) -> None:
    system, pg = world.system, world.pg
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE big")
    with psycopg.connect(pg.url_for("big"), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id bigint PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO wide SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 6) "
            "FROM generate_series(1, 300000) g"
        )
    cluster_id = f"big-{uuid4().hex[:6]}"
    ref = connection_ref(pg)
    assert (
        await system.register(
            cluster_id, connection_ref=ref, regions=["eu-west-1"], secret=pg.password
        )
    ).code == 200
    backup_id = await take(system, cluster_id)
    assert (await wait_terminal(system, backup_id)).status == "COMPLETE"
    before = databases(pg)

    # Killed mid-job: only a separate process serves restores, SIGKILLed while rows flow.
    await system.stop_service("restore")
    worker = service_process(
        system, "restore", tmp_path / "restore-1.log", MANAGED_BACKUPS_RESTORE_LEASE_SECONDS="4"
    )
    try:
        body = {
            "type": "DATABASE",
            "backup_id": str(backup_id),
            "objects": [{"database": "big"}],
            "restore_opts": {"new_db_name": "big copy"},
        }
        answer = await post_restore(world, body, cluster_id)
        assert answer.status_code == 200, answer.text
        restore_id = answer.json()["id"]
        store = open_event_store(system.settings.store_url)
        async with asyncio.timeout(60):
            while True:
                job = await asyncio.to_thread(find_restore, store, UUID(restore_id))
                temporary = [d for d in databases(pg) if d.startswith("mb_restore_")]
                if job is not None and job.phase == "RUNNING" and temporary:
                    break
                await asyncio.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = asyncio.get_running_loop().time()
        await system.start_service("restore", run_restore)  # reaps the expired lease
        failed = await wait_job(system, restore_id, timeout=60)
        store.close()
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait()
    assert failed.phase == "FAILED" and failed.error is not None
    assert failed.error["code"] == "LEASE_EXPIRED"
    assert asyncio.get_running_loop().time() - killed_at < 4.0 * 4
    async with asyncio.timeout(30):  # the temporary database is dropped with the job
        while databases(pg) != before:
            await asyncio.sleep(0.2)
    assert system.http is not None
    view = (await system.http.get(f"/api/v1/clusters/{cluster_id}/restores/{restore_id}")).json()
    assert view["status"] == "FAILED" and view["destination_state"].startswith("unchanged")
    # Said after the reaper dropped them and checked (the databases are gone: above).
    assert view["destination_state"].endswith("the restore's temporary databases were dropped")

    # A corrupted chunk: the job fails naming it, nothing appears on the destination.
    from managed_backups.shared.dataplane.manifest import read_manifest

    region = system.settings.data_dir / "objects" / "eu-west-1"
    manifest = read_manifest(
        system.sealed_store(cluster_id, "eu-west-1"), cluster_id, str(backup_id), str(backup_id)
    )
    entry = manifest.table("big", "public", "wide")
    assert entry is not None
    victim = next(p for p in region.rglob(entry.data[len(entry.data) // 2].hash) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    answer = await post_restore(world, body, cluster_id)
    assert answer.status_code == 200, answer.text
    failed = await wait_job(system, answer.json()["id"])
    assert failed.error is not None and failed.error["code"] == "CHUNK_CORRUPT", failed.error
    assert databases(pg) == before


async def test_a_deleted_source_restores_only_for_an_administrator(world: World) -> None:
    system = world.system
    ref = connection_ref(world.pg)
    src = f"gone-{uuid4().hex[:6]}"
    dst = f"keep-{uuid4().hex[:6]}"
    assert (
        await system.register(src, tier="ADVANCED", connection_ref=ref, secret=world.pg.password)
    ).code == 200
    assert (
        await system.register(dst, tier="ADVANCED", connection_ref=ref, secret=world.pg.password)
    ).code == 200
    backup_id = await take(system, src)
    assert (await wait_terminal(system, backup_id)).status == "COMPLETE"
    deleted = await system.command(
        topics.CLUSTER_COMMANDS, {"type": "DeleteCluster", "cluster_id": src}
    )
    assert deleted.code == 200
    body = {
        "type": "TABLE",
        "source_cluster_id": src,
        "backup_id": str(backup_id),
        "objects": [{"database": SHOP, "table": "customers"}],
        "restore_opts": {"new_db_name": "from deleted"},
    }
    assert system.api_runtime is not None and system.http is not None
    org_admin = await system.issue_key("acme-admin", Role.ORG_ADMIN, "org:acme")
    answer = await system.http.post(
        f"/api/v1/clusters/{dst}/restores",
        json=body,
        headers={"Authorization": f"Bearer {org_admin}"},
    )
    assert answer.status_code == 403 and "only an administrator" in answer.json()["message"]
    assert "from deleted" not in databases(world.pg)
    answer = await post_restore(world, body, dst)
    assert answer.status_code == 200, answer.text
    assert (await wait_job(system, answer.json()["id"])).phase == "SUCCEEDED"
    assert digest(world.pg, "from deleted", "customers")[0] == 300


async def test_cluster_restore_is_exclusive_and_replaces_every_database(world: World) -> None:
    """Last in this module: it replaces every database of the source server."""
    from datetime import timedelta

    from managed_backups.shared import jobs

    system = world.system
    assert system.api_runtime is not None
    db = system.api_runtime.db
    # While a CLUSTER restore holds the destination: no backup, no other restore.
    holder = uuid4()
    until = system.api_runtime.clock.now() + timedelta(seconds=60)
    leases = jobs.JobLeases(db, "restore")
    assert leases.take(holder, world.cluster_id, "test", until, {jobs.EXCLUSIVE: True})
    try:
        refused = await system.command(
            topics.BACKUP_COMMANDS,
            {
                "type": "TakeBackup",
                "cluster_id": world.cluster_id,
                "backup_id": str(uuid4()),
                "backup_type": "FULL",
            },
        )
        assert refused.code == 409 and refused.reason and str(holder) in refused.reason
        answer = await post_restore(world, {"type": "CLUSTER"})
        assert answer.status_code == 409 and "no other restore" in answer.json()["message"]
    finally:
        leases.release(holder)

    with psycopg.connect(world.pg.url, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "made later"')
        conn.execute("CREATE TABLE made_later_in_postgres (id int)")
    # A role of the backup dropped since: the CLUSTER restore brings it back with its grant.
    for db in databases(world.pg) - {"template0"}:
        with psycopg.connect(world.pg.url_for(db), autocommit=True) as conn:
            conn.execute("DROP OWNED BY shop_reader")
    with psycopg.connect(world.pg.url, autocommit=True) as conn:
        conn.execute("DROP ROLE shop_reader")
    answer = await post_restore(world, {"type": "CLUSTER", "backup_id": str(world.incremental_id)})
    assert answer.status_code == 200, answer.text
    ended = await wait_job(system, answer.json()["id"])
    assert ended.phase == "SUCCEEDED", ended.error
    names = {d for d in databases(world.pg) if not d.startswith("template")}
    assert names == {"postgres", SHOP, "target"}  # as the backup holds them
    with psycopg.connect(world.pg.url, autocommit=True) as conn:
        templates = conn.execute(
            "SELECT datname FROM pg_database WHERE datistemplate ORDER BY 1"
        ).fetchall()
    assert templates == [("template0",), ("template1",)]  # template1 replaced, still a template
    with psycopg.connect(world.pg.url, autocommit=True) as conn:
        in_postgres = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE '%%_in_postgres' ORDER BY 1"
        ).fetchall()
        kept = conn.execute("SELECT count(*), sum(id) FROM kept_in_postgres").fetchone()
    assert in_postgres == [("kept_in_postgres",)] and kept == (7, 28)  # postgres replaced too
    assert owners_and_grants(world.pg, SHOP) == (("shop_owner",), (True,))
    for table, expected in world.at_incremental.items():
        assert digest(world.pg, SHOP, table) == expected


@pytest.mark.parametrize("lost", ["reaped", "released-as-orphan"])
async def test_a_restore_worker_whose_lease_was_lost_stops_and_the_job_ends_once(
    world: World, lost: str
) -> None:
    """The restore's lease is lost while its worker still copies rows: the worker's next
    renewal finds its fencing token stale, it stops, records nothing of its own, and the
    destination gets no database. ``reaped``: another instance reaped it (as after a pause
    longer than the lease), and the job keeps the reaper's end. ``released-as-orphan``: a reaper
    released the lease without recording an end (as when the lease expired before the job's
    start was saved): the job runner records FAILED ``LEASE_LOST``, so no job stays running."""
    system, pg = world.system, world.pg
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE fenced")
    with psycopg.connect(pg.url_for("fenced"), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id bigint PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO wide SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 6) "
            "FROM generate_series(1, 300000) g"
        )
    cluster_id = f"fenced-{uuid4().hex[:6]}"
    assert (
        await system.register(
            cluster_id, connection_ref=connection_ref(pg), regions=["eu-west-1"],
            secret=pg.password,
        )
    ).code == 200  # fmt: skip
    backup_id = await take(system, cluster_id)
    assert (await wait_terminal(system, backup_id)).status == "COMPLETE"
    before = databases(pg)
    body = {
        "type": "DATABASE",
        "backup_id": str(backup_id),
        "objects": [{"database": "fenced"}],
        "restore_opts": {"new_db_name": "fenced copy"},
    }
    answer = await post_restore(world, body, cluster_id)
    assert answer.status_code == 200, answer.text
    restore_id = UUID(answer.json()["id"])
    job_id = Restore.create_id(cluster_id, restore_id)
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(60):  # the fault hits the job mid-copy
            while True:
                job = await asyncio.to_thread(store.get_or_none, job_id, Restore)
                temporary = [d for d in databases(pg) if d.startswith("mb_restore_")]
                if job is not None and job.phase == "RUNNING" and temporary:
                    break
                await asyncio.sleep(0.02)
        if lost == "reaped":  # the reaper of another instance: the job FAILED, lease released
            job.fail("LEASE_EXPIRED", "reaped by another instance", "restore lease",
                     "unchanged", datetime.now(UTC), "restore-other")  # fmt: skip
            store.save_all(job)
        db = SqlDatabase(system.settings.store_url)
        JobLeases(db, "restore").release(job_id)
        db.close()

        # The worker stops and drops its own temporary database; the copy never appears.
        async with asyncio.timeout(60):
            while databases(pg) != before:
                assert "fenced copy" not in databases(pg)
                await asyncio.sleep(0.1)
        async with asyncio.timeout(60):
            while True:
                final = await asyncio.to_thread(store.get_or_none, job_id, Restore)
                if final is not None and final.is_terminal:
                    break
                await asyncio.sleep(0.1)
        recorded = list(store.events.get(job_id))  # type: ignore[attr-defined]
        events = [type(e).__name__ for e in recorded]
        assert "RestoreSucceeded" not in events and events.count("RestoreFailed") == 1, events
        assert events[-1] == "RestoreFailed", events
        assert final.error is not None
        assert final.error["code"] == ("LEASE_EXPIRED" if lost == "reaped" else "LEASE_LOST")
        if lost == "released-as-orphan":
            assert "were dropped" in recorded[-1].destination_state, recorded[-1]
        assert "fenced copy" not in databases(pg)
    finally:
        store.close()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS fenced WITH (FORCE)")
            conn.execute('DROP DATABASE IF EXISTS "fenced copy" WITH (FORCE)')
