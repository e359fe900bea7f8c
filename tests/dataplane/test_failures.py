"""Failures end as a BackupError with a clear code and step; partial objects are never listed
and are cleaned up; corrupt or missing chunks are found by verify and stop a restore."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest

from managed_backups.shared.dataplane.engine import (
    BackupError,
    BackupRequest,
    ErrorCode,
    RestoreError,
)
from managed_backups.shared.dataplane.manifest import (
    ManifestError,
    chain_prefix,
    chunk_key,
    list_manifests,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_rows import (
    iter_table_rows,
    restore_table,
    rows_digest,
)
from managed_backups.shared.dataplane.verify import cleanup_partial, required_chunks, verify_backup

from .conftest import PgServer, source_rows, store_bytes

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app(pg: PgServer, databases: list[str], rows: int = 20_000) -> str:
    db = pg.create_database("fail")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
        conn.execute(
            f"INSERT INTO accounts SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
        )
        conn.execute("CREATE TABLE secret (id int PRIMARY KEY, s text)")
        conn.execute("INSERT INTO secret VALUES (1, 'hush')")
    return db


def test_unreachable_cluster_and_bad_password(pg: PgServer, tmp_path: Path) -> None:
    store = ObjectStore((tmp_path / "store").as_uri())
    dead = PostgresAdapter(
        f"host=127.0.0.1 port={_free_port()} user=postgres dbname=postgres",
        password="s3cr3t-never-shown",
    )
    with pytest.raises(BackupError) as info:
        dead.full_backup(BackupRequest(store, "c", "b"))
    assert info.value.code == ErrorCode.CONNECTION_FAILED
    assert info.value.step == "connect"
    assert "127.0.0.1" in info.value.message
    assert "s3cr3t-never-shown" not in str(info.value)

    wrong = PostgresAdapter(pg.dsn_for(), password="not-the-password")
    with pytest.raises(BackupError) as info:
        wrong.full_backup(BackupRequest(store, "c", "b"))
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
    assert "not-the-password" not in str(info.value)
    assert list(store.list("clusters")) == []

    with pytest.raises(ValueError, match="must not contain a password"):
        PostgresAdapter(pg.dsn_for() + " password=secret")


def test_a_database_the_role_may_not_connect_to_fails_the_backup_clearly(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = _app(pg, databases, rows=10)
    role = f"noconnect_{os.getpid()}"
    with pg.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw'")
        conn.execute(f'REVOKE CONNECT ON DATABASE "{db}" FROM PUBLIC')
    try:
        store = ObjectStore((tmp_path / "store").as_uri())
        adapter = PostgresAdapter(pg.dsn_for(user=role), password="role-pw")
        with pytest.raises(BackupError) as info:
            adapter.full_backup(BackupRequest(store, "c", "b1"))
        assert info.value.code == ErrorCode.PERMISSION_DENIED
        assert info.value.message == f"no CONNECT privilege on database {db}"
        assert list_manifests(store, "c", "b1") == []
    finally:
        with pg.connect() as conn:
            conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO PUBLIC')
            conn.execute(f"DROP ROLE {role}")


def test_permission_errors_name_the_statement(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = _app(pg, databases)
    role = f"backup_{os.getpid()}"
    with pg.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw'")
    try:
        with pg.connect(db) as conn:
            conn.execute(f"GRANT SELECT ON accounts TO {role}")
        store = ObjectStore((tmp_path / "store").as_uri())
        adapter = PostgresAdapter(pg.dsn_for(user=role), password="role-pw")

        with pytest.raises(BackupError) as info:
            adapter.full_backup(BackupRequest(store, "c", "b1"))
        assert info.value.code == ErrorCode.PERMISSION_DENIED
        assert "secret" in info.value.message and info.value.sqlstate == "42501"
        assert f"in database {db}: LOCK TABLE" in info.value.step and '"secret"' in info.value.step

        # row-level security: SELECT granted, but a policy would hide rows -> refused, not
        # silently incomplete (the backup runs with row_security = off, like pg_dump)
        with pg.connect(db) as conn:
            conn.execute(f"GRANT SELECT ON secret TO {role}")
            conn.execute("ALTER TABLE secret ENABLE ROW LEVEL SECURITY")
            conn.execute(f"CREATE POLICY only_even ON secret TO {role} USING (id % 2 = 0)")
        with pytest.raises(BackupError) as info:
            adapter.full_backup(BackupRequest(store, "c", "b2"))
        assert info.value.code == ErrorCode.PERMISSION_DENIED
        assert "row-level security" in info.value.message
        assert "COPY (SELECT" in info.value.step and '"secret"' in info.value.step
        assert list_manifests(store, "c", "b2") == []
        report = cleanup_partial(store, "c", "b2")
        assert report.deleted_chain and list(store.list(chain_prefix("c", "b2"))) == []

        # with the privileges a non-superuser backup works; role passwords are left out
        with pg.connect(db) as conn:
            conn.execute("ALTER TABLE secret DISABLE ROW LEVEL SECURITY")
        manifest = adapter.full_backup(BackupRequest(store, "c", "b3"))
        assert manifest.globals_without_passwords
        assert verify_backup(store, manifest).ok
    finally:
        with pg.connect(db) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with pg.connect() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_duplicate_backup_id_and_cancel(
    pg: PgServer, store: ObjectStore, databases: list[str]
) -> None:
    _app(pg, databases)
    adapter = pg.adapter()
    first = adapter.full_backup(BackupRequest(store, "c", "same"))
    with pytest.raises(BackupError) as info:
        adapter.full_backup(BackupRequest(store, "c", "same"))
    assert info.value.code == ErrorCode.DUPLICATE_BACKUP and info.value.step == "write manifest"
    assert [m.backup_id for m in list_manifests(store, "c", "same")] == ["same"]
    assert verify_backup(store, first).ok

    cancel = threading.Event()
    with pytest.raises(BackupError) as info:
        adapter.full_backup(
            BackupRequest(
                store, "c", "cancelled", cancel=cancel, on_progress=lambda _: cancel.set()
            )
        )
    assert info.value.code == ErrorCode.CANCELLED
    assert list_manifests(store, "c", "cancelled") == []


_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from managed_backups.shared.dataplane.engine import BackupRequest
    from managed_backups.shared.dataplane.manifest import load_manifest
    from managed_backups.shared.dataplane.objectstore import ObjectStore
    from managed_backups.shared.dataplane.postgres import PostgresAdapter

    args = json.loads(sys.argv[1])
    adapter = PostgresAdapter(args["dsn"], password=os.environ["MB_TEST_PASSWORD"], psql_min_bytes=0)

    def progress(fraction):
        print("PROGRESS", fraction, flush=True)
        time.sleep(60)  # the parent SIGKILLs us while other streams are still being written

    request = BackupRequest(ObjectStore(args["store"]), args["cluster"], args["backup_id"], on_progress=progress)
    if args.get("previous"):
        adapter.incremental_backup(request, load_manifest(open(args["previous"], "rb").read()))
    else:
        adapter.full_backup(request)
    print("DONE", flush=True)
    """
)


