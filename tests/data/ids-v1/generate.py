"""Generate data written by the code at commit dd09f9e (restore ids used raw as stream ids,
read-model and retention-index rows keyed by bare backup and restore ids, leases keyed by them).

Run from the repository root at that commit: ``python tests/data/ids-v1/generate.py tests/data/ids-v1``.
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from managed_backups.contracts.enums import BackupType, Role
from managed_backups.services.projections.service import rebuild
from managed_backups.services.retention.retention import RetentionIndex
from managed_backups.shared.clock import WallClock
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.outcome import CommandOutcome
from managed_backups.shared.domain.restore import Restore
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.jobs import JobLeases, holding
from managed_backups.shared.security import Grant, new_api_key
from managed_backups.shared.sqldb import SqlDatabase

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
db_path = (out / "events-v1.sqlite").resolve()
if db_path.exists():
    db_path.unlink()
url = f"sqlite:///{db_path}"
store = open_event_store(url)
db = SqlDatabase(url)
t0 = datetime(2026, 3, 2, tzinfo=UTC)
key = new_api_key(store, "ops", [Grant(Role.ORG_ADMIN, "org:acme")], WallClock(), by="installation")
(out / "events-v1.api-key").write_text(key + "\n")

FULL = UUID("aaaaaaaa-0000-4000-8000-000000000001")
RUNNING_BACKUP = UUID("aaaaaaaa-0000-4000-8000-000000000002")
DONE_RESTORE = UUID("bbbbbbbb-0000-4000-8000-000000000001")
STUCK_RESTORE = UUID("bbbbbbbb-0000-4000-8000-000000000002")
COMMAND = UUID("cccccccc-0000-4000-8000-000000000001")

cluster = Cluster(cluster_id="ids-one", name="Ids", organization="acme", tier="STANDARD",
                  regions=["us-east-1"], engine="postgres", database_version="15",
                  connection_ref="postgresql://backup@127.0.0.1:5432/postgres",
                  backup_region="us-east-1", enabled=True, frequency_minutes=60,
                  retention_days=30, command_id=None, at=t0, by="ops")
store.save_all(cluster)
full = Backup(backup_id=FULL, cluster_id="ids-one", backup_type=BackupType.FULL.value,
              chain_id=FULL, reason="MANUAL", region="us-east-1", retention_days=30,
              scheduled_for=None, executor="backup-executor-x", lease_until=t0 + timedelta(minutes=2),
              command_id=None, at=t0, by="ops")
full.complete(as_of_time=t0, size_bytes=100, database_count=1,
              catalog=[{"name": "app", "size_bytes": 99, "schemas": [{"name": "public", "tables": [{"name": "t", "row_count": 1, "size_bytes": 8192}]}]}],
              manifest_key=f"clusters/ids-one/chains/{FULL}/manifests/{FULL}.json",
              expires_at=t0 + timedelta(days=30), at=t0 + timedelta(seconds=1), by="backup-executor-x")
store.save_all(full)
running = Backup(backup_id=RUNNING_BACKUP, cluster_id="ids-one", backup_type=BackupType.INCREMENTAL.value,
                 chain_id=FULL, reason="MANUAL", region="us-east-1", retention_days=30,
                 scheduled_for=None, executor="backup-executor-x", lease_until=t0 + timedelta(minutes=3),
                 command_id=None, at=t0 + timedelta(minutes=1), by="ops")
store.save_all(running)


def restore(restore_id: UUID, at: datetime) -> Restore:
    return Restore(restore_id=restore_id, cluster_id="ids-one", restore_type="DATABASE",
                   source_cluster_id="ids-one", source_cluster_name="Ids",
                   destination_cluster_name="Ids", backup_id=FULL, chain_id=FULL,
                   backup_end_time=t0, objects=[{"database": "app"}],
                   restore_opts={"new_db_name": "app_copy"}, target_database="app_copy",
                   worker="restore-x", lease_until=at + timedelta(minutes=1), command_id=COMMAND,
                   at=at, by="ops")


done = restore(DONE_RESTORE, t0 + timedelta(minutes=2))
done.start_running(100, t0 + timedelta(minutes=2, seconds=1), "restore-x")
done.succeed(100, ["app_copy"], t0 + timedelta(minutes=2, seconds=5), "restore-x")
outcome = CommandOutcome(command_id=COMMAND, command_type="StartRestore", cluster_id="ids-one",
                         status="ACCEPTED", code=200, reason=None, body_sha256="0" * 64,
                         at=t0 + timedelta(minutes=2), by="ops")
store.save_all(done, outcome)
stuck = restore(STUCK_RESTORE, t0 + timedelta(minutes=4))
stuck.start_running(100, t0 + timedelta(minutes=4, seconds=1), "restore-x")
store.save_all(stuck)
# What the first round's hole let a tenant do: a restore recorded at the id a cluster named
# "squatted" would get, so that cluster can never be registered.
squat = restore(cluster_aggregate_id("squatted"), t0 + timedelta(minutes=5))
squat.fail("INTERNAL", "squat", "test", "unchanged", t0 + timedelta(minutes=5, seconds=1), "restore-x")
store.save_all(squat)

# Leases of the jobs still running, keyed by the bare ids (expired: their workers are gone).
JobLeases(db, "restore").take(STUCK_RESTORE, "ids-one", "restore-x", t0 + timedelta(minutes=5),
                              {"target_database": "app_copy", "exclusive": False, **holding([str(FULL)])})
JobLeases(db, "backup").take(RUNNING_BACKUP, "ids-one", "backup-executor-x", t0 + timedelta(minutes=3),
                             {"chain_id": str(FULL), "region": "us-east-1"})
rebuild(store, db)
RetentionIndex(store, db).catch_up()
db.close()
store.close()
shutil.rmtree(out / "__pycache__", ignore_errors=True)
