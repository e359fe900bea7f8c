"""The backup-executor as a service: real PostgreSQL source, real broker, both object stores."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from managed_backups.contracts import topics
from managed_backups.services.executor.service import run as run_executor
from managed_backups.services.retention.retention import Retention
from managed_backups.shared import jobs
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.backup_lifecycle import TERMINAL
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from tests.harness import System, run_cluster_commands_only, service_process
from tests.infra.postgres import LocalPostgres
from tests.infra.s3 import LocalS3

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    """The cluster being backed up: two databases with tables, one without."""
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            for name in ("shop", "crm", "empty"):
                conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(pg.url_for("shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric, note text)")
            conn.execute(
                "INSERT INTO orders SELECT g, g * 1.5, repeat('x', 50) FROM generate_series(1, 20000) g"
            )
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
        with psycopg.connect(pg.url_for("crm"), autocommit=True) as conn:
            conn.execute("CREATE TABLE contacts (id int PRIMARY KEY, email text)")
            conn.execute(
                "INSERT INTO contacts SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 3000) g"
            )
            conn.execute("CREATE TABLE events (at timestamptz, what text)")  # no primary key
            conn.execute(
                "INSERT INTO events SELECT now(), 'e' || g FROM generate_series(1, 1000) g"
            )
        yield pg


def connection_ref(pg: LocalPostgres, user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{pg.port}/postgres"


async def register_source(system: System, prefix: str, pg: LocalPostgres) -> str:
    """A new cluster backed by ``pg``, with its connection secret set; returns its id."""
    cluster_id = f"{prefix}-{uuid4().hex[:6]}"
    registered = await system.register(
        cluster_id, connection_ref=connection_ref(pg), secret=pg.password
    )
    assert registered.code == 200, registered
    return cluster_id


async def scheduled_system(tmp_path: Path, kafka: str) -> System:
    """Projections and the scheduler on the simulated clock (the executor is up to the test)."""
    return await System.start(
        tmp_path,
        f"sqlite:///{tmp_path / 'events.sqlite'}",
        kafka,
        services=("projections", "scheduler"),
        simulated_clock=True,
        poll_interval_seconds=0.01,
    )


async def executor_system(tmp_path: Path, kafka: str, **settings: Any) -> System:
    """Projections, the cluster registry (no schedule) and the executor, in this process."""
    system = await System.start(
        tmp_path,
        f"sqlite:///{tmp_path / 'events.sqlite'}",
        kafka,
        services=("projections",),
        **settings,
    )
    await system.start_service("registry", run_cluster_commands_only)
    await system.start_service("backup-executor", run_executor)
    return system


@pytest.fixture
async def system(tmp_path: Path, kafka: str, source: LocalPostgres) -> AsyncIterator[System]:
    system = await executor_system(tmp_path, kafka, backup_lease_seconds=3.0)
    yield system
    await system.close()


async def take(
    system: System,
    cluster_id: str,
    backup_type: str = "FULL",
    key: str | None = None,
    **fields: Any,
) -> UUID:
    backup_id = uuid4()
    result = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": cluster_id,
            "backup_id": str(backup_id),
            "backup_type": backup_type,
            **fields,
        },
        key,
    )
    assert result.code == 200, result
    return backup_id


def find_backup(store: Any, backup_id: UUID) -> Backup | None:
    """The backup ``backup_id`` of whichever cluster, read from the event store."""
    from managed_backups.shared.eventstore import event_topics

    topics_ = event_topics(Backup.BackupStarted)  # type: ignore[attr-defined]
    for row in store.notifications(0, 1_000_000, topics_):
        event = store.domain_event(row)
        if event.backup_id == backup_id:
            found: Backup | None = store.get_or_none(event.originator_id, Backup)
            return found
    return None


async def wait_terminal(system: System, backup_id: UUID, timeout: float = 120) -> Backup:
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                backup = await asyncio.to_thread(find_backup, store, backup_id)
                if backup is not None and backup.is_terminal:
                    await system.wait_projection(store.max_position())
                    return backup
                await asyncio.sleep(0.1)
    finally:
        store.close()


async def test_full_then_incremental_with_views(system: System, source: LocalPostgres) -> None:
    cluster_id = await register_source(system, "shop", source)
    full_id = await take(system, cluster_id)
    full = await wait_terminal(system, full_id)
    assert full.status == "COMPLETE", full.error
    with psycopg.connect(source.url_for("shop"), autocommit=True) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id % 100 = 0")
        conn.execute("INSERT INTO orders SELECT g, 1, 'new' FROM generate_series(20001, 20200) g")
    incremental_id = await take(system, cluster_id, "INCREMENTAL", chain_id=str(full_id))
    incremental = await wait_terminal(system, incremental_id)
    assert incremental.status == "COMPLETE", incremental.error
    assert incremental.size_bytes < full.size_bytes / 4

    assert system.http is not None
    listing = (await system.http.get(f"/api/v1/clusters/{cluster_id}/backups")).json()
    rows = {r["id"]: r for r in listing["backups"]}
    assert (
        rows[str(full_id)]["type"] == "FULL" and rows[str(incremental_id)]["type"] == "INCREMENTAL"
    )
    assert rows[str(full_id)]["status"] == "COMPLETE" and rows[str(full_id)]["database_count"] == 2
    assert rows[str(full_id)]["region"] in ("us-east-1", "eu-west-1", "ap-south-1")
    assert rows[str(full_id)]["as_of_time"] < rows[str(incremental_id)]["as_of_time"]
    assert listing["pagination"] == {"next_page": None, "previous_page": None}
    paged = (
        await system.http.get(
            f"/api/v1/clusters/{cluster_id}/backups",
            params={"pagination.limit": 1, "pagination.sort_order": "ASC"},
        )
    ).json()
    assert [r["id"] for r in paged["backups"]] == [str(full_id)] and paged["pagination"][
        "next_page"
    ] == "2"

    databases = (
        await system.http.get(f"/api/v1/clusters/{cluster_id}/backups/{full_id}/databases")
    ).json()["databases"]
    assert sorted((d["name"], d["table_count"]) for d in databases) == [("crm", 2), ("shop", 2)]
    tables = (
        await system.http.get(
            f"/api/v1/clusters/{cluster_id}/backups/{full_id}/databases/shop/tables"
        )
    ).json()["tables"]
    assert {(t["schema"], t["name"]) for t in tables} == {("public", "orders"), ("public", "items")}
    assert {t["name"]: t["row_count"] for t in tables}["orders"] == 20000

    metrics = (await system.http.get("/metrics")).text
    assert f'managed_backups_backups{{cluster="{cluster_id}",status="COMPLETE"}} 2' in metrics
    assert (
        f'managed_backups_last_successful_backup_timestamp_seconds{{cluster="{cluster_id}"}}'
        in metrics
    )

    # A duplicate TakeBackup for the same backup id does nothing.
    again = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": cluster_id,
            "backup_id": str(full_id),
            "backup_type": "FULL",
        },
    )
    assert again.code == 200
    events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()["events"]
    assert [e["type"] for e in events if e.get("backup_id") == str(full_id)] == [
        "BackupStarted",
        "BackupCompleted",
    ]


async def test_unreachable_cluster_and_permission_error_end_as_incomplete_backups(
    system: System, source: LocalPostgres
) -> None:
    unreachable = f"gone-{uuid4().hex[:6]}"
    assert (
        await system.register(
            unreachable, connection_ref="postgresql://postgres@127.0.0.1:1/postgres"
        )
    ).code == 200
    failed = await wait_terminal(system, await take(system, unreachable))
    assert failed.status == "FAILED" and failed.error is not None
    assert failed.error["code"] == "CONNECTION_FAILED"

    with psycopg.connect(source.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS weak")
        conn.execute("CREATE ROLE weak LOGIN PASSWORD 'weakpw'")
    limited = f"weak-{uuid4().hex[:6]}"
    assert (
        await system.register(
            limited, connection_ref=connection_ref(source, "weak"), secret="weakpw"
        )
    ).code == 200
    denied = await wait_terminal(system, await take(system, limited))
    assert denied.status == "FAILED" and denied.error is not None
    assert denied.error["code"] == "PERMISSION_DENIED", denied.error

    assert system.http is not None
    incomplete = (await system.http.get(f"/api/v1/clusters/{limited}/backups/incomplete")).json()[
        "backups"
    ]
    assert incomplete[0]["status"] == "FAILED"
    assert (
        incomplete[0]["error"]["code"] == "PERMISSION_DENIED" and incomplete[0]["error"]["message"]
    )
    assert incomplete[0]["failed_step"]
    assert denied.ended_at is not None
    assert incomplete[0]["duration_seconds"] == pytest.approx(
        (denied.ended_at - denied.started_at).total_seconds(), abs=0.001
    )
    assert (await system.http.get(f"/api/v1/clusters/{limited}/backups")).json()["backups"] == []


async def verifications(system: System, backup_id: UUID, count: int) -> list[Any]:
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(60):
            while True:
                events = [store.domain_event(n) for n in store.notifications(0, 100000)]
                verified = [
                    e
                    for e in events
                    if type(e).__name__ == "BackupVerified" and e.backup_id == backup_id
                ]
                if len(verified) >= count:
                    return verified
                await asyncio.sleep(0.1)
    finally:
        store.close()


async def test_verify_finds_a_corrupted_chunk(system: System, source: LocalPostgres) -> None:
    cluster_id = await register_source(system, "ver", source)
    backup_id = await take(system, cluster_id)
    backup = await wait_terminal(system, backup_id)
    assert backup.status == "COMPLETE"
    verify = {"type": "VerifyBackup", "cluster_id": cluster_id, "backup_id": str(backup_id)}
    assert (await system.command(topics.BACKUP_COMMANDS, verify)).code == 200
    first = (await verifications(system, backup_id, 1))[0]
    chunk_dir = (
        system.settings.data_dir
        / "objects"
        / backup.region
        / "clusters"
        / cluster_id
        / "chains"
        / str(backup_id)
        / "chunks"
    )
    chunks = sorted(p for p in chunk_dir.rglob("*") if p.is_file())
    assert first.ok is True and first.chunks_checked == len(chunks) > 0
    victim = max(chunks, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert (await system.command(topics.BACKUP_COMMANDS, verify)).code == 200
    second = (await verifications(system, backup_id, 2))[1]
    assert second.ok is False and second.missing_chunks == []
    assert [key.rsplit("/", 1)[1] for key in second.corrupt_chunks] == [victim.name]
    # Not COMPLETE (or unknown): refused with the reason.
    unknown = await system.command(topics.BACKUP_COMMANDS, {**verify, "backup_id": str(uuid4())})
    assert unknown.code == 404
    # Each verify ran through the job runner under a lease holding its backup, released once
    # it ended (the refused one's at once).
    db = SqlDatabase(system.settings.store_url)
    try:
        async with asyncio.timeout(30):
            while jobs.of_kind(db, jobs.VERIFY):
                await asyncio.sleep(0.05)
    finally:
        db.close()


async def test_s3_region_store(tmp_path: Path, kafka: str, source: LocalPostgres) -> None:
    with LocalS3() as s3:
        s3.create_bucket("backups")
        url = f"s3://backups/mb?endpoint={s3.endpoint_url}&region=us-east-1&allow_http=true&access_key_id=test&secret_access_key=test"
        system = await System.start(
            tmp_path,
            f"sqlite:///{tmp_path / 'events.sqlite'}",
            kafka,
            services=("projections",),
            region_stores={"s3-region": url},
        )
        await system.start_service("registry", run_cluster_commands_only)
        await system.start_service("backup-executor", run_executor)
        try:
            cluster_id = f"s3-{uuid4().hex[:6]}"
            assert (
                await system.register(
                    cluster_id,
                    regions=["s3-region"],
                    connection_ref=connection_ref(source),
                    secret=source.password,
                )
            ).code == 200
            backup = await wait_terminal(system, await take(system, cluster_id))
            assert backup.status == "COMPLETE", backup.error
            assert backup.region == "s3-region"
            from managed_backups.shared.dataplane.objectstore import open_store

            keys = [o.key for o in open_store(url).list(f"clusters/{cluster_id}/")]
            assert any(k.endswith(f"manifests/{backup.backup_id}.json") for k in keys)
            assert not (tmp_path / "objects" / "s3-region").exists()
        finally:
            await system.close()


async def wait_group_members(kafka: str, group: str, pids: list[int], timeout: float = 60) -> None:
    """Wait until the processes ``pids`` are the group's only members, the group is stable and
    every member holds partitions."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupCoordinatorNotAvailableError
    from aiokafka.protocol.group import MemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    described = await admin.describe_consumer_groups([group])
                except GroupCoordinatorNotAvailableError:  # the group does not exist yet
                    described = []
                if described and described[0].groups:
                    group_info = described[0].groups[0]
                    clients = sorted(int(m[1].rsplit("-", 1)[1]) for m in group_info[5])
                    assigned = [
                        sum(len(parts) for _, parts in MemberAssignment.decode(m[4]).assignment)
                        if m[4]
                        else 0
                        for m in group_info[5]
                    ]
                    if (
                        group_info[2] == "Stable"
                        and clients == sorted(pids)
                        and all(n > 0 for n in assigned)
                    ):
                        return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def start_executor_process(
    system: System, log: Path, lease: float, **settings: str
) -> subprocess.Popen[bytes]:
    return service_process(
        system,
        "backup-executor",
        log,
        MANAGED_BACKUPS_BACKUP_LEASE_SECONDS=str(lease),
        **{f"MANAGED_BACKUPS_{name.upper()}": value for name, value in settings.items()},
    )


