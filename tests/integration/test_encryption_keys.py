"""Encryption at rest through the services: a cluster's customer key configured over the API and
the CLI (ADVANCED only, the right role, audited without key material), backups taken by the
real executor under it and restored by the restore service, rotation jobs of the retention
service, a revoked customer key, a tampered backup — on a real broker, PostgreSQL and store."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import logging
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
from managed_backups.services.retention.key_rotation import KeyRotations
from managed_backups.services.retention.retention import Retention
from managed_backups.services.retention.service import run as run_retention
from managed_backups.services.runtime import open_runtime
from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.domain.encryption_key import KeyRotation
from managed_backups.shared.domain.ids import key_rotation_id
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.eventstore import open_event_store
from tests.harness import System, run_cluster_commands_only
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import connection_ref, take, verifications, wait_terminal
from tests.integration.test_restore import databases, free_port, wait_job
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration

REGION = "us-east-1"


def utc_now() -> datetime:
    return datetime.now(UTC)


MARKER = "iban-DE89-3704-0044-0532-0130-00"


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE accounts")
        with psycopg.connect(pg.url_for("accounts"), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE ledger (id int PRIMARY KEY, iban text, amount numeric);"
                "INSERT INTO ledger SELECT g, CASE WHEN g % 100 = 0 THEN "
                f"'{MARKER}' ELSE md5(g::text) END, g FROM generate_series(1, 5000) g"
            )
        yield pg


@dataclass
class World:
    system: System
    pg: LocalPostgres

    @property
    def customer_keys(self) -> Path:
        return self.system.settings.customer_keys_path

    def raw(self) -> ObjectStore:
        return ObjectStore(self.system.settings.region_store_url(REGION))

    def objects(self, cluster_id: str) -> dict[str, bytes]:
        raw = self.raw()
        return {i.key: raw.get(i.key) for i in raw.list(f"clusters/{cluster_id}/")}

    async def cluster(self, tier: str = "ADVANCED") -> str:
        cluster_id = f"acct-{uuid4().hex[:6]}"
        result = await self.system.register(
            cluster_id,
            tier=tier,
            regions=[REGION],
            connection_ref=connection_ref(self.pg),
            secret=self.pg.password,
        )
        assert result.code == 200, result
        return cluster_id

    def new_key(self, cluster_id: str, name: str) -> str:
        """A customer key file, made with the CLI; returns its contents (to search for)."""
        code = cli_main(
            [
                "encryption-key",
                "new-customer-key",
                cluster_id,
                name,
                "--data-dir",
                str(self.system.settings.data_dir),
            ]
        )
        assert code == 0
        return (self.customer_keys / cluster_id / f"{name}.key").read_text().strip()

    async def with_customer_key(self, name: str) -> str:
        """A new ADVANCED cluster whose customer key ``name`` is configured."""
        cluster_id = await self.cluster()
        self.new_key(cluster_id, name)
        assert (await self.set_key(cluster_id, name)).status_code == 200
        return cluster_id

    async def set_key(self, cluster_id: str, name: str, credential: str | None = None) -> Any:
        assert self.system.http is not None
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return await self.system.http.put(
            f"/api/v1/clusters/{cluster_id}/encryption-key",
            json={"key_name": name},
            headers=headers,
        )

    async def backup(self, cluster_id: str, backup_type: str = "FULL", **fields: Any) -> UUID:
        backup_id = await take(self.system, cluster_id, backup_type, **fields)
        backup = await wait_terminal(self.system, backup_id)
        assert backup.status == "COMPLETE", backup.error
        return backup_id

    async def restore(self, cluster_id: str, backup_id: UUID, new_name: str) -> Any:
        assert self.system.http is not None
        return await self.system.http.post(
            f"/api/v1/clusters/{cluster_id}/restores",
            json={
                "type": "DATABASE",
                "backup_id": str(backup_id),
                "objects": [{"database": "accounts"}],
                "restore_opts": {"new_db_name": new_name},
            },
        )

    async def restored_exactly(self, cluster_id: str, backup_id: UUID, at: Any) -> None:
        name = f"r_{uuid4().hex[:8]}"
        answer = await self.restore(cluster_id, backup_id, name)
        assert answer.status_code == 200, answer.text
        job = await wait_job(self.system, answer.json()["id"])
        assert job.phase == "SUCCEEDED", job.error
        assert table_digest(self.pg.url_for(name), "public", "ledger") == at

    def digest(self) -> Any:
        return table_digest(self.pg.url_for("accounts"), "public", "ledger")


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, kafka: str, source: LocalPostgres
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("encryption-keys")
    system = await System.start(
        tmp,
        f"sqlite:///{tmp / 'events.sqlite'}",
        kafka,
        services=("projections",),
        api_port=free_port(),
    )
    await system.start_service("api")
    await system.start_service("registry", run_cluster_commands_only)
    await system.start_service("backup-executor", run_executor)
    await system.start_service("restore", run_restore)
    await system.start_service("retention", run_retention)
    yield World(system, source)
    await system.close()


async def rotations(system: System, cluster_id: str, count: int) -> list[KeyRotation]:
    """The cluster's rotation jobs once ``count`` of them ended (read from the event store)."""
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(60):
            while True:
                ids = {
                    e.originator_id
                    for e in map(store.domain_event, store.notifications(0, 1_000_000))
                    if type(e).__name__ == "KeyRotationStarted" and e.cluster_id == cluster_id
                }
                jobs = [store.get_or_none(i, KeyRotation) for i in ids]
                ended = [j for j in jobs if j is not None and j.is_terminal]
                if len(ended) >= count:
                    await system.wait_projection(store.max_position())
                    return ended
                await asyncio.sleep(0.1)
    finally:
        store.close()


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """The CLI's exit code, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(args)
    return code, out.getvalue(), err.getvalue()


def event_store_text(system: System) -> bytes:
    return (system.settings.data_dir / "events.sqlite").read_bytes()


async def test_a_customer_key_is_for_advanced_clusters_and_whoever_may_change_settings(
    world: World,
) -> None:
    system = world.system
    assert system.http is not None and system.api_runtime is not None
    standard = await world.cluster("STANDARD")
    world.new_key(standard, "k1")
    refused = await world.set_key(standard, "k1")
    assert refused.status_code == 400
    assert "ADVANCED clusters only" in refused.json()["message"]
    assert f"cluster {standard} is STANDARD" in refused.json()["message"]

    advanced = await world.cluster()
    grants = {
        role: await system.issue_key(
            f"{role.value.lower()}-{advanced}", role, f"cluster:{advanced}"
        )
        for role in (Role.CLUSTER_OPERATOR, Role.CLUSTER_MONITOR, Role.CLUSTER_ADMIN)
    }
    assert (await world.set_key(advanced, "k1", grants[Role.CLUSTER_OPERATOR])).status_code == 403
    assert (await world.set_key(advanced, "k1", grants[Role.CLUSTER_MONITOR])).status_code == 404
    missing = await world.set_key(advanced, "k1", grants[Role.CLUSTER_ADMIN])
    assert missing.status_code == 400
    assert "'k1' is not available" in missing.json()["message"]
    assert f"{advanced}/k1.key" in missing.json()["message"]

    key_text = world.new_key(advanced, "k1")
    answer = await world.set_key(advanced, "k1", grants[Role.CLUSTER_ADMIN])
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["provider"] == "customer" and view["key_name"] == "k1" and view["available"]
    assert view["key_id"].startswith("customer-k1-")
    shown = await system.http.get(f"/api/v1/clusters/{advanced}/encryption-key")
    assert shown.json() == view
    # Audited: who configured which key (name and id), never the key.
    trail = (await system.http.get(f"/api/v1/clusters/{advanced}/events")).json()["events"]
    configured = [e for e in trail if e["type"] == "CustomerKeyConfigured"]
    assert len(configured) == 1
    assert configured[0]["key_id"] == view["key_id"]
    assert configured[0]["by"].startswith(f"acme/cluster_admin-{advanced}-")
    raw_key = base64.b64decode(key_text)
    assert key_text.encode() not in event_store_text(system)
    assert raw_key not in event_store_text(system)
    assert key_text not in str(trail)
    # The CLI: the key shown by id (never its material), then removed.
    cli = [
        "--data-dir",
        str(system.settings.data_dir),
        "--api-url",
        f"http://127.0.0.1:{system.settings.api_port}",
    ]
    shown_by_cli = await asyncio.to_thread(run_cli, ["encryption-key", "show", advanced, *cli])
    assert shown_by_cli[0] == 0 and view["key_id"] in shown_by_cli[1]
    assert key_text not in shown_by_cli[1]
    removed = await asyncio.to_thread(run_cli, ["encryption-key", "remove", advanced, *cli])
    assert removed[0] == 0, removed
    refused_by_cli = await asyncio.to_thread(
        run_cli, ["encryption-key", "set", standard, "k1", *cli]
    )
    assert refused_by_cli[0] == 1 and "ADVANCED clusters only" in refused_by_cli[2]
    shown = (await system.http.get(f"/api/v1/clusters/{advanced}/encryption-key")).json()
    assert shown["provider"] == "platform" and shown["key_id"].startswith("platform-k0001-")
    trail = (await system.http.get(f"/api/v1/clusters/{advanced}/events")).json()["events"]
    assert [e["type"] for e in trail if e["type"].startswith("CustomerKey")] == [
        "CustomerKeyConfigured",
        "CustomerKeyRemoved",
    ]


async def test_an_outsider_cannot_tell_a_clusters_key_or_rotation_from_an_unknown_cluster(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The one access rule on the encryption-key endpoints and on RotateEncryptionKeys: an
    Organization Admin of another organization gets, word for word, what an unknown id gets;
    the refusals go to the security log and nothing into the cluster's audit trail."""
    system = world.system
    assert system.http is not None
    caplog.set_level(logging.WARNING, logger="managed_backups.security")
    victim = await world.with_customer_key("k1")
    before = (await system.http.get(f"/api/v1/clusters/{victim}/encryption-key")).json()
    outsider = await system.issue_key("outsider", Role.ORG_ADMIN, "org:elsewhere")
    unknown = f"none-{uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {outsider}"}
    for method, path, body in (
        ("GET", "encryption-key", None),
        ("PUT", "encryption-key", {"key_name": "k1"}),
        ("DELETE", "encryption-key", None),
        ("POST", "encryption-key/rotate", None),
    ):
        for cluster_id in (victim, unknown):
            answer = await system.http.request(
                method, f"/api/v1/clusters/{cluster_id}/{path}", json=body, headers=headers
            )
            assert (answer.status_code, answer.json()["message"]) == (
                404,
                f"cluster {cluster_id} is not registered",
            ), (method, path)
    on_topic = {"type": "RotateEncryptionKeys", "cluster_id": victim}
    refused = await system.command(topics.RETENTION_COMMANDS, on_topic, outsider)
    assert (refused.code, refused.reason) == (404, f"cluster {victim} is not registered")
    everything = await system.command(
        topics.RETENTION_COMMANDS, {"type": "RotateEncryptionKeys"}, outsider
    )
    assert everything.code == 403  # every cluster: the system administrator's alone
    security = [r.getMessage() for r in caplog.records if r.name == "managed_backups.security"]
    assert any(f"/api/v1/clusters/{victim}/encryption-key" in m for m in security)
    assert any("RotateEncryptionKeys" in m and victim in m for m in security)
    assert system.api_runtime is not None
    await system.wait_projection(system.api_runtime.store.max_position())
    trail = (await system.http.get(f"/api/v1/clusters/{victim}/events")).json()["events"]
    assert not [e for e in trail if str(e.get("by")).startswith("elsewhere/")]
    after = (await system.http.get(f"/api/v1/clusters/{victim}/encryption-key")).json()
    assert after == before


