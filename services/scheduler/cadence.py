"""Rule: "full and incremental backups": which backup is due, and whether full or incremental.

Slots: each settings *generation* (registration, and every change of frequency, retention or the
enabled switch) starts a grid ``generation_start + k * frequency``; slot 0 is immediate. A slot
that falls due while a backup runs waits; several missed slots collapse into the latest one.

Type of the backup for a slot:
- full when the cluster has none yet, after a settings change, or when the current chain's full
  did not complete;
- full every day when frequency ≤ 60 minutes, every week when frequency ≤ 1440 minutes;
- full also when the next slot would come after the chain's full expires (its retention): the
  incrementals die with their full, so a new full must exist before the old one goes. This is
  stricter than a plain slot grid: a live cluster always has a restorable chain;
- otherwise incremental, depending on the chain's (complete) full.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from managed_backups.contracts.enums import BackupType

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class ScheduleView:
    """What the cadence needs from a cluster (see ``Cluster``)."""

    enabled: bool
    deleted: bool
    frequency_minutes: int
    generation: int
    generation_start: datetime
    full_backup_required: bool
    last_scheduled: dict[str, Any] | None
    chain: dict[str, Any] | None

    @property
    def frequency(self) -> timedelta:
        return timedelta(minutes=self.frequency_minutes)


def full_interval(frequency_minutes: int) -> timedelta:
    return DAY if frequency_minutes <= 60 else WEEK


def next_slot(view: ScheduleView) -> datetime | None:
    """The first slot of the current generation not yet scheduled (None: nothing to schedule)."""
    if view.deleted or not view.enabled:
        return None
    last = view.last_scheduled
    if last is None or last["generation"] != view.generation:
        return view.generation_start
    last_slot: datetime = last["slot"]
    k = (last_slot - view.generation_start) // view.frequency + 1
    return view.generation_start + k * view.frequency


def due_slot(view: ScheduleView, now: datetime) -> datetime | None:
    """The slot to take now, collapsing missed slots into the latest one; None if not due."""
    first = next_slot(view)
    if first is None or first > now:
        return None
    k = (now - view.generation_start) // view.frequency
    return max(first, view.generation_start + k * view.frequency)


def backup_type_for(view: ScheduleView, slot: datetime, chain_full_complete: bool) -> BackupType:
    chain = view.chain
    if view.full_backup_required or chain is None or not chain_full_complete:
        return BackupType.FULL
    if slot - chain["slot"] >= full_interval(view.frequency_minutes):
        return BackupType.FULL
    if slot + view.frequency >= chain["slot"] + timedelta(days=chain["retention_days"]):
        return BackupType.FULL
    return BackupType.INCREMENTAL
