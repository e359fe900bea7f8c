"""Encryption at rest, the control plane's half: which key wraps a cluster's backups, and
the rotation jobs that re-wrap them.

Rules, by name:

- **Customer-managed keys are an ADVANCED feature** (:func:`customer_keys_need_advanced`):
  configuring one on a BASIC or STANDARD cluster is refused with the reason.
- **Which key wraps a new chain's data key** (:func:`customer_key_applies`): the cluster's
  customer key while it is ADVANCED and has one configured; otherwise the platform key (a
  downgraded cluster's new chains go back to the platform key; its older chains keep theirs).

The events (the audit trail) carry the key's *name* and *id* (an id holds a fingerprint, never
the key) and who acted; key material never enters an event. ``ClusterEncryptionKey`` is an
aggregate of its own (one per cluster) so the scheduler stays the ``Cluster`` stream's only
writer; each rotation is a job (``KeyRotation``) with a lease, like a restore.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.contracts.enums import Tier
from managed_backups.shared.domain.errors import BadValue
from managed_backups.shared.domain.ids import encryption_key_aggregate_id

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A customer key's name: its file is ``<customer-keys-dir>/<cluster id>/<name>.key``."""


def customer_keys_need_advanced(cluster_id: str, tier: str) -> None:
    """Refuse a customer key on a cluster that is not ADVANCED, saying why."""
    if Tier(tier) is not Tier.ADVANCED:
        raise BadValue(
            f"customer-managed encryption keys are available on ADVANCED clusters only; "
            f"cluster {cluster_id} is {tier} (its backups are encrypted with the platform key)"
        )


def customer_key_applies(tier: str, key_name: str | None) -> bool:
    """Whether new chains of a cluster are wrapped by its customer key (else the platform's)."""
    return key_name is not None and Tier(tier) is Tier.ADVANCED


class ClusterEncryptionKey(Aggregate):
    """The customer key configured for one cluster (none: the platform key)."""

    @staticmethod
    def create_id(cluster_id: str) -> UUID:
        return encryption_key_aggregate_id(cluster_id)

    class CustomerKeyConfigured(Aggregate.Created):
        cluster_id: str
        key_name: str
        key_id: str
        at: datetime
        by: str

    @event(CustomerKeyConfigured)
    def __init__(self, cluster_id: str, key_name: str, key_id: str, at: datetime, by: str) -> None:
        self.cluster_id = cluster_id
        self.key_name: str | None = key_name
        self.key_id: str | None = key_id
        self.changed_at = at
        self.changed_by = by

    def change(self, key_name: str, key_id: str, at: datetime, by: str) -> bool:
        """Returns False when that very key is already configured (nothing recorded)."""
        if self.key_id == key_id and self.key_name == key_name:
            return False
        self._changed(
            cluster_id=self.cluster_id,
            key_name=key_name,
            key_id=key_id,
            previous_key_id=self.key_id,
            at=at,
            by=by,
        )
        return True

    class CustomerKeyChanged(Aggregate.Event):
        cluster_id: str
        key_name: str
        key_id: str
        previous_key_id: str | None
        at: datetime
        by: str

    @event(CustomerKeyChanged)
    def _changed(
        self,
        cluster_id: str,
        key_name: str,
        key_id: str,
        previous_key_id: str | None,
        at: datetime,
        by: str,
    ) -> None:
        self.key_name = key_name
        self.key_id = key_id
        self.changed_at = at
        self.changed_by = by

    def remove(self, at: datetime, by: str) -> bool:
        """Back to the platform key for new chains; False when none is configured."""
        if self.key_name is None:
            return False
        self._removed(cluster_id=self.cluster_id, previous_key_id=self.key_id, at=at, by=by)
        return True

    class CustomerKeyRemoved(Aggregate.Event):
        cluster_id: str
        previous_key_id: str | None
        at: datetime
        by: str

    @event(CustomerKeyRemoved)
    def _removed(self, cluster_id: str, previous_key_id: str | None, at: datetime, by: str) -> None:
        self.key_name = None
        self.key_id = None
        self.changed_at = at
        self.changed_by = by


class KeyRotation(Aggregate):
    """One rotation job of one cluster: every chain's data key wrapped by the cluster's current
    key-encryption key, in new objects. STARTED → COMPLETED | FAILED."""

    @staticmethod
    def create_id(rotation_id: UUID) -> UUID:
        return rotation_id

    class KeyRotationStarted(Aggregate.Created):
        rotation_id: UUID
        cluster_id: str
        key_id: str
        worker: str
        lease_until: datetime
        command_id: UUID | None
        at: datetime
        by: str

    @event(KeyRotationStarted)
    def __init__(
        self,
        rotation_id: UUID,
        cluster_id: str,
        key_id: str,
        worker: str,
        lease_until: datetime,
        command_id: UUID | None,
        at: datetime,
        by: str,
    ) -> None:
        self.rotation_id = rotation_id
        self.cluster_id = cluster_id
        self.key_id = key_id
        self.status = "STARTED"

    @property
    def is_terminal(self) -> bool:
        return self.status != "STARTED"

    def complete(
        self, rewrapped: int, already: int, unencrypted: int, at: datetime, by: str
    ) -> None:
        self._completed(
            rotation_id=self.rotation_id,
            cluster_id=self.cluster_id,
            key_id=self.key_id,
            chains_rewrapped=rewrapped,
            chains_already_wrapped=already,
            chains_unencrypted=unencrypted,
            at=at,
            by=by,
        )

    class KeyRotationCompleted(Aggregate.Event):
        rotation_id: UUID
        cluster_id: str
        key_id: str
        chains_rewrapped: int
        chains_already_wrapped: int
        chains_unencrypted: int
        at: datetime
        by: str

    @event(KeyRotationCompleted)
    def _completed(
        self,
        rotation_id: UUID,
        cluster_id: str,
        key_id: str,
        chains_rewrapped: int,
        chains_already_wrapped: int,
        chains_unencrypted: int,
        at: datetime,
        by: str,
    ) -> None:
        self.status = "COMPLETED"

    def fail(self, code: str, message: str, at: datetime, by: str) -> None:
        self._failed(
            rotation_id=self.rotation_id,
            cluster_id=self.cluster_id,
            error_code=code,
            error_message=message,
            at=at,
            by=by,
        )

    class KeyRotationFailed(Aggregate.Event):
        rotation_id: UUID
        cluster_id: str
        error_code: str
        error_message: str
        at: datetime
        by: str

    @event(KeyRotationFailed)
    def _failed(
        self,
        rotation_id: UUID,
        cluster_id: str,
        error_code: str,
        error_message: str,
        at: datetime,
        by: str,
    ) -> None:
        self.status = "FAILED"