async def test_backups_under_a_customer_key_restore_and_a_revoked_key_fails_them_clearly(
    world: World,
) -> None:
    system = world.system
    assert system.http is not None
    cluster_id = await world.with_customer_key("k1")
    full = await world.backup(cluster_id)
    at_full = world.digest()
    stored = world.objects(cluster_id)
    key_objects = [k for k in stored if "/keys/" in k]
    assert len(key_objects) == 1 and "/keys/customer-k1-" in key_objects[0]
    assert not any(MARKER.encode() in data for data in stored.values())
    await world.restored_exactly(cluster_id, full, at_full)

    # The customer revokes the key: restores are refused before anything is recorded or
    # touched, backups fail without writing anything.
    (world.customer_keys / cluster_id / "k1.key").unlink()
    before_dbs = databases(world.pg)
    before_objects = world.objects(cluster_id)
    answer = await world.restore(cluster_id, full, "never_restored")
    assert answer.status_code == 409
    message = answer.json()["message"]
    assert f"backup {full} cannot be decrypted" in message
    assert f"customer key of cluster {cluster_id} customer-k1-" in message
    assert "revoked or missing" in message
    backup_id = await take(system, cluster_id)
    failed = await wait_terminal(system, backup_id)
    assert failed.status == "FAILED" and failed.error is not None
    assert failed.error["code"] == "KEY_UNAVAILABLE"
    assert "customer key" in failed.error["message"] and "'k1'" in failed.error["message"]
    assert databases(world.pg) == before_dbs
    assert world.objects(cluster_id) == before_objects
    shown = (await system.http.get(f"/api/v1/clusters/{cluster_id}/encryption-key")).json()
    assert shown["available"] is False and "'k1' is not available" in shown["reason"]


