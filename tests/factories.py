"""Test factories: domain objects built in one place, so a new constructor argument is one edit."""

from __future__ import annotations

from datetime import UTC, datetime

from managed_backups.shared.domain.cluster import Cluster

AT = datetime(2026, 3, 1, tzinfo=UTC)


def new_cluster(
    cluster_id: str,
    *,
    tier: str = "STANDARD",
    organization: str = "acme",
    regions: tuple[str, ...] = ("us-east-1",),
    version: str = "15",
    frequency_minutes: int = 60,
    retention_days: int = 7,
    at: datetime = AT,
) -> Cluster:
    """A registered cluster (not saved): backups enabled, its first region the backup region."""
    return Cluster(
        cluster_id=cluster_id,
        name=cluster_id,
        organization=organization,
        tier=tier,
        regions=list(regions),
        engine="postgres",
        database_version=version,
        connection_ref="postgresql://u@h/postgres",
        backup_region=regions[0],
        enabled=True,
        frequency_minutes=frequency_minutes,
        retention_days=retention_days,
        command_id=None,
        at=at,
        by="test",
    )
