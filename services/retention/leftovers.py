"""Sweeping what failed backups left inside live chains.

A backup uploads its chunks before its manifest, so one that failed (an error, a cancel, an
executor killed and reaped with ``LEASE_EXPIRED``) can leave chunks that no manifest
references. They are never listed nor restored, but they are stored bytes nobody pays for and
nobody sees: the rule is that objects no manifest references are swept. A chain whose *full*
failed, or that expired, goes whole with chain deletion (:mod:`.retention`); this module sweeps
the leftovers of a failed *incremental* of a chain that lives on.

Deleting is the only mutation of the object stores, and it is done by the retention service
alone: the executor only records the failure (``BackupFailed``) and releases its lease.

What one sweep of a cluster does (:func:`sweep_leftovers`, called by each retention pass):

1. **Which chains.** From the retention index (the status per backup, as of the pass's
   catch-up): a chain whose full is COMPLETE, with a FAILED incremental not yet recorded as
   deleted (``BackupDeleted`` removes it from the index), and no IN_PROGRESS backup. Nothing
   else is read for a cluster without such a chain, so a pass over healthy clusters costs
   nothing more.
2. **Not while a job holds it.** No job lease may name a backup of the chain
   (:func:`~managed_backups.shared.jobs.backups_in_use`, as chain deletion checks), and no
   backup may be writing into the chain. The second is a handshake, because chunks are
   content-addressed and written once: a backup that finds a chunk already stored only
   references it, so a chunk a failed backup left can be the very chunk a later backup needs.
   The sweep takes a ``sweep`` lease on the chain *first*, then looks for a backup lease on it
   (:func:`~managed_backups.shared.jobs.backup_writing_chain`) and backs off if there is one;
   the executor takes its backup lease first, then waits while a sweep lease names its chain
   (:func:`~managed_backups.shared.jobs.sweep_of_chain`) before it reads the chain. Either
   side sees the other.
3. **What goes.** Every manifest of the chain is read (one unreadable manifest stops the
   sweep: we never guess what it references). The manifests kept are all of them except those
   of the failed backups being swept, plus every manifest a kept one builds on (a failed
   backup whose manifest was written anyway and that a later backup built on stays: the later
   one needs it). Inverting the rule this way (drop only what is known to have failed) means a
   backup that completed after the pass read the index is kept too. Then every chunk no kept
   manifest references, and the dropped manifests, are deleted
   (:func:`~managed_backups.shared.dataplane.verify.cleanup_partial`). A chain whose full has
   no manifest is not swept at all (that would delete the whole chain).
4. **Recorded after.** ``BackupDeleted`` on each swept backup (reason
   ``"its backup failed: leftovers swept"``, or, for a failed backup a later one builds on, a
   reason saying its manifest and chunks stay until the chain goes: it is recorded all the
   same, so later passes do not read the chain again for it); the first of them carries the
   objects and stored bytes the sweep freed, the others zeros (the chunks of several failed
   backups cannot be told apart). The views count it like any deletion; the backup's status
   stays FAILED.

Idempotent and crash-safe like chain deletion: a sweep killed after deleting and before
recording is done again by the next pass (deleting a missing object is a no-op; the recorded
counts are then what that pass found), and a sweep lease left behind expires, or the same
retention worker takes it back on its next pass. One chain's trouble is reported in the pass's
errors and never stops the pass.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from managed_backups.contracts.enums import BackupStatus
from managed_backups.shared.dataplane.manifest import ManifestError, list_manifests
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.verify import cleanup_partial
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.ids import backup_aggregate_id
from managed_backups.shared.eventstore import EventStore, IntegrityError
from managed_backups.shared.jobs import (
    SWEEP,
    JobLeases,
    backup_writing_chain,
    backups_in_use,
)
from managed_backups.shared.sqldb import SqlDatabase

if TYPE_CHECKING:
    from managed_backups.services.retention.retention import IndexedBackup, PassReport

log = logging.getLogger(__name__)

REASON = "its backup failed: leftovers swept"
REASON_BUILT_ON = (
    "its backup failed: leftovers swept; its manifest and chunks stay, a later backup of the "
    "chain builds on them (they go with the chain)"
)
SWEEP_LEASE_SECONDS = 600.0
"""How long a sweep lease holds back a backup of its chain if its retention worker dies
mid-sweep (a sweep itself takes one listing and a few batched deletes)."""


class Sweeper(Protocol):
    """What a sweep needs from its retention worker."""

    store: EventStore
    db: SqlDatabase
    name: str

    def object_store(self, region: str) -> ObjectStore: ...

    def cluster_store(self, cluster_id: str, region: str) -> ObjectStore: ...


def chains_to_sweep(backups: Sequence[IndexedBackup]) -> dict[str, list[IndexedBackup]]:
    """The chains with leftovers to sweep (rule 1 of the module docstring), by chain id."""
    chains: dict[str, list[IndexedBackup]] = defaultdict(list)
    for b in backups:
        chains[b.chain_id].append(b)
    due: dict[str, list[IndexedBackup]] = {}
    for chain_id, members in chains.items():
        full = next((b for b in members if b.backup_id == chain_id), None)
        if full is None or full.status != BackupStatus.COMPLETE.value:
            continue  # a failed or expired full: chain deletion takes the whole chain
        if any(b.status == BackupStatus.IN_PROGRESS.value for b in members):
            continue
        if any(not b.is_full and b.status == BackupStatus.FAILED.value for b in members):
            due[chain_id] = members
    return due


def sweep_leftovers(
    worker: Sweeper,
    cluster_id: str,
    backups: Sequence[IndexedBackup],
    now: datetime,
    report: PassReport,
) -> None:
    """Sweep the leftovers of the cluster's failed incrementals (see the module docstring)."""
    due = chains_to_sweep(backups)
    if not due:
        return
    held = backups_in_use(worker.db, cluster_id)
    for chain_id, members in due.items():
        if any(m.backup_id in held for m in members):
            continue  # a restore reads the chain: a later pass sweeps it
        try:
            _sweep_chain(worker, cluster_id, chain_id, members, now, report)
        except Exception as exc:
            log.exception(
                "sweeping chain %s of cluster %s failed; the next pass retries",
                chain_id,
                cluster_id,
            )
            report.errors.append(
                f"{cluster_id} chain {chain_id}: {type(exc).__name__}: {exc}"[:500]
            )