async def test_rotation_rewraps_every_chain_and_old_backups_stay_restorable(
    world: World,
) -> None:
    system = world.system
    assert system.http is not None
    cluster_id = await world.with_customer_key("k1")
    full = await world.backup(cluster_id)
    at_full = world.digest()
    with psycopg.connect(world.pg.url_for("accounts"), autocommit=True) as conn:
        conn.execute("UPDATE ledger SET amount = amount + 1 WHERE id % 9 = 0")
    inc = await world.backup(cluster_id, "INCREMENTAL", chain_id=str(full))
    at_inc = world.digest()
    second = await world.backup(cluster_id)
    before = world.objects(cluster_id)
    (first_job,) = await rotations(system, cluster_id, 1)  # the one k1's configuration started

    # A new customer key: configuring it starts a rotation job of the retention service.
    world.new_key(cluster_id, "k2")
    answer = await world.set_key(cluster_id, "k2")
    assert answer.status_code == 200, answer.text
    k2 = answer.json()["key_id"]
    jobs = await rotations(system, cluster_id, 2)
    (job,) = [j for j in jobs if j.id != first_job.id]
    assert job.status == "COMPLETED" and job.key_id == k2
    trail = (await system.http.get(f"/api/v1/clusters/{cluster_id}/events")).json()["events"]
    completed = [e for e in trail if e["type"] == "KeyRotationCompleted" and e["key_id"] == k2]
    assert completed and completed[0]["chains_rewrapped"] == 2
    assert completed[0]["chains_already_wrapped"] == 0
    after = world.objects(cluster_id)
    assert {k: after[k] for k in before} == before  # every stored object byte-identical
    assert sorted(set(after) - set(before)) == sorted(
        f"clusters/{cluster_id}/chains/{c}/keys/{k2}.json" for c in (full, second)
    )
    # The old key retired: the backups taken under it restore with the new one.
    (world.customer_keys / cluster_id / "k1.key").unlink()
    await world.restored_exactly(cluster_id, inc, at_inc)
    await world.restored_exactly(cluster_id, full, at_full)

    # A rotation sent again changes nothing (every chain is wrapped by k2 already).
    assert (
        await system.http.post(f"/api/v1/clusters/{cluster_id}/encryption-key/rotate")
    ).status_code == 200
    jobs = await rotations(system, cluster_id, 3)
    assert sorted(j.status for j in jobs) == ["COMPLETED"] * 3
    assert world.objects(cluster_id) == after


