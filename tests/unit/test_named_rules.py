"""The product rules that several services share, by name."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from managed_backups.shared.domain.backup_lifecycle import (
    backup_expires_at,
    backup_may_start,
    is_listed,
    refuse_second_backup,
)
from managed_backups.shared.domain.errors import Conflict
from managed_backups.shared.domain.regions import choose_backup_region
from managed_backups.shared.domain.roles import ROLE_ACTIONS, Action

NOW = datetime(2026, 1, 5, tzinfo=UTC)


def test_an_incremental_expires_with_its_full() -> None:
    full_expires = backup_expires_at(NOW - timedelta(days=6), 7)
    assert full_expires == NOW + timedelta(days=1)
    later = NOW + timedelta(days=2)
    incremental_expires = backup_expires_at(NOW, 7)
    assert is_listed("COMPLETE", incremental_expires, False, "COMPLETE", full_expires, NOW)
    assert not is_listed("COMPLETE", incremental_expires, False, "COMPLETE", full_expires, later)
    assert not is_listed("COMPLETE", incremental_expires, False, "FAILED", None, NOW)
    assert is_listed("IN_PROGRESS", None, True, None, None, NOW)
    assert not is_listed("FAILED", None, True, None, None, NOW)


def test_one_backup_in_flight_per_cluster() -> None:
    assert backup_may_start(None, last_backup_known=False)
    assert backup_may_start("FAILED", last_backup_known=True)
    assert not backup_may_start("IN_PROGRESS", last_backup_known=True)
    assert not backup_may_start(None, last_backup_known=True)  # scheduled, not started yet
    refuse_second_backup("c1", None)
    with pytest.raises(Conflict, match="one backup at a time"):
        refuse_second_backup("c1", uuid4())


def test_backup_region_is_one_of_the_clusters() -> None:
    regions = ["us-east-1", "eu-west-1"]
    seen = {choose_backup_region(regions, random.Random(seed)) for seed in range(50)}
    assert seen == set(regions)


def test_the_role_table() -> None:
    assert ROLE_ACTIONS[max(ROLE_ACTIONS, key=lambda r: len(ROLE_ACTIONS[r]))] == frozenset(Action)
    assert all(
        Action.ADMINISTER not in actions or len(actions) == len(Action)
        for actions in ROLE_ACTIONS.values()
    )


def test_a_backup_on_demand_keeps_the_settings_retentions() -> None:
    from managed_backups.shared.domain.backup_settings import require_allowed_retention
    from managed_backups.shared.domain.errors import BadValue

    require_allowed_retention(365)
    for days in (36_500, 10**7, 0, -1):
        with pytest.raises(BadValue, match="allowed values: 2, 7, 30, 90, 365"):
            require_allowed_retention(days)


def test_a_new_secret_takes_the_missing_full_only_after_the_schedule_failed() -> None:
    from managed_backups.shared.domain.connection_secret import (
        a_new_secret_takes_the_missing_full as rule,
    )

    assert rule(True, restorable_or_running=False, last_scheduled_status="FAILED")
    assert not rule(True, restorable_or_running=True, last_scheduled_status="FAILED")
    for status in (None, "IN_PROGRESS", "COMPLETE"):
        assert not rule(True, restorable_or_running=False, last_scheduled_status=status)


def test_a_disabled_clusters_new_secret_takes_nothing() -> None:
    from managed_backups.shared.domain.connection_secret import (
        a_new_secret_takes_the_missing_full as rule,
    )

    for status in (None, "IN_PROGRESS", "COMPLETE", "FAILED"):
        for restorable in (False, True):
            assert not rule(False, restorable, status)


def test_the_api_asks_the_rule_with_the_clusters_switch(tmp_path: Path) -> None:
    """``missing_full`` (what the connection-secret route asks before sending a full): yes
    while the cluster's last scheduled backup failed and nothing is restorable; no once its
    backups are disabled."""
    from managed_backups.contracts.enums import BackupType
    from managed_backups.services.api.connection_secret import missing_full
    from managed_backups.services.runtime import open_runtime
    from managed_backups.shared.domain.backup_settings import SettingsChange
    from managed_backups.shared.settings import Settings
    from managed_backups.shared.views import ReadModels
    from tests.factories import new_backup, new_cluster

    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    try:
        models = ReadModels(runtime.db)
        models.create()
        cluster = new_cluster("c1")
        backup_id = uuid4()
        at = runtime.clock.now()
        cluster.schedule_backup(backup_id, BackupType.FULL, at, backup_id, at, "scheduler")
        backup = new_backup("c1", backup_id, at=at)
        backup.fail("AUTHENTICATION_FAILED", "no password", "connect", at, "executor")
        runtime.store.save_all(cluster, backup)
        assert missing_full(runtime, models, "c1")
        decision = cluster.decide_settings(SettingsChange(enabled=False))
        cluster.update_backup_settings(decision, None, at, "owner")
        runtime.store.save_all(cluster)
        assert not missing_full(runtime, models, "c1")
    finally:
        runtime.close()