def _sweep_chain(
    worker: Sweeper,
    cluster_id: str,
    chain_id: str,
    members: list[IndexedBackup],
    now: datetime,
    report: PassReport,
) -> None:
    failed: list[Backup] = []
    for member in members:
        if member.is_full or member.status != BackupStatus.FAILED.value:
            continue
        backup = load_backup(worker.store, cluster_id, UUID(member.backup_id))
        if (
            backup is not None
            and backup.status == BackupStatus.FAILED.value
            and backup.deleted_at is None
        ):
            failed.append(backup)
    if not failed:
        return
    failed.sort(key=lambda b: (b.started_at, str(b.backup_id)))
    region = failed[0].region
    leases = JobLeases(worker.db, SWEEP)
    until = now + timedelta(seconds=SWEEP_LEASE_SECONDS)
    detail = {"chain_id": chain_id, "region": region}
    job_id = backup_aggregate_id(cluster_id, UUID(chain_id))  # chain ids repeat across clusters
    if not leases.take(job_id, cluster_id, worker.name, until, detail):
        return  # another retention worker is sweeping it
    try:
        writing = backup_writing_chain(worker.db, cluster_id, chain_id)
        if writing is not None:
            log.info(
                "chain %s of cluster %s: backup %s is writing into it; its leftovers are swept "
                "by a later pass",
                chain_id,
                cluster_id,
                writing.job_id,
            )
            return
        store = worker.cluster_store(cluster_id, region)  # encrypted manifests: its keys
        manifests = list_manifests(store, cluster_id, chain_id)  # raises if one is unreadable
        by_id = {m.backup_id: m for m in manifests}
        if chain_id not in by_id:
            raise ManifestError(
                f"the full backup {chain_id} has no manifest in the store: nothing swept"
            )
        swept = {str(b.backup_id) for b in failed}
        keep = {m.backup_id for m in manifests if m.backup_id not in swept}
        pending = list(keep)
        while pending:  # what a kept backup builds on is kept too
            parent = by_id[pending.pop()].parent_id
            if parent is not None and parent in by_id and parent not in keep:
                keep.add(parent)
                pending.append(parent)
        if keep & swept:
            log.warning(
                "chain %s of cluster %s: later backups build on the failed backups %s, whose "
                "manifests are kept",
                chain_id,
                cluster_id,
                sorted(keep & swept),
            )
        result = cleanup_partial(store, cluster_id, chain_id, keep=keep, manifests=manifests)
        for i, backup in enumerate(failed):
            backup.record_deleted(
                objects_deleted=result.deleted_objects if i == 0 else 0,
                bytes_freed=result.deleted_bytes if i == 0 else 0,
                reason=REASON_BUILT_ON if str(backup.backup_id) in keep else REASON,
                at=now,
                by=worker.name,
            )
        try:
            worker.store.save_all(*failed)
        except IntegrityError:
            return  # another worker recorded it
        report.leftovers_swept += len(failed)
        report.objects_deleted += result.deleted_objects
        report.bytes_freed += result.deleted_bytes
    finally:
        leases.release(job_id)
