"""One tenant never reaches another tenant's database or password.

A cluster's password is bound to the cluster (set through the API by whoever may manage it) and
passed explicitly to that cluster's connections only: a second tenant's cluster pointed at the
first tenant's database does not authenticate, whatever the executor's environment holds, and no
password is sent in clear to a server that asks for one.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from managed_backups.contracts.enums import Role
from tests.harness import System
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import (
    connection_ref,
    executor_system,
    take,
    wait_terminal,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def victim_db() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE payroll (id int PRIMARY KEY, salary int)")
            conn.execute("INSERT INTO payroll VALUES (1, 100)")
        yield pg


@pytest.fixture
async def system(tmp_path: Path, kafka: str) -> AsyncIterator[System]:
    system = await executor_system(tmp_path, kafka)
    yield system
    await system.close()


class PasswordTrap:
    """A server that speaks just enough of PostgreSQL's protocol to ask for a cleartext
    password, and keeps every byte a client sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                header = await reader.readexactly(8)
                self.received += header
                length, code = struct.unpack("!ii", header)
                body = await reader.readexactly(length - 8)
                self.received += body
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            async with asyncio.timeout(5):
                while chunk := await reader.read(4096):
                    self.received += chunk
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_second_tenant_cannot_reach_the_first_tenants_database(
    system: System, victim_db: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert system.http is not None
    # The first tenant's cluster works with its own secret.
    victim = f"payroll-{uuid4().hex[:6]}"
    registered = await system.register(
        victim, connection_ref=connection_ref(victim_db), secret=victim_db.password
    )
    assert registered.code == 200
    ok = await wait_terminal(system, await take(system, victim))
    assert ok.status == "COMPLETE", ok.error

    # What version 0.1 looked passwords up in: a shared password file in the data directory,
    # and libpq's environment. Neither may help another cluster.
    legacy = system.settings.pgpass_file
    legacy.write_text(f"127.0.0.1:{victim_db.port}:*:postgres:{victim_db.password}\n")
    legacy.chmod(0o600)
    monkeypatch.setenv("PGPASSWORD", victim_db.password)

    mallory = await system.issue_key("mallory", Role.ORG_ADMIN, "org:evil")
    intruder = f"intruder-{uuid4().hex[:6]}"
    assert (
        await system.register(
            intruder,
            organization="evil",
            connection_ref=connection_ref(victim_db),
            key=mallory,
        )
    ).code == 200

    # No secret of its own: a clear migration error, no connection made with anyone's password.
    unset = await wait_terminal(system, await take(system, intruder, key=mallory))
    assert unset.status == "FAILED" and unset.error is not None
    assert unset.error["code"] == "AUTHENTICATION_FAILED"
    assert "no connection secret" in unset.error["message"]

    # Its own (wrong) secret: the victim's server refuses it.
    legacy.unlink()
    assert (await system.set_secret(intruder, "a-guess", credential=mallory)).status_code == 200
    guessed = await wait_terminal(system, await take(system, intruder, key=mallory))
    assert guessed.status == "FAILED" and guessed.error is not None
    assert guessed.error["code"] == "AUTHENTICATION_FAILED", guessed.error

    # Mallory can neither set the victim's secret nor learn that the cluster exists.
    refused = await system.set_secret(victim, "overwrite", credential=mallory)
    assert refused.status_code == 404
    unknown = await system.set_secret(f"nope-{uuid4().hex[:6]}", "x", credential=mallory)
    assert unknown.status_code == 404
    assert refused.json()["message"].endswith("is not registered")
    assert unknown.json()["message"].endswith("is not registered")

    # The victim's audit trail says who set its secret; no event anywhere holds a password.
    events = (await system.http.get(f"/api/v1/clusters/{victim}/events")).json()["events"]
    changes = [e for e in events if e["type"].startswith("ConnectionSecret")]
    assert [(e["type"], e["by"]) for e in changes] == [("ConnectionSecretSet", "admin")]
    assert system.api_runtime is not None
    store = system.api_runtime.store
    stored = json.dumps(
        [str(store.domain_event(n).__dict__) for n in store.notifications(0, 100_000)]
    )
    for secret in (victim_db.password, "a-guess", "overwrite"):
        assert secret not in stored


async def test_no_password_is_sent_in_clear_and_steering_parameters_are_refused(
    system: System, victim_db: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    trap = PasswordTrap()
    port = await trap.start()
    monkeypatch.setenv("PGPASSWORD", victim_db.password)
    try:
        cluster = f"trap-{uuid4().hex[:6]}"
        assert (
            await system.register(
                cluster,
                connection_ref=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                secret="its-own-secret",
            )
        ).code == 200
        failed = await wait_terminal(system, await take(system, cluster))
        assert failed.status == "FAILED", failed
        assert trap.connections >= 1
        assert victim_db.password.encode() not in trap.received
        assert b"its-own-secret" not in trap.received
    finally:
        await trap.stop()

    # The parameters that steered libpq are refused at registration, percent-encoded or not.
    for ref, parameter in (
        (
            f"postgresql://postgres@victim.example:{victim_db.port}/postgres?hostaddr=127.0.0.1",
            "hostaddr",
        ),
        (f"postgresql://postgres@127.0.0.1:{victim_db.port}/postgres?%70assword=x", "password"),
        (f"postgresql://postgres@127.0.0.1:{victim_db.port}/postgres?passfile=/tmp/p", "passfile"),
    ):
        result = await system.register(f"steer-{uuid4().hex[:6]}", connection_ref=ref)
        assert result.code == 400 and parameter in (result.reason or ""), result


async def test_a_backup_id_chosen_by_one_tenant_names_nothing_of_another(system: System) -> None:
    """Backup streams derive from the cluster: a backup id equal to another aggregate's id, or to
    another tenant's backup id, collides with nothing and reveals nothing."""
    from managed_backups.contracts import topics
    from managed_backups.shared.domain.ids import cluster_aggregate_id

    mallory = await system.issue_key("mallory", Role.ORG_ADMIN, "org:evil")
    own = f"evil-{uuid4().hex[:6]}"
    ref = "postgresql://postgres@127.0.0.1:1/postgres"
    assert (
        await system.register(own, organization="evil", connection_ref=ref, key=mallory)
    ).code == 200
    victim = f"victim-{uuid4().hex[:6]}"
    assert (await system.register(victim, connection_ref=ref)).code == 200
    victims_backup = await take(system, victim)
    future_cluster = f"future-{uuid4().hex[:6]}"
    for backup_id in (cluster_aggregate_id(future_cluster), victims_backup):
        result = await system.command(
            topics.BACKUP_COMMANDS,
            {
                "type": "TakeBackup",
                "cluster_id": own,
                "backup_id": str(backup_id),
                "backup_type": "FULL",
            },
            mallory,
        )
        assert result.code in (200, 409), result  # 409: its previous backup still runs
        if result.code == 409:
            assert "runs one backup at a time" in (result.reason or "")
    century = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": own,
            "backup_id": str(uuid4()),
            "backup_type": "FULL",
            "retention_days": 36_500,
        },
        mallory,
    )
    assert century.code == 400 and "retention_days 36500 is not allowed" in (century.reason or "")
    # The cluster id whose stream id was used as a backup id can still be registered.
    assert (await system.register(future_cluster, connection_ref=ref)).code == 200

    # Mallory's commands on the victim's cluster are answered as for a cluster that does not
    # exist, and leave no trace in the victim's audit trail.
    for body in (
        {"type": "TakeBackup", "backup_id": str(uuid4()), "backup_type": "FULL"},
        {"type": "VerifyBackup", "backup_id": str(victims_backup)},
    ):
        refused = await system.command(
            topics.BACKUP_COMMANDS, {**body, "cluster_id": victim}, mallory
        )
        nowhere = await system.command(
            topics.BACKUP_COMMANDS, {**body, "cluster_id": f"none-{uuid4().hex[:6]}"}, mallory
        )
        assert (refused.code, nowhere.code) == (404, 404)
        assert refused.reason == (nowhere.reason or "").replace(nowhere.cluster_id or "", victim)
    deleted = await system.command(
        topics.CLUSTER_COMMANDS,
        {"type": "DeleteCluster", "cluster_id": victim},
        mallory,
    )
    assert deleted.code == 404
    assert system.http is not None
    await system.wait_projection(deleted.position)
    events = (await system.http.get(f"/api/v1/clusters/{victim}/events")).json()["events"]
    assert not [e for e in events if str(e.get("by")).startswith("evil/")]
    assert (
        await system.http.get(
            f"/api/v1/clusters/{victim}", headers={"Authorization": f"Bearer {mallory}"}
        )
    ).status_code == 404
