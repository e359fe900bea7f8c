"""The scheduler learns its backups' ends from the log it follows: deciding the next slot does not
load the last backup from the event store (one load per backup doubled its CPU per backup)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from managed_backups.contracts.enums import BackupStatus
from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared.clock import WallClock
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.eventstore import EventStore, open_event_store
from tests.factories import new_backup, new_cluster

NOW = datetime(2026, 3, 1, tzinfo=UTC)


async def _no_send(command: object) -> None:
    raise AssertionError("decisions only")


def _no_sign(command: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("decisions only: nothing is signed")


def _forbid_backup_loads(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.get_or_none

    def get_or_none(aggregate_id: UUID, cls: type[Any]) -> Any:
        if cls is Backup:
            raise AssertionError(f"backup {aggregate_id} loaded from the store")
        return real(aggregate_id, cls)

    monkeypatch.setattr(store, "get_or_none", get_or_none)


@pytest.mark.parametrize("ended", ["completed", "failed"])
def test_a_backups_end_is_followed_from_the_log_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ended: str
) -> None:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.sqlite'}")
    store.save_all(new_cluster("shop", at=NOW))
    scheduler = Scheduler(store, WallClock(), send=_no_send, sign=_no_sign)
    scheduler.bootstrap()
    decided, _ = scheduler._decide_all(["shop"], NOW)
    last = decided[0].last_scheduled
    assert last is not None and last["backup_type"] == "FULL"
    backup_id = last["backup_id"]

    backup = new_backup("shop", backup_id, scheduled_for=last["slot"], at=NOW)
    if ended == "failed":
        backup.fail("TEST_FAILURE", "failed on purpose", "x", NOW, "executor")
    else:
        backup.complete(
            as_of_time=NOW,
            size_bytes=1,
            database_count=0,
            catalog=[],
            manifest_key="m",
            expires_at=NOW + timedelta(days=30),
            at=NOW,
            by="executor",
        )
    store.save_all(backup)
    _forbid_backup_loads(store, monkeypatch)

    scheduler.follow_once()
    expected = BackupStatus.COMPLETE if ended == "completed" else BackupStatus.FAILED
    assert scheduler.status[backup_id] == expected.value
    # The next slot is decided from what was followed: no backup is read from the store.
    decided, resend = scheduler._decide_all(["shop"], NOW + timedelta(minutes=60))
    assert [c.cluster_id for c in decided] == ["shop"] and resend == []
    store.close()
