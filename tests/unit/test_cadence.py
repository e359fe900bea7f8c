"""Rule "full and incremental backups": the cadence, as pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from managed_backups.contracts.enums import BackupType
from managed_backups.services.scheduler.cadence import (
    ScheduleView,
    backup_type_for,
    due_slot,
    next_slot,
)

T0 = datetime.fromisoformat("2026-01-05T00:00:00+00:00")


def view(
    frequency: int = 60,
    last: dict[str, Any] | None = None,
    chain: dict[str, Any] | None = None,
    **kw: Any,
) -> ScheduleView:
    values: dict[str, Any] = {
        "enabled": True,
        "deleted": False,
        "frequency_minutes": frequency,
        "generation": 1,
        "generation_start": T0,
        "full_backup_required": False,
        "last_scheduled": last,
        "chain": chain,
    }
    values.update(kw)
    return ScheduleView(**values)


def test_first_slot_is_immediate() -> None:
    assert due_slot(view(), T0) == T0
    assert next_slot(view(enabled=False)) is None
    assert next_slot(view(deleted=True)) is None


def test_missed_slots_collapse_into_the_latest() -> None:
    last = {"slot": T0, "generation": 1, "backup_id": uuid4()}
    assert due_slot(view(last=last), T0 + timedelta(minutes=59)) is None
    assert due_slot(view(last=last), T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)
    assert due_slot(view(last=last), T0 + timedelta(hours=5, minutes=10)) == T0 + timedelta(hours=5)


def test_a_new_generation_starts_at_once() -> None:
    last = {"slot": T0, "generation": 0, "backup_id": uuid4()}
    assert due_slot(
        view(last=last, generation_start=T0 + timedelta(minutes=7)), T0 + timedelta(minutes=7)
    ) == T0 + timedelta(minutes=7)


def test_types() -> None:
    chain = {"chain_id": uuid4(), "slot": T0, "retention_days": 30}
    assert backup_type_for(view(), T0, False) is BackupType.FULL  # no chain yet
    assert (
        backup_type_for(view(chain=chain), T0 + timedelta(hours=1), False) is BackupType.FULL
    )  # full not complete
    assert (
        backup_type_for(view(chain=chain), T0 + timedelta(hours=1), True) is BackupType.INCREMENTAL
    )
    assert (
        backup_type_for(view(chain=chain), T0 + timedelta(hours=24), True) is BackupType.FULL
    )  # daily
    assert (
        backup_type_for(view(240, chain=chain), T0 + timedelta(days=6, hours=20), True)
        is BackupType.INCREMENTAL
    )
    assert (
        backup_type_for(view(240, chain=chain), T0 + timedelta(days=7), True) is BackupType.FULL
    )  # weekly
    assert (
        backup_type_for(view(chain=chain, full_backup_required=True), T0 + timedelta(hours=1), True)
        is BackupType.FULL
    )


def test_a_full_comes_before_the_chain_would_outlive_its_retention() -> None:
    short = {"chain_id": uuid4(), "slot": T0, "retention_days": 2}
    # 240-minute backups kept 2 days: weekly fulls would leave incrementals without their full.
    assert (
        backup_type_for(view(240, chain=short), T0 + timedelta(hours=40), True)
        is BackupType.INCREMENTAL
    )
    assert (
        backup_type_for(view(240, chain=short), T0 + timedelta(hours=44), True) is BackupType.FULL
    )
    daily = {"chain_id": uuid4(), "slot": T0, "retention_days": 2}
    assert backup_type_for(view(1440, chain=daily), T0 + timedelta(days=1), True) is BackupType.FULL