def _run_and_kill(
    pg: PgServer, store_url: str, backup_id: str, previous: Path | None = None
) -> None:
    args = {"dsn": pg.dsn_for(), "store": store_url, "cluster": "k", "backup_id": backup_id}
    if previous is not None:
        args["previous"] = str(previous)
    env = {**os.environ, "MB_TEST_PASSWORD": pg.password}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PROGRESS"), line
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_executor_killed_mid_backup_leaves_nothing_listed_and_cleanup_removes_it(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    db = _app(pg, databases, rows=100_000)
    store_url = (tmp_path / "store").as_uri()
    store = ObjectStore(store_url)

    # a full killed with SIGKILL: chunks, no manifest -> not listed; clean-up drops the chain
    _run_and_kill(pg, store_url, "dead-full")
    assert store_bytes(store, chain_prefix("k", "dead-full")) > 0
    assert list_manifests(store, "k", "dead-full") == []
    report = cleanup_partial(store, "k", "dead-full")
    assert report.deleted_chain and store_bytes(store, chain_prefix("k", "dead-full")) == 0

    # an incremental killed inside a live chain: only its unreferenced chunks go
    adapter = pg.adapter()
    full = adapter.full_backup(BackupRequest(store, "k", "full"))
    with pg.connect(db) as conn:
        conn.execute("UPDATE accounts SET note = 'changed ' || id WHERE id % 10 = 0")
    previous = tmp_path / "full.json"
    previous.write_bytes(full.to_json())
    before = store_bytes(store, chain_prefix("k", "full"))
    _run_and_kill(pg, store_url, "dead-inc", previous)
    assert store_bytes(store, chain_prefix("k", "full")) > before
    assert [m.backup_id for m in list_manifests(store, "k", "full")] == ["full"]
    report = cleanup_partial(store, "k", "full")
    assert report.kept_manifests == ["full"] and report.deleted_objects > 0
    assert store_bytes(store, chain_prefix("k", "full")) == before
    assert verify_backup(store, full).ok

    # the chain goes on after the clean-up
    inc = adapter.incremental_backup(BackupRequest(store, "k", "inc"), full)
    want = rows_digest([b"".join(source_rows(pg, db, "SELECT * FROM public.accounts ORDER BY id"))])
    assert rows_digest(iter_table_rows(store, [full, inc], db, "public", "accounts")) == want
    # keep= drops a backup the control plane never recorded as complete, never its parent
    assert cleanup_partial(store, "k", "full", keep={"full"}).deleted_manifests == ["inc"]
    assert verify_backup(store, full).ok
    inc2 = adapter.incremental_backup(BackupRequest(store, "k", "inc2"), full)
    with pytest.raises(ManifestError, match="builds on"):
        cleanup_partial(store, "k", "full", keep={inc2.backup_id})
    assert verify_backup(store, inc2).ok


def _corrupt(store: ObjectStore, key: str, s3_endpoint: str | None) -> None:
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    if store.kind == "local":
        path = Path(store.url.removeprefix("file://")) / key
        path.write_bytes(bytes(data))
        return
    # S3: overwrite behind the store's back (our store never overwrites)
    assert s3_endpoint is not None
    bucket, _, rest = store.url.removeprefix("s3://").partition("/")
    prefix = rest.split("?", 1)[0].strip("/")
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(data))


