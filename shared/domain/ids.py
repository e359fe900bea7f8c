"""Deterministic aggregate ids: the same business key always names the same event stream."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

NAMESPACE = UUID("6f1d3c0e-8a51-4b0e-9a57-1c6d8d2b7a41")


def cluster_aggregate_id(cluster_id: str) -> UUID:
    return uuid5(NAMESPACE, f"cluster:{cluster_id}")


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


def encryption_key_aggregate_id(cluster_id: str) -> UUID:
    return uuid5(NAMESPACE, f"encryption-key:{cluster_id}")


def key_rotation_id(cluster_id: str, command_id: UUID) -> UUID:
    """A rotation job's id: one per cluster and command (a repeated command names the same)."""
    return uuid5(NAMESPACE, f"key-rotation:{cluster_id}:{command_id}")