async def test_a_tampered_chunk_is_reported_by_verify_and_fails_the_restore(
    world: World,
) -> None:
    system = world.system
    cluster_id = await world.cluster("STANDARD")  # the platform key
    full = await world.backup(cluster_id)
    raw = world.raw()
    chunks = sorted(
        (i for i in raw.list(f"clusters/{cluster_id}/chains/{full}/chunks/")),
        key=lambda i: i.size,
    )
    victim = Path(system.settings.region_store_url(REGION).removeprefix("file://")) / chunks[-1].key
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    verify = {"type": "VerifyBackup", "cluster_id": cluster_id, "backup_id": str(full)}
    assert (await system.command(topics.BACKUP_COMMANDS, verify)).code == 200
    (report,) = await verifications(system, full, 1)
    assert report.ok is False and report.corrupt_chunks == [chunks[-1].key]
    before = databases(world.pg)
    answer = await world.restore(cluster_id, full, "tampered")
    assert answer.status_code == 200, answer.text
    job = await wait_job(system, answer.json()["id"])
    assert job.error is not None and job.error["code"] == "CHUNK_CORRUPT"
    assert "fails authentication" in job.error["message"]
    assert databases(world.pg) == before


async def test_a_chain_recorded_as_encrypted_is_never_read_as_unencrypted(
    world: World,
) -> None:
    """Someone who can write the bucket replaces an encrypted chain by a valid unencrypted one
    (its key objects gone, as for a chain from before encryption): the control plane recorded
    the chain as encrypted, so the restore and VerifyBackup refuse it."""
    system = world.system
    cluster_id = await world.cluster("STANDARD")
    full = await world.backup(cluster_id)
    backup = await wait_terminal(system, full)
    assert backup.encrypted is True
    raw = world.raw()
    raw.delete_prefix(f"clusters/{cluster_id}/chains/{full}/")
    with psycopg.connect(world.pg.url_for("accounts"), autocommit=True) as conn:
        conn.execute("UPDATE ledger SET amount = -1 WHERE id = 1")  # the forged content
    try:
        adapter = PostgresAdapter(world.pg.dsn_for("postgres"), password=world.pg.password)
        await asyncio.to_thread(adapter.full_backup, BackupRequest(raw, cluster_id, str(full)))
        answer = await world.restore(cluster_id, full, "forged")
        assert answer.status_code == 409, answer.text
        assert "recorded as stored encrypted" in answer.json()["message"]
        verify = {"type": "VerifyBackup", "cluster_id": cluster_id, "backup_id": str(full)}
        assert (await system.command(topics.BACKUP_COMMANDS, verify)).code == 200
        (report,) = await verifications(system, full, 1)
        assert report.ok is False
        assert "recorded as stored encrypted" in report.missing_chunks[0]
    finally:
        with psycopg.connect(world.pg.url_for("accounts"), autocommit=True) as conn:
            conn.execute("UPDATE ledger SET amount = 1 WHERE id = 1")


