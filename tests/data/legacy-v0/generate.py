"""Generate data written by the code at commit da4eca9 (before the namespace move)."""
from __future__ import annotations
import json, shutil, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import psycopg

from contracts.enums import BackupType, Role, Tier
from shared.clock import WallClock
from shared.domain.backup import Backup
from shared.domain.backup_settings import SettingsChange
from shared.domain.cluster import Cluster
from shared.domain.outcome import CommandOutcome
from shared.domain.principal import ApiKey
from shared.eventstore import open_event_store
from shared.security import Grant, new_api_key
from shared.infra.postgres import LocalPostgres
from services.executor.dataplane import PostgresAdapter, BackupRequest, open_store

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
db = out / "events-v0.sqlite"
if db.exists(): db.unlink()
store = open_event_store(f"sqlite:///{db}")
t0 = datetime(2026, 1, 5, tzinfo=UTC)
key = new_api_key(store, "ops", [Grant(Role.ORG_ADMIN, "org:acme")], WallClock(), by="installation")
(out / "events-v0.api-key").write_text(key + "\n")
c = Cluster(cluster_id="legacy-one", name="Legacy", organization="acme", tier="STANDARD",
            regions=["us-east-1", "eu-west-1"], engine="postgres", database_version="15",
            connection_ref="postgresql://backup@127.0.0.1:5432/postgres", backup_region="us-east-1",
            enabled=True, frequency_minutes=60, retention_days=30, command_id=uuid4(), at=t0, by="ops")
store.save_all(c)
c.update_backup_settings(c.decide_settings(SettingsChange(frequency_minutes=5, retention_days=7)), uuid4(), t0 + timedelta(minutes=1), "ops")
c.change_tier(Tier.ADVANCED, uuid4(), t0 + timedelta(minutes=2), "ops")
store.save_all(c)
full_id = None
for k in range(120):   # >100 events: the Cluster gets a snapshot (interval 100)
    slot = t0 + timedelta(minutes=5 * k + 5)
    bid = uuid4()
    btype = BackupType.FULL if k == 0 else BackupType.INCREMENTAL
    if k == 0: full_id = bid
    c.schedule_backup(bid, btype, slot, bid if k == 0 else full_id, slot, "scheduler")
    store.save_all(c)
    if k < 3:
        b = Backup(backup_id=bid, cluster_id="legacy-one", backup_type=btype.value, chain_id=full_id,
                   reason="SCHEDULED", region="us-east-1", retention_days=7, scheduled_for=slot,
                   executor="backup-executor-x", lease_until=slot + timedelta(minutes=2),
                   command_id=uuid4(), at=slot, by="services")
        if k == 2:
            b.fail("CONNECTION_FAILED", "could not connect", "connect", slot + timedelta(seconds=3), "backup-executor-x")
        else:
            b.complete(as_of_time=slot, size_bytes=1234, database_count=1,
                       catalog=[{"name": "app", "size_bytes": 999, "schemas": [{"name": "public", "tables": [{"name": "t", "row_count": 3, "size_bytes": 8192}]}]}],
                       manifest_key=f"clusters/legacy-one/chains/{full_id}/manifests/{bid}.json",
                       expires_at=slot + timedelta(days=7), at=slot + timedelta(seconds=2), by="backup-executor-x")
            if k == 0:
                b.record_verification(True, 4, [], [], uuid4(), slot + timedelta(seconds=5), "ops")
        store.save_all(b)
store.save_all(CommandOutcome(command_id=UUID("00000000-0000-4000-8000-000000000001"), command_type="UpdateBackupSettings",
                              cluster_id="legacy-one", status="REJECTED", code=409, reason="cluster already has a retention policy set, open a support ticket to change it",
                              at=t0 + timedelta(hours=1), by="ops"))
d = Cluster(cluster_id="legacy-two", name="Gone", organization="acme", tier="BASIC", regions=["us-east-1"],
            engine="postgres", database_version="15", connection_ref="postgresql://backup@127.0.0.1:5432/postgres",
            backup_region="us-east-1", enabled=True, frequency_minutes=1440, retention_days=30, command_id=None, at=t0, by="ops")
d.delete(uuid4(), t0 + timedelta(days=1), "ops")
store.save_all(d)
k2 = store.get_or_none(ApiKey.create_id(key.split("_")[1]), ApiKey)
other = new_api_key(store, "old", [Grant(Role.CLUSTER_MONITOR, "cluster:legacy-one")], WallClock(), by="installation")
ok = store.get_or_none(ApiKey.create_id(other.split("_")[1]), ApiKey); ok.revoke(t0, "installation"); store.save_all(ok)
print("events", store.max_position(), "full", full_id)
store.close()

# A small backup chain written by today's data plane (full + incremental), local directory store.
bs = out / "backup-store-v0"
if bs.exists(): shutil.rmtree(bs)
with LocalPostgres(Path("/tmp/gen/pg")) as pg:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(pg.url_for("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g, g % 7 FROM generate_series(1, 500) g")
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('a'), ('b\tc'), ('d\\e')")
        conn.execute("CREATE SEQUENCE counter START 10")
        conn.execute("SELECT nextval('counter')")
    pw = psycopg.conninfo.conninfo_to_dict(pg.url).get("password")
    dsn = pg.dsn_for("postgres")
    adapter = PostgresAdapter(dsn, password=pw)
    store_ = open_store(bs.as_uri())
    full = adapter.full_backup(BackupRequest(store=store_, cluster_id="legacy-one", backup_id="11111111-1111-4111-8111-111111111111"))
    with psycopg.connect(pg.url_for("app"), autocommit=True) as conn:
        conn.execute("UPDATE items SET qty = qty + 100 WHERE id % 50 = 0")
        conn.execute("DELETE FROM items WHERE id BETWEEN 200 AND 210")
        conn.execute("INSERT INTO items SELECT g, 'new ' || g, 1 FROM generate_series(501, 520) g")
        conn.execute("INSERT INTO notes VALUES ('e')")
        conn.execute("SELECT nextval('counter')")
    inc = adapter.incremental_backup(BackupRequest(store=store_, cluster_id="legacy-one", backup_id="22222222-2222-4222-8222-222222222222"), full)
    expect = {}
    with psycopg.connect(pg.url_for("app"), autocommit=True) as conn:
        for q, name in (("SELECT * FROM items ORDER BY id", "items"), ("SELECT * FROM notes ORDER BY body", "notes")):
            expect[name] = [list(map(lambda v: v if v is None or isinstance(v, (int, str)) else str(v), r)) for r in conn.execute(q).fetchall()]
        expect["counter_next"] = conn.execute("SELECT nextval('counter')").fetchone()[0]
    (out / "backup-store-v0.expected.json").write_text(json.dumps(expect))
    print("backup", full.backup_id, inc.backup_id, [ (t.name, t.mode) for t in inc.databases[[d.name for d in inc.databases].index('app')].tables])
