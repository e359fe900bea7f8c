"""The second security probe, end to end: real broker, real PostgreSQL clusters, the real
executor, restore service and API. One tenant (organization ``evil``) attacks another (``acme``):

- ids it chooses never land on another record (item 1);
- restores are bounded per cluster and organization, and a table named twice is refused (3);
- no TABLE restore into a template, nor into ``postgres`` below a Cluster Admin (4);
- an on-demand backup keeps its cluster's retention (5);
- the services refuse the installation's own endpoints and, unless allowed, loopback (6);
- TLS to a cluster with ``verify-full`` and a CA from the CA directory, backup and restore (8).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Role
from managed_backups.services.executor.executor import BackupExecutor
from managed_backups.services.restore.service import run as run_restore
from managed_backups.services.runtime import open_runtime
from managed_backups.shared import jobs
from managed_backups.shared.dataplane.engine import BackupError
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.restore import Restore, load_restore
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.settings import Settings
from tests.factories import new_cluster
from tests.harness import System
from tests.infra.postgres import LocalPostgres, _service_user
from tests.integration.test_executor import connection_ref, executor_system, take, wait_terminal
from tests.integration.test_restore import free_port
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
            conn.execute("CREATE DATABASE my_template IS_TEMPLATE true")
        with psycopg.connect(pg.url_for("app"), autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
        yield pg


@dataclass
class World:
    system: System
    pg: LocalPostgres
    acme: str
    evil: str
    acme_full: UUID
    acme_operator: str
    acme_admin: str
    evil_admin: str


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, kafka: str, source: LocalPostgres
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("hostile")
    system = await executor_system(tmp, kafka, restore_lease_seconds=6.0)
    await system.start_service("restore", run_restore)
    acme, evil = f"acme-{uuid4().hex[:6]}", f"evil-{uuid4().hex[:6]}"
    for cluster_id, organization in ((acme, "acme"), (evil, "evil")):
        registered = await system.register(
            cluster_id,
            organization=organization,
            regions=["us-east-1"],
            connection_ref=connection_ref(source),
            secret=source.password,
        )
        assert registered.code == 200, registered
    acme_full = await take(system, acme)
    assert (await wait_terminal(system, acme_full)).status == "COMPLETE"
    evil_full = await take(system, evil)
    assert (await wait_terminal(system, evil_full)).status == "COMPLETE"
    yield World(
        system,
        source,
        acme,
        evil,
        acme_full,
        await system.issue_key("acme-operator", Role.CLUSTER_OPERATOR, f"cluster:{acme}"),
        await system.issue_key("acme-admin", Role.CLUSTER_ADMIN, f"cluster:{acme}"),
        await system.issue_key("evil-admin", Role.ORG_ADMIN, "org:evil"),
    )
    await system.close()


async def post_restore(world: World, cluster_id: str, body: dict[str, Any], key: str) -> Any:
    assert world.system.http is not None
    return await world.system.http.post(
        f"/api/v1/clusters/{cluster_id}/restores",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )


async def wait_restore(world: World, cluster_id: str, restore_id: str) -> Restore:
    store = open_event_store(world.system.settings.store_url)
    try:
        async with asyncio.timeout(120):
            while True:
                job = await asyncio.to_thread(load_restore, store, cluster_id, UUID(restore_id))
                if job is not None and job.is_terminal:
                    await world.system.wait_projection(store.max_position())
                    return job
                await asyncio.sleep(0.1)
    finally:
        store.close()


def drop_database(pg: LocalPostgres, name: str) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- 1. ids ------------------------------------------------------------------------------------


async def test_ids_a_tenant_chooses_never_land_on_another_tenants_records(world: World) -> None:
    system = world.system
    assert system.http is not None
    listed = (await system.http.get(f"/api/v1/clusters/{world.acme}/backups")).json()["backups"]
    acme_row = next(b for b in listed if b["id"] == str(world.acme_full))
    acme_job = await post_restore(
        world,
        world.acme,
        {
            "type": "DATABASE",
            "objects": [{"database": "app"}],
            "restore_opts": {"new_db_name": "acme_copy"},
        },
        world.acme_operator,
    )
    assert acme_job.status_code == 200, acme_job.text
    acme_restore = acme_job.json()["id"]
    assert (await wait_restore(world, world.acme, acme_restore)).phase == "SUCCEEDED"

    # The attacks: a restore at the record id of a cluster not registered yet, another under
    # acme's restore id, and a backup under acme's backup id, all into the attacker's cluster.
    victim = f"victim-{uuid4().hex[:6]}"
    for n, restore_id in enumerate((cluster_aggregate_id(victim), UUID(acme_restore))):
        result = await system.command(
            topics.RESTORE_COMMANDS,
            {
                "type": "StartRestore",
                "restore_id": str(restore_id),
                "destination_cluster_id": world.evil,
                "restore_type": "DATABASE",
                "objects": [{"database": "app"}],
                "restore_opts": {"new_db_name": f"evil_copy_{n}"},
            },
            key=world.evil_admin,
        )
        assert result.code == 200, result
        assert (await wait_restore(world, world.evil, str(restore_id))).phase == "SUCCEEDED"
    result = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": world.evil,
            "backup_id": str(world.acme_full),
            "backup_type": "FULL",
        },
        key=world.evil_admin,
    )
    assert result.code == 200, result
    store = open_event_store(system.settings.store_url)
    try:
        async with asyncio.timeout(120):
            while (
                evil_copy := await asyncio.to_thread(
                    load_backup, store, world.evil, world.acme_full
                )
            ) is None or not evil_copy.is_terminal:
                await asyncio.sleep(0.1)
        await system.wait_projection(store.max_position())
    finally:
        store.close()
    assert evil_copy.status == "COMPLETE", evil_copy.error

    # The victim registers, and gets its secret; acme's job and backup are as they were.
    registered = await system.register(
        victim, organization="victims", connection_ref=connection_ref(world.pg), secret="pw"
    )
    assert registered.code == 200, registered
    view = (await system.http.get(f"/api/v1/clusters/{world.acme}/restores/{acme_restore}")).json()
    assert view["destination_cluster_id"] == world.acme and view["target_database"] == "acme_copy"
    evil_view = await system.http.get(f"/api/v1/clusters/{world.evil}/restores/{acme_restore}")
    assert evil_view.json()["target_database"] == "evil_copy_1"
    listed = (await system.http.get(f"/api/v1/clusters/{world.acme}/backups")).json()["backups"]
    assert next(b for b in listed if b["id"] == str(world.acme_full)) == acme_row
    for name in ("acme_copy", "evil_copy_0", "evil_copy_1"):
        drop_database(world.pg, name)


# -- 3. bounds and duplicates -------------------------------------------------------------------


async def test_restore_jobs_are_bounded_per_cluster_and_organization(world: World) -> None:
    settings = world.system.settings
    leases = jobs.JobLeases(world.system.services["restore"].runtime.db, "restore")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    body = {
        "type": "DATABASE",
        "objects": [{"database": "app"}],
        "restore_opts": {"new_db_name": "bounded"},
    }
    queued = [uuid4() for _ in range(settings.max_restores_per_cluster)]
    for job in queued:  # jobs queued on acme's cluster (their leases are what is counted)
        leases.take(job, world.acme, "elsewhere", until, {jobs.ORGANIZATION: "acme"})
    try:
        refused = await post_restore(world, world.acme, body, world.acme_operator)
        assert refused.status_code == 429, refused.text
        assert "MANAGED_BACKUPS_MAX_RESTORES_PER_CLUSTER" in refused.json()["message"]
        others = [uuid4() for _ in range(settings.max_restores_per_organization)]
        for job in queued:
            leases.release(job)
        for job in others:  # jobs of acme's other clusters
            leases.take(job, "acme-other", "elsewhere", until, {jobs.ORGANIZATION: "acme"})
        queued = others
        refused = await post_restore(world, world.acme, body, world.acme_operator)
        assert refused.status_code == 429, refused.text
        assert "organization acme" in refused.json()["message"]
        # Another organization is not held back by acme's queue.
        evil = await post_restore(
            world,
            world.evil,
            {**body, "restore_opts": {"new_db_name": "evil_bounded"}},
            world.evil_admin,
        )
        assert evil.status_code == 200, evil.text
        assert (await wait_restore(world, world.evil, evil.json()["id"])).phase == "SUCCEEDED"
    finally:
        for job in queued:
            leases.release(job)
        drop_database(world.pg, "evil_bounded")


async def test_a_table_named_a_thousand_times_is_refused_before_anything_runs(world: World) -> None:
    objects = [{"database": "app", "table": "items"}] * 1000
    answer = await post_restore(
        world,
        world.acme,
        {"type": "TABLE", "objects": objects, "restore_opts": {"new_db_name": "twice"}},
        world.acme_operator,
    )
    assert answer.status_code == 400, answer.text
    assert "name each table once" in answer.json()["message"]


# -- 4. templates and postgres ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["template1", "my_template"])
async def test_no_table_is_restored_into_a_template(world: World, target: str) -> None:
    answer = await post_restore(
        world,
        world.acme,
        {
            "type": "TABLE",
            "objects": [{"database": "app", "table": "items"}],
            "restore_opts": {"into_db": target},
        },
        world.acme_admin,
    )
    assert answer.status_code == 400, answer.text
    assert "template" in answer.json()["message"]
    with psycopg.connect(world.pg.url_for(target), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.items')").fetchone() == (None,)


async def test_only_a_cluster_admin_restores_tables_into_postgres(world: World) -> None:
    body = {
        "type": "TABLE",
        "objects": [{"database": "app", "table": "items"}],
        "restore_opts": {"into_db": "postgres"},
    }
    operator = await post_restore(world, world.acme, body, world.acme_operator)
    assert operator.status_code == 403, operator.text
    assert "Cluster Admin" in operator.json()["message"]
    admin = await post_restore(world, world.acme, body, world.acme_admin)
    assert admin.status_code == 200, admin.text
    try:
        assert (await wait_restore(world, world.acme, admin.json()["id"])).phase == "SUCCEEDED"
        assert table_digest(world.pg.url, "public", "items") == table_digest(
            world.pg.url_for("app"), "public", "items"
        )
    finally:
        with psycopg.connect(world.pg.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS public.items")


# -- outsiders first ------------------------------------------------------------------------------


async def test_an_outsider_is_told_not_registered_before_any_of_these_refusals(
    world: World,
) -> None:
    """The bounds, the duplicates, the templates and ``postgres`` refuse only callers who may
    restore into the cluster. Anyone else (another organization's administrator) is told the
    cluster is not registered, word for word what a cluster that does not exist gets: the one
    access rule (``check_restore_request``) decides before every rule of the restore."""
    leases = jobs.JobLeases(world.system.services["restore"].runtime.db, "restore")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    queued = [uuid4() for _ in range(world.system.settings.max_restores_per_cluster)]
    table = {"database": "app", "table": "items"}
    bodies = {
        429: {
            "type": "DATABASE",
            "objects": [{"database": "app"}],
            "restore_opts": {"new_db_name": "outsider"},
        },
        400: {"type": "TABLE", "objects": [table, table], "restore_opts": {"new_db_name": "o"}},
        403: {"type": "TABLE", "objects": [table], "restore_opts": {"into_db": "postgres"}},
    }
    template = {"type": "TABLE", "objects": [table], "restore_opts": {"into_db": "template1"}}
    unknown = f"nobody-{uuid4().hex[:6]}"
    for job in queued:  # acme's cluster is at its bound
        leases.take(job, world.acme, "elsewhere", until, {jobs.ORGANIZATION: "acme"})
    try:
        for code, body in [*bodies.items(), (400, template)]:
            insider = await post_restore(world, world.acme, body, world.acme_operator)
            assert insider.status_code == code, insider.text
            outsider = await post_restore(world, world.acme, body, world.evil_admin)
            nowhere = await post_restore(world, unknown, body, world.evil_admin)
            assert outsider.status_code == nowhere.status_code == 404, outsider.text
            assert outsider.json()["message"].replace(world.acme, "X") == nowhere.json()[
                "message"
            ].replace(unknown, "X")
            assert outsider.json()["message"] == f"cluster {world.acme} is not registered"
    finally:
        for job in queued:
            leases.release(job)


# -- 5. on-demand backups and the tier ----------------------------------------------------------


async def test_an_on_demand_backup_of_a_basic_cluster_is_kept_30_days(world: World) -> None:
    system = world.system
    basic = f"basic-{uuid4().hex[:6]}"
    registered = await system.register(
        basic,
        tier="BASIC",
        regions=["us-east-1"],
        connection_ref=connection_ref(world.pg),
        secret=world.pg.password,
    )
    assert registered.code == 200
    refused = await system.command(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": basic,
            "backup_id": str(uuid4()),
            "backup_type": "FULL",
            "retention_days": 365,
        },
    )
    assert refused.code == 400 and refused.reason is not None
    assert "BASIC" in refused.reason and "30 days" in refused.reason
    taken = await wait_terminal(system, await take(system, basic))
    assert taken.status == "COMPLETE" and taken.retention_days == 30


# -- 6. where the services connect --------------------------------------------------------------


def test_the_executor_refuses_loopback_unless_allowed_and_its_own_event_store_always(
    tmp_path: Path, postgres_store_url: str
) -> None:
    """The setting off (compose, production): a cluster on 127.0.0.1 is refused with the reason.
    The setting on (``up``, these tests): still never the installation's own event store."""
    parsed = psycopg.conninfo.conninfo_to_dict(postgres_store_url)
    store_port = int(str(parsed["port"]))
    for allow_local, ref, refused in (
        (False, "postgresql://backup@127.0.0.1:5999/postgres", "loopback"),
        (False, "postgresql://backup@localhost:5999/postgres", "loopback"),
        (True, f"postgresql://backup@127.0.0.1:{store_port}/postgres", "event store"),
        (True, f"postgresql://backup@localhost:{store_port}/postgres", "event store"),
    ):
        settings = Settings(
            data_dir=tmp_path / "data",
            event_store_url=postgres_store_url,
            allow_local_clusters=allow_local,
        )
        runtime = open_runtime(settings)
        try:
            executor = BackupExecutor(runtime, "test")
            cluster = new_cluster("tenant", connection_ref=ref)
            with pytest.raises(BackupError) as error:
                executor.adapter_for(cluster)
            assert refused in error.value.message, error.value.message
        finally:
            runtime.close()


# -- 8. TLS with a CA from the CA directory -----------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    other_ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_pki() -> Pki:
    def ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("managed-backups test CA")
    _, other = ca("someone else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Pki(
        ca_cert.public_bytes(pem),
        other.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[LocalPostgres, Pki]]:
    """A server that accepts TLS connections only, with a certificate for localhost signed by
    a CA the test made."""
    pki = make_pki()
    files = Path(tempfile.mkdtemp(prefix="mb-tls-"))
    (files / "server.crt").write_bytes(pki.cert_pem)
    (files / "server.key").write_bytes(pki.key_pem)
    (files / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        user = _service_user()
        for path in (files, files / "server.crt", files / "server.key"):
            os.chown(path, user.pw_uid, user.pw_gid)
    files.chmod(0o755)
    settings = {
        "ssl": "on",
        "ssl_cert_file": str(files / "server.crt"),
        "ssl_key_file": str(files / "server.key"),
    }
    with LocalPostgres(settings=settings) as pg:
        hba = pg.data_dir / "pg_hba.conf"
        hba.write_text(
            "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n"
        )
        with psycopg.connect(pg.url + "?sslmode=require", autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE DATABASE shop")
        with psycopg.connect(pg.url_for("shop") + "?sslmode=require", autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric)")
            conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 2000) g")
        yield pg, pki
    shutil.rmtree(files, ignore_errors=True)


async def test_verify_full_with_a_ca_from_the_ca_directory_backs_up_and_restores(
    world: World, tls_pg: tuple[LocalPostgres, Pki]
) -> None:
    pg, pki = tls_pg
    system = world.system
    cas = system.settings.cluster_ca_path
    cas.mkdir(parents=True, exist_ok=True)
    (cas / "shop-ca.pem").write_bytes(pki.ca_pem)
    (cas / "other-ca.pem").write_bytes(pki.other_ca_pem)
    with pytest.raises(psycopg.OperationalError):  # the server takes TLS connections only
        psycopg.connect(pg.url + "?sslmode=disable").close()
    base = f"postgresql://postgres@localhost:{pg.port}/postgres?sslmode=verify-full"

    refused = await system.register(
        f"tls-bad-{uuid4().hex[:6]}",
        regions=["us-east-1"],
        connection_ref=f"{base}&sslrootcert=/var/lib/managed-backups/secrets/secret-store.key",
    )
    assert refused.code == 400 and refused.reason is not None
    assert "CA directory" in refused.reason

    cluster_id = f"tls-{uuid4().hex[:6]}"
    registered = await system.register(
        cluster_id,
        regions=["us-east-1"],
        connection_ref=f"{base}&sslrootcert=shop-ca.pem",
        secret=pg.password,
    )
    assert registered.code == 200, registered
    full = await wait_terminal(system, await take(system, cluster_id))
    assert full.status == "COMPLETE", full.error
    answer = await post_restore(
        world,
        cluster_id,
        {
            "type": "DATABASE",
            "objects": [{"database": "shop"}],
            "restore_opts": {"new_db_name": "shop_copy"},
        },
        system.admin_key,
    )
    assert answer.status_code == 200, answer.text
    job = await wait_restore(world, cluster_id, answer.json()["id"])
    assert job.phase == "SUCCEEDED", job.error
    tls = "?sslmode=require"
    assert table_digest(pg.url_for("shop_copy") + tls, "public", "orders") == table_digest(
        pg.url_for("shop") + tls, "public", "orders"
    )

    # The server's certificate is checked: another CA's file does not verify it.
    impostor = f"tls-other-{uuid4().hex[:6]}"
    assert (
        await system.register(
            impostor,
            regions=["us-east-1"],
            connection_ref=f"{base}&sslrootcert=other-ca.pem",
            secret=pg.password,
        )
    ).code == 200
    failed = await wait_terminal(system, await take(system, impostor))
    assert failed.status == "FAILED" and failed.error is not None
    assert "certificate verify failed" in failed.error["message"], failed.error


# -- 2. slow clients --------------------------------------------------------------------------


HALF_OPEN = 600
OPEN_FILES = 400  # the API process's limit: half-open sockets alone would exhaust it


async def health(port: int) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=3) as client:
        return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent until it closed the connection (within ``timeout``)."""
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                received += chunk
    except (TimeoutError, ConnectionError):
        pass
    return received


async def test_slow_and_half_open_clients_cannot_exhaust_the_api(
    tmp_path: Path, kafka: str
) -> None:
    """A real API process (its open-files limit set low) against real half-open sockets,
    slow bodies and malformed requests: /healthz keeps answering, half-sent requests are
    closed after the header timeout, requests past the limit get a clear 503, and the log
    holds a few lines, not one per attacker."""
    import resource
    import subprocess
    import sys

    port = free_port()
    log = tmp_path / "logs" / "api.log"
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(tmp_path / "data"),
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MANAGED_BACKUPS_API_PORT": str(port),
        "MANAGED_BACKUPS_API_MAX_CONNECTIONS": "100",
        "MANAGED_BACKUPS_API_MAX_REQUESTS": "4",
        "MANAGED_BACKUPS_API_HEADER_TIMEOUT_SECONDS": "3",
        "MANAGED_BACKUPS_API_BODY_TIMEOUT_SECONDS": "3",
        "MANAGED_BACKUPS_LOG_FILE": str(log),
    }

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

    api = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "managed_backups.services.cli",
        "service",
        "api",
        env=env,
        stdout=(tmp_path / "api.out").open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=low_limit,
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(90):
            while True:
                assert api.returncode is None, (tmp_path / "api.out").read_text()
                try:
                    if await health(port) == 200:
                        break
                except Exception:
                    await asyncio.sleep(0.2)
        key = (tmp_path / "data" / "admin-api-key").read_text().strip()

        # Half-open requests: headers never finished.
        streams = []
        for _ in range(HALF_OPEN):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
            writers.append(writer)
            streams.append(reader)
        for _ in range(5):
            assert await health(port) == 200
        # Every half-open request is closed: by the header timeout, or to make room.
        answers = await asyncio.gather(*(read_answer(r, 10) for r in streams[-50:]))
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
        assert any(a.startswith(b"HTTP/1.1 408") for a in answers)

        # Slow bodies: each request past the limit is answered 503 at once, and the slow ones
        # 408 once their body is late; /healthz answers throughout.
        slow = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"PUT /api/v1/clusters/c1/connection-secret HTTP/1.1\r\nHost: api\r\n"
                + f"Authorization: Bearer {key}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            writers.append(writer)
            slow.append(reader)
            await asyncio.sleep(0.2)
        assert await health(port) == 200
        answers = await asyncio.gather(*(read_answer(r, 10) for r in slow))
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        late = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(busy) == 2 and len(late) == 4, answers
        assert b"MANAGED_BACKUPS_API_MAX_REQUESTS" in busy[0]
        assert b"MANAGED_BACKUPS_API_BODY_TIMEOUT_SECONDS" in late[0]

        # Malformed requests: uvicorn warns about each; the log keeps a few.
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await read_answer(reader, 5)
            writer.close()
        assert await health(port) == 200
    finally:
        for writer in writers:
            writer.close()
        api.terminate()
        await asyncio.wait_for(api.wait(), 30)
    text = log.read_text()
    assert 0 < text.count("Invalid HTTP request received") <= 10, text[-2000:]
    assert log.stat().st_size < 64 * 1024
