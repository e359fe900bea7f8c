"""Who changed a cluster's connection secret, and when: the audit half of the secret store.

The value lives in the secret store (:mod:`managed_backups.shared.secrets`); the events here carry
the cluster id and the principal only, never the password nor a hash of it (a hash of a short
password is as good as the password to whoever reads the events, and events are kept forever).
The aggregate is separate from ``Cluster`` so the scheduler stays that stream's only writer.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import BackupStatus
from managed_backups.shared.domain.ids import connection_secret_aggregate_id


class ConnectionSecret(Aggregate):
    @staticmethod
    def create_id(cluster_id: str) -> UUID:
        return connection_secret_aggregate_id(cluster_id)

    class ConnectionSecretSet(Aggregate.Created):
        cluster_id: str
        at: datetime
        by: str

    @event(ConnectionSecretSet)
    def __init__(self, cluster_id: str, at: datetime, by: str) -> None:
        self.cluster_id = cluster_id
        self.changes = 1
        self.removed = False

    def change(self, at: datetime, by: str) -> None:
        self._changed(cluster_id=self.cluster_id, at=at, by=by)

    class ConnectionSecretChanged(Aggregate.Event):
        cluster_id: str
        at: datetime
        by: str

    @event(ConnectionSecretChanged)
    def _changed(self, cluster_id: str, at: datetime, by: str) -> None:
        self.changes += 1

    def remove(self, reason: str, at: datetime, by: str) -> None:
        self._removed(cluster_id=self.cluster_id, reason=reason, at=at, by=by)

    class ConnectionSecretRemoved(Aggregate.Event):
        cluster_id: str
        reason: str
        at: datetime
        by: str

    @event(ConnectionSecretRemoved)
    def _removed(self, cluster_id: str, reason: str, at: datetime, by: str) -> None:
        self.removed = True


def a_deleted_clusters_secret_goes_when_its_backups_do(
    deleted_until: datetime, now: datetime
) -> bool:
    """A deleted cluster is never backed up again, and a restore from its backups connects to
    the destination only: its password is kept no longer than its backups are (the deleted
    cluster's retention), then removed from the secret store."""
    return deleted_until <= now


def a_new_secret_takes_the_missing_full(
    backups_enabled: bool, restorable_or_running: bool, last_scheduled_status: str | None
) -> bool:
    """Setting or changing a cluster's secret takes a full backup at once when the cluster's
    backups are enabled, the schedule's last backup FAILED and the cluster has no restorable
    backup and none running: the first full is scheduled at registration, usually before the
    secret can be set (the cluster must exist first), and fails without it; otherwise the
    next chance would be the next full slot, up to a frequency later. A backup scheduled and
    not started yet will use the new secret.

    A cluster whose backups are disabled takes nothing: disabling takes no backup and a
    disabled cluster is backed up by nobody (the product's settings rule), and a password
    change is no reason to start. Re-enabling its backups takes a full at once anyway (the
    cadence), with the secret then in place."""
    return (
        backups_enabled
        and not restorable_or_running
        and last_scheduled_status == BackupStatus.FAILED
    )