async def test_a_rotation_worker_whose_lease_was_lost_writes_no_key_and_records_nothing(
    world: World,
) -> None:
    """Key rotations are fenced: a rotation worker whose lease another instance reaped (as
    after a pause longer than the lease) writes no re-wrapped key object and records nothing;
    the reaper's end stands."""
    system = world.system
    cluster_id = await world.with_customer_key("k1")
    await world.backup(cluster_id)
    await rotations(system, cluster_id, 1)
    world.new_key(cluster_id, "k2")
    answer = await world.set_key(cluster_id, "k2")
    assert answer.status_code == 200, answer.text
    k2 = answer.json()["key_id"]
    await rotations(system, cluster_id, 2)
    # As if the chain were not re-wrapped by k2 yet: its k2 key object removed.
    rewrapped = [k for k in world.objects(cluster_id) if k.endswith(f"/keys/{k2}.json")]
    assert len(rewrapped) == 1
    world.raw().delete(rewrapped)
    before = world.objects(cluster_id)

    runtime = open_runtime(system.settings)
    try:
        encryption = ClusterEncryption(runtime.settings, runtime.store)
        retention = Retention(
            runtime.store, runtime.db, runtime.settings.region_store_url, encryption=encryption
        )
        stale = KeyRotations(retention, encryption, "retention-stale", asyncio.Lock(), utc_now)
        job_id = key_rotation_id(cluster_id, uuid4())
        handle = stale.runner.take(job_id, cluster_id)
        assert handle is not None
        now = utc_now()
        job = KeyRotation(
            rotation_id=job_id,
            cluster_id=cluster_id,
            key_id=k2,
            worker="retention-stale",
            lease_until=stale.runner.until(),
            command_id=uuid4(),
            at=now,
            by="test",
        )
        runtime.store.save_all(job)
        # The reaper of another instance: the job recorded FAILED, then its lease released.
        reaped = runtime.store.get_or_none(job_id, KeyRotation)
        assert reaped is not None
        reaped.fail("LEASE_EXPIRED", "reaped by another instance", now, "retention-other")
        runtime.store.save_all(reaped)
        stale.leases.release(job_id)

        async with asyncio.timeout(60):
            await stale.runner.start(handle, functools.partial(stale.run, job))
        assert handle.lost.is_set()
        assert world.objects(cluster_id) == before  # no key object written
        events = [type(e).__name__ for e in runtime.store.events.get(job_id)]  # type: ignore[attr-defined]
        assert events == ["KeyRotationStarted", "KeyRotationFailed"]
        last = list(runtime.store.events.get(job_id))[-1]  # type: ignore[attr-defined]
        assert last.error_code == "LEASE_EXPIRED"
    finally:
        runtime.close()