async def test_executor_killed_mid_backup_fails_within_the_lease_and_leaves_nothing(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    """SIGKILLed while writing a full: another executor fails it (``LEASE_EXPIRED``) and deletes
    nothing; the next retention pass deletes what it left (its chain: the full failed)."""
    with psycopg.connect(source.url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS big")
        conn.execute("CREATE DATABASE big")
    with psycopg.connect(source.url_for("big"), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id bigint PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO wide SELECT g, md5(g::text) || repeat(md5((g*7)::text), 12) FROM generate_series(1, 600000) g"
        )
    system = await System.start(
        tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}", kafka, services=("projections",)
    )
    await system.start_service("registry", run_cluster_commands_only)
    executor = start_executor_process(system, tmp_path / "executor-1.log", lease=4.0)
    try:
        cluster_id = await register_source(system, "kill", source)
        backup_id = await take(system, cluster_id)
        store = open_event_store(system.settings.store_url)
        region_dir = system.settings.data_dir / "objects"
        async with asyncio.timeout(60):  # wait until it is writing chunks, then kill it
            while not any(p.is_file() for p in region_dir.rglob("chunks/*/*")):
                await asyncio.sleep(0.05)
        executor.send_signal(signal.SIGKILL)
        executor.wait()
        killed_at = asyncio.get_running_loop().time()
        backup = find_backup(store, backup_id)
        assert backup is not None and backup.status == "IN_PROGRESS"
        executor = start_executor_process(system, tmp_path / "executor-2.log", lease=4.0)
        failed = await wait_terminal(system, backup_id, timeout=60)
        assert failed.status == "FAILED" and failed.error is not None
        assert failed.error["code"] == "LEASE_EXPIRED"
        assert asyncio.get_running_loop().time() - killed_at < 4.0 * 3
        chain = region_dir / failed.region / "clusters" / cluster_id / "chains" / str(backup_id)
        assert any(p.is_file() for p in chain.rglob("*"))  # the reaper only records the failure
        db = SqlDatabase(system.settings.store_url)
        retention = Retention(store, db, system.settings.region_store_url)
        report = await asyncio.to_thread(retention.enforce, datetime.now(UTC))
        db.close()
        assert report.chains_deleted == 1 and not report.errors
        assert not chain.exists() or not any(p.is_file() for p in chain.rglob("*"))
        assert system.http is not None
        assert (await system.http.get(f"/api/v1/clusters/{cluster_id}/backups")).json()[
            "backups"
        ] == []
        store.close()
    finally:
        executor.terminate()
        executor.wait()
        await system.close()
        with psycopg.connect(source.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS big")


async def test_two_executors_share_the_work_without_taking_a_backup_twice(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    system = await System.start(
        tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}", kafka, services=("projections",)
    )
    await system.start_service("registry", run_cluster_commands_only)
    first = start_executor_process(system, tmp_path / "executor-a.log", lease=30)
    second = start_executor_process(system, tmp_path / "executor-b.log", lease=30)
    try:
        await wait_group_members(
            system.settings.kafka_bootstrap_servers,
            "managed-backups.backup-executor",
            [first.pid, second.pid],
        )
        clusters = [f"share{i}-{uuid4().hex[:4]}" for i in range(8)]
        ids = []
        for cluster_id in clusters:
            assert (
                await system.register(
                    cluster_id, connection_ref=connection_ref(source), secret=source.password
                )
            ).code == 200
            ids.append(await take(system, cluster_id))
        backups = [await wait_terminal(system, b, timeout=180) for b in ids]
        assert all(b.status == "COMPLETE" for b in backups), [b.error for b in backups]
        used = {b.executor for b in backups}
        logs = "".join(
            (tmp_path / n).read_text()[-2000:] for n in ("executor-a.log", "executor-b.log")
        )
        assert len(used) == 2, (used, logs)
        store = open_event_store(system.settings.store_url)
        started = [
            e
            for e in (store.domain_event(n) for n in store.notifications(0, 100000))
            if type(e).__name__ == "BackupStarted"
        ]
        store.close()
        assert sorted(e.backup_id for e in started) == sorted(ids)
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.wait()
        await system.close()


async def test_the_scheduler_with_the_real_executor(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    """The scheduler's sequence (full, then incrementals on it) taken for real."""
    system = await scheduled_system(tmp_path, kafka)
    try:
        cluster_id = await register_source(system, "sched", source)
        # Started once the cluster's secret is set: the first TakeBackup, sent at registration,
        # waits on its topic until then.
        await system.start_service("backup-executor", run_executor)
        assert system.http is not None

        async def listed(count: int) -> list[dict[str, Any]]:
            async with asyncio.timeout(120):
                while True:
                    response = await system.http.get(  # type: ignore[union-attr]
                        f"/api/v1/clusters/{cluster_id}/backups",
                        params={"pagination.sort_order": "ASC"},
                    )
                    rows = response.json().get("backups", [])
                    if len(rows) == count and all(r["status"] == "COMPLETE" for r in rows):
                        return rows  # type: ignore[no-any-return]
                    await asyncio.sleep(0.1)

        rows = await listed(1)
        for hour in (1, 2):
            with psycopg.connect(source.url_for("shop"), autocommit=True) as conn:
                conn.execute(f"UPDATE orders SET note = 'hour {hour}' WHERE id % 50 = 0")
            system.clock.advance(3600)
            rows = await listed(hour + 1)
        assert [r["type"] for r in rows] == ["FULL", "INCREMENTAL", "INCREMENTAL"]
        assert rows[1]["size_bytes"] < rows[0]["size_bytes"] / 4
        expires = [r["expires_at"] for r in rows]
        assert expires == sorted(expires)
    finally:
        await system.close()


async def test_a_catalog_larger_than_an_event_lists_is_read_from_the_manifest(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    """The completed backup's event lists tables only up to a bound (here 2 of 4); the views
    still answer for every database and table, from the backup's manifest."""
    system = await executor_system(tmp_path, kafka, catalog_tables_in_event=2)
    try:
        cluster_id = await register_source(system, "cat", source)
        backup = await wait_terminal(system, await take(system, cluster_id))
        assert backup.status == "COMPLETE", backup.error
        assert system.http is not None
        events = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()["events"]
        catalog = next(e["catalog"] for e in events if e["type"] == "BackupCompleted")
        listed = sum(len(s["tables"]) for db in catalog for s in db["schemas"])
        assert listed == 2 and sorted(db["table_count"] for db in catalog) == [2, 2]

        base = f"/api/v1/clusters/{cluster_id}/backups/{backup.backup_id}/databases"
        databases = (await system.http.get(base)).json()["databases"]
        assert sorted((d["name"], d["table_count"]) for d in databases) == [
            ("crm", 2),
            ("shop", 2),
        ]
        for database, expected in (("shop", {"orders", "items"}), ("crm", {"contacts", "events"})):
            tables = (await system.http.get(f"{base}/{database}/tables")).json()["tables"]
            assert {t["name"] for t in tables} == expected
        assert (await system.http.get(f"{base}/nope/tables")).status_code == 404
    finally:
        await system.close()


async def test_executor_killed_between_recording_the_start_and_running_the_backup(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    """The window between saving BackupStarted and starting the worker: an executor that dies
    there leaves a lease that expires, the backup is failed with LEASE_EXPIRED, and the
    cluster's schedule goes on (the next slot's backup runs)."""
    system = await scheduled_system(tmp_path, kafka)
    simulated = {"simulated_clock": "true", "simulated_clock_start": "2026-01-05T00:00:00+00:00"}
    crashing = start_executor_process(
        system,
        tmp_path / "executor-crash.log",
        lease=5.0,
        test_crash_at="executor-after-backup-started-saved",
        **simulated,
    )
    replacement: subprocess.Popen[bytes] | None = None
    store = open_event_store(system.settings.store_url)
    try:
        cluster_id = await register_source(system, "window", source)
        # Slot 0's full backup is sent at once; the executor records it and dies.
        exit_code = await asyncio.to_thread(crashing.wait, 120)
        assert exit_code == 86, (tmp_path / "executor-crash.log").read_text()
        started = [
            b
            for b in await asyncio.to_thread(backups_of, store, cluster_id)
            if b.status == "IN_PROGRESS"
        ]
        assert len(started) == 1
        stuck = started[0]

        replacement = start_executor_process(
            system, tmp_path / "executor-2.log", lease=5.0, **simulated
        )
        system.clock.advance(60)  # past the lease, well before the next hourly slot
        failed = await wait_terminal(system, stuck.backup_id, timeout=60)
        assert failed.status == "FAILED" and failed.error is not None
        assert failed.error["code"] == "LEASE_EXPIRED"

        system.clock.advance(3600)  # the next slot: a full again, taken for real
        async with asyncio.timeout(120):
            while True:
                done = [
                    b
                    for b in await asyncio.to_thread(backups_of, store, cluster_id)
                    if b.status == "COMPLETE"
                ]
                if done:
                    break
                await asyncio.sleep(0.2)
        assert done[0].backup_type == "FULL"
    finally:
        for process in (crashing, replacement):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait()
        store.close()
        await system.close()


def backups_of(store: Any, cluster_id: str) -> list[Backup]:
    """Every Backup of the cluster, read from the event store (the source of truth)."""
    from managed_backups.shared.eventstore import event_topics

    topics_ = event_topics(Backup.BackupStarted)  # type: ignore[attr-defined]
    ids = {store.domain_event(n).originator_id for n in store.notifications(0, 100_000, topics_)}
    found = [store.get_or_none(i, Backup) for i in ids]
    return [b for b in found if b is not None and b.cluster_id == cluster_id]


async def test_a_new_secret_takes_the_full_that_failed_without_it_and_incrementals_follow_it(
    tmp_path: Path, kafka: str, source: LocalPostgres
) -> None:
    """A new user registers, the first full (sent at registration) fails without a password,
    then sets the secret: a full is taken at once, not a frequency later; a later change of a
    secret with a COMPLETE full takes nothing."""
    system = await scheduled_system(tmp_path, kafka)
    try:
        await system.start_service("backup-executor", run_executor)
        cluster_id = f"late-{uuid4().hex[:6]}"
        assert (
            await system.register(cluster_id, connection_ref=connection_ref(source))
        ).code == 200
        store = open_event_store(system.settings.store_url)

        async def backups(until: Any) -> list[Backup]:
            async with asyncio.timeout(120):
                while True:
                    found = await asyncio.to_thread(backups_of, store, cluster_id)
                    if until(found):
                        return found
                    await asyncio.sleep(0.1)

        [first] = await backups(lambda b: len(b) == 1 and b[0].status == "FAILED")
        assert first.error is not None and first.error["code"] == "AUTHENTICATION_FAILED"
        assert f"clusters set-secret {cluster_id}" in first.error["message"]
        refused = await system.command(
            topics.BACKUP_COMMANDS,
            {
                "type": "TakeBackup",
                "cluster_id": cluster_id,
                "backup_id": str(uuid4()),
                "backup_type": "INCREMENTAL",
            },
        )
        assert refused.code == 409 and "no restorable backup" in (refused.reason or "")
        assert (await system.set_secret(cluster_id, source.password)).status_code == 200
        found = await backups(lambda b: len(b) == 2 and all(x.status in TERMINAL for x in b))
        taken = next(b for b in found if b.backup_id != first.backup_id)
        assert (taken.backup_type, taken.status) == ("FULL", "COMPLETE"), taken.error
        # The PUT answers after the backup command it sent is answered: nothing more came.
        assert (await system.set_secret(cluster_id, source.password)).status_code == 200
        assert len(backups_of(store, cluster_id)) == 2
        # An incremental on demand builds on the newest restorable backup's chain (not on the
        # schedule's chain, whose full failed).
        incremental = await wait_terminal(system, await take(system, cluster_id, "INCREMENTAL"))
        assert (incremental.status, incremental.chain_id) == ("COMPLETE", taken.backup_id)
        store.close()
    finally:
        await system.close()
