"""Deterministic aggregate ids: the same business key always names the same event stream.

Rule: "no client-chosen id names a record". Every stream id is a name-based UUID (version 5)
of a kind prefix and the business key, never an id a client sent: a cluster id, a backup id, a
restore id or a command id chosen by one tenant therefore never equals the stream id of
another tenant's record, nor of a record of another kind (the prefixes differ, and each key's
last part is fixed-length or the whole key). Records written before an id was derived (0.1's
backups and outcomes, restores before this rule) are still read where they are, for their own
cluster or sender only (``load_backup``, ``load_restore``, ``CommandOutcome.legacy_id``).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

NAMESPACE = UUID("6f1d3c0e-8a51-4b0e-9a57-1c6d8d2b7a41")


def cluster_aggregate_id(cluster_id: str) -> UUID:
    return uuid5(NAMESPACE, f"cluster:{cluster_id}")


def service_account_id(organization: str | None, name: str) -> UUID:
    """A service account's id derives from its organization and name, so a name is unique
    within its organization: two creations of the same name collide in the store. (Here, not
    in ``identity.py``, so the command line computes it without loading the domain.)"""
    return uuid5(NAMESPACE, f"service-account:{organization or ''}/{name}")


def command_outcome_id(command_id: UUID) -> UUID:
    return uuid5(NAMESPACE, f"command:{command_id}")


def api_key_aggregate_id(key_id: str) -> UUID:
    return uuid5(NAMESPACE, f"api-key:{key_id}")


def scheduled_backup_id(cluster_id: str, generation: int, slot: datetime) -> UUID:
    """The id of the backup for one due slot: a restarted or second scheduler computes the same."""
    return uuid5(NAMESPACE, f"backup:{cluster_id}:{generation}:{slot.isoformat()}")


def connection_secret_aggregate_id(cluster_id: str) -> UUID:
    return uuid5(NAMESPACE, f"connection-secret:{cluster_id}")


def backup_aggregate_id(cluster_id: str, backup_id: UUID) -> UUID:
    """A backup's stream, derived from its cluster: a backup id chosen by one tenant can never
    name another tenant's backup or an aggregate of another type. (Backups recorded by version
    0.1 live at the bare backup id: :func:`~managed_backups.shared.domain.backup.load_backup`.)"""
    return uuid5(NAMESPACE, f"backup-of:{cluster_id}:{backup_id}")


def principal_command_outcome_id(principal: str, command_id: UUID) -> UUID:
    """The outcome of ``command_id`` as sent by ``principal``: one sender's ids never meet
    another's."""
    return uuid5(NAMESPACE, f"command-of:{principal}:{command_id}")


def restore_aggregate_id(cluster_id: str, restore_id: UUID) -> UUID:
    """A restore job's stream, derived from its destination cluster: the ``restore_id`` a client
    chose never names another record. (Restores recorded before this lived at the bare
    ``restore_id``: :func:`~managed_backups.shared.domain.restore.load_restore`.)"""
    return uuid5(NAMESPACE, f"restore-of:{cluster_id}:{restore_id}")


def encryption_key_aggregate_id(cluster_id: str) -> UUID:
    return uuid5(NAMESPACE, f"encryption-key:{cluster_id}")


def key_rotation_id(cluster_id: str, command_id: UUID) -> UUID:
    """A rotation job's id: one per cluster and command (a repeated command names the same)."""
    return uuid5(NAMESPACE, f"key-rotation:{cluster_id}:{command_id}")
