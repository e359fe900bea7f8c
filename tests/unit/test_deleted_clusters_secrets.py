"""A deleted cluster's password leaves the secret store when its backups' time ends (the rule
``a_deleted_clusters_secret_goes_when_its_backups_do``), recorded on its audit trail; a live
cluster's, or one still within its deleted retention, stays."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from managed_backups.services.projections.service import rebuild
from managed_backups.services.retention.retention import Retention
from managed_backups.shared.domain.connection_secret import ConnectionSecret
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import AT, new_cluster


def test_a_deleted_clusters_secret_goes_with_its_backups(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    secrets = ConnectionSecrets(db, tmp_path / "secrets")
    gone, live = new_cluster("gone", retention_days=7), new_cluster("live")
    store.save_all(gone, live)
    for cluster_id in ("gone", "live"):
        store.save_all(ConnectionSecret(cluster_id=cluster_id, at=AT, by="admin"))
        secrets.put(cluster_id, f"{cluster_id}-password", AT.isoformat())
    deleted_at = AT + timedelta(days=1)
    gone.delete(None, deleted_at, "admin")
    store.save_all(gone)
    worker = Retention(store, db, lambda region: (tmp_path / region).as_uri(), secrets=secrets)

    within = worker.enforce(deleted_at + timedelta(days=7) - timedelta(seconds=1))
    assert within.secrets_removed == 0 and secrets.clusters() == {"gone", "live"}
    after = worker.enforce(deleted_at + timedelta(days=7))
    assert after.secrets_removed == 1 and not after.errors
    assert secrets.get("gone") is None and secrets.get("live") == "live-password"
    assert worker.enforce(deleted_at + timedelta(days=8)).secrets_removed == 0

    audit = store.get_or_none(ConnectionSecret.create_id("gone"), ConnectionSecret)
    assert audit is not None and audit.removed
    trail = rebuild(store, db).audit("gone")
    removed = [e for e in trail if e["type"] == "ConnectionSecretRemoved"]
    assert len(removed) == 1 and "gone-password" not in str(trail)