def test_corrupt_and_missing_chunks_found_by_verify_and_stop_a_restore(
    pg: PgServer, store: ObjectStore, databases: list[str], request: pytest.FixtureRequest
) -> None:
    db = _app(pg, databases, rows=100_000)
    adapter = pg.adapter()
    full = adapter.full_backup(BackupRequest(store, "v", "full"))
    with pg.connect(db) as conn:
        conn.execute("UPDATE accounts SET note = 'x' WHERE id % 50 = 0")
    inc = adapter.incremental_backup(BackupRequest(store, "v", "inc"), full)
    assert verify_backup(store, inc).ok

    entry = full.table(db, "public", "accounts")
    assert entry is not None and len(entry.data) >= 2
    corrupt_key = chunk_key("v", "full", entry.data[0].hash)
    missing_key = chunk_key("v", "full", entry.data[1].hash)
    endpoint = request.getfixturevalue("s3_endpoint") if store.kind == "s3" else None
    _corrupt(store, corrupt_key, endpoint)
    store.delete([missing_key])

    # the incremental depends on the full's rows: verifying it finds both
    report = verify_backup(store, inc)
    assert not report.ok
    assert report.corrupt == [corrupt_key] and report.missing == [missing_key]
    assert report.chunks_checked == len(required_chunks([full, inc])) - 2

    target = pg.create_database("target")
    databases.append(target)
    with pg.connect(target) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
    with pytest.raises(RestoreError) as info:
        restore_table(
            store, [full, inc], db, "public", "accounts", pg.dsn_for(target), password=pg.password
        )
    assert info.value.code in (ErrorCode.CHUNK_CORRUPT, ErrorCode.CHUNK_MISSING)
    assert corrupt_key in info.value.message or missing_key in info.value.message
    with pg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
