"""Key rotation jobs: every chain's data key wrapped by the cluster's current key-encryption key.

``RotateEncryptionKeys`` on ``managed-backups.retention-commands`` (one cluster: whoever may
change its backup settings; every cluster: an administrator, after the platform key was
rotated). The retention service runs it because it already owns the only mutations of the
object stores; a rotation only *adds* objects: for each chain of the cluster not yet deleted
(from retention's own index), one ``keys/{key id}.json`` holding the chain's data key wrapped
by the current key (:func:`~managed_backups.shared.dataplane.sealing.rewrap_chain`). Chunks
and manifests are never read nor written, so write-once buckets keep working and every
stored object stays byte-identical.

A job runs through the one runner of leased jobs (:mod:`managed_backups.shared.job_runner`):
its lease (kind ``key-rotation``) is taken before ``KeyRotationStarted`` is saved, renewed
while it runs, released once ``KeyRotationCompleted`` or ``KeyRotationFailed`` is recorded; an
instance that finds an expired lease fails the job (``LEASE_EXPIRED``). The worker is fenced: it
checks its lease's fencing token right before each re-wrapped key object it writes and before
recording the job's end, so a worker that lost its lease (reaped after a pause, taken anew)
writes no more key objects and records nothing; a job whose lease was released as an orphan
gets ``LEASE_LOST``. A rotation is idempotent (a chain already wrapped by the key is counted,
not rewritten), so a failed or dead one is simply sent again. It runs under the retention
pass's lock, so within one instance it never races a chain's deletion.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from managed_backups.contracts.commands import RotateEncryptionKeys
from managed_backups.services.retention.retention import Retention
from managed_backups.shared import jobs
from managed_backups.shared.access import load_cluster, may_administer
from managed_backups.shared.commands import CommandContext, Handled, Handler
from managed_backups.shared.dataplane.keys import KeyUnavailable
from managed_backups.shared.dataplane.sealing import rewrap_chain
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.encryption_key import KeyRotation
from managed_backups.shared.domain.errors import Conflict, NotFound, Refused, not_registered
from managed_backups.shared.domain.ids import cluster_aggregate_id, key_rotation_id
from managed_backups.shared.domain.roles import Action
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.job_runner import JobHandle, JobRunner, record_job
from managed_backups.shared.security import Principal

log = logging.getLogger(__name__)
JOB_KIND = "key-rotation"
LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class RotationTotals:
    rewrapped: int = 0
    already: int = 0
    unencrypted: int = 0


class KeyRotations:
    """Starts, runs and reaps rotation jobs for one retention worker."""

    def __init__(
        self,
        retention: Retention,
        encryption: ClusterEncryption,
        name: str,
        lock: asyncio.Lock,
        clock: Callable[[], datetime],
    ) -> None:
        self.retention = retention
        self.encryption = encryption
        self.name = name
        self.lock = lock
        """The retention pass's lock: a rotation and a pass never overlap."""
        self.clock = clock
        self.runner = JobRunner(
            jobs.JobLeases(retention.db, JOB_KIND),
            name,
            LEASE_SECONDS,
            clock,
            fail_expired=self._fail_expired,
            record_lost=self._record_lost,
        )
        self.leases = self.runner.leases

    # -- the command ---------------------------------------------------------------------------

    def start(
        self, command: RotateEncryptionKeys, principal: Principal, context: CommandContext
    ) -> Handled:
        store = context.store
        if command.cluster_id is None:
            may_administer(principal)
            self.retention.index.catch_up()
            ids = self.retention.index.clusters_with_backups()
        else:
            ids = [command.cluster_id]
        # The one access rule; a deleted cluster's chains are kept until its retention ends,
        # so they are re-wrapped too (a retired key must not strand them).
        clusters = [
            load_cluster(store, principal, Action.CHANGE_BACKUP_SETTINGS, cluster_id, live=False)
            for cluster_id in ids
        ]
        now = context.clock.now()
        until = jobs.lease_until(now, LEASE_SECONDS)
        started: list[tuple[JobHandle, KeyRotation]] = []
        for cluster in clusters:
            rotation_id = key_rotation_id(cluster.cluster_id, command.command_id)
            if store.get_or_none(rotation_id, KeyRotation) is not None:
                continue  # a repeated command starts nothing
            try:
                key_id = self.encryption.keys_for(cluster).current_key_id()
            except KeyUnavailable as exc:
                raise Refused(f"cluster {cluster.cluster_id}: no usable key: {exc}", 409) from None
            handle = self.runner.take(rotation_id, cluster.cluster_id)
            if handle is None:
                raise Conflict(f"rotation {rotation_id} is being started by another worker")
            started.append(
                (
                    handle,
                    KeyRotation(
                        rotation_id=rotation_id,
                        cluster_id=cluster.cluster_id,
                        key_id=key_id,
                        worker=self.name,
                        lease_until=until,
                        command_id=command.command_id,
                        at=now,
                        by=principal.name,
                    ),
                )
            )

        async def run() -> None:
            # All started (their leases renewed meanwhile); the pass's lock runs them in turn.
            await asyncio.gather(
                *(
                    self.runner.start(handle, functools.partial(self.run, job))
                    for handle, job in started
                )
            )

        return Handled([job for _, job in started], command.cluster_id, follow_up=run)

    # -- the job -------------------------------------------------------------------------------

    async def run(self, job: KeyRotation, running: JobHandle) -> None:
        """The job's work (its lease renewed by the runner meanwhile), and its end recorded."""
        clock = self.clock
        try:
            async with self.lock:
                totals = await asyncio.to_thread(
                    self.rewrap_cluster, job.cluster_id, job.key_id, running.check
                )
            await asyncio.to_thread(
                self._record,
                job.rotation_id,
                lambda r: r.complete(
                    totals.rewrapped, totals.already, totals.unencrypted, clock(), self.name
                ),
                running,
            )
            log.info("key rotation %s of %s: %s", job.rotation_id, job.cluster_id, totals)
        except Exception as exc:
            code = "KEY_UNAVAILABLE" if isinstance(exc, KeyUnavailable) else "ROTATION_FAILED"
            message = str(exc)
            log.warning("key rotation %s of %s failed: %s", job.rotation_id, job.cluster_id, exc)
            await asyncio.to_thread(
                self._record,
                job.rotation_id,
                lambda r: r.fail(code, message, clock(), self.name),
                running,
            )

    def rewrap_cluster(
        self, cluster_id: str, key_id: str, before_write: Callable[[], None] | None = None
    ) -> RotationTotals:
        """Wrap every chain's data key by the cluster's current key (which must still be
        ``key_id``: a key changed since the job started fails it, to be sent again);
        ``before_write`` (the worker's fence) is checked before each key object written."""
        cluster = self.retention.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
        if cluster is None:
            raise NotFound(not_registered(cluster_id))
        keys = self.encryption.keys_for(cluster)
        if keys.current_key_id() != key_id:
            raise KeyUnavailable(
                f"the cluster's key changed to {keys.current_key_id()} since the rotation to "
                f"{key_id} started: send the rotation again"
            )
        self.retention.index.catch_up()
        backups = self.retention.index.backups_of([cluster_id]).get(cluster_id, [])
        chains = sorted({(b.chain_id, b.region) for b in backups})
        rewrapped = already = unencrypted = 0
        for chain_id, region in chains:
            result = rewrap_chain(self.retention.object_store(region), keys, chain_id, before_write)
            if result.key_id is None:
                unencrypted += 1
            elif result.added:
                rewrapped += 1
            else:
                already += 1
        return RotationTotals(rewrapped, already, unencrypted)

    def _record(
        self,
        rotation_id: UUID,
        change: Callable[[KeyRotation], None],
        running: JobHandle | None = None,
    ) -> bool:
        """Record ``change``; by a worker (``running``) only while its fencing token is current."""
        store = self.retention.store
        return record_job(store, store.get_or_none(rotation_id, KeyRotation), change, running)

    def _record_lost(self, running: JobHandle) -> bool:
        """The worker lost its lease: FAILED ``LEASE_LOST`` unless the job's end is recorded
        (by the reaper, as a rule; not when its lease was released as an orphan)."""
        message = (
            f"the worker {self.name} lost the lease of this rotation and stopped; send the "
            "rotation again (it is idempotent)"
        )
        return self._record(
            running.job_id, lambda r: r.fail("LEASE_LOST", message, self.clock(), self.name)
        )

    def _fail_expired(self, lease: jobs.Lease) -> bool:
        """The job of an expired lease (its worker died): FAILED ``LEASE_EXPIRED``. Nothing to
        clean up: what a rotation wrote is complete key objects only."""
        message = (
            f"the worker running this rotation stopped renewing its lease for "
            f"{LEASE_SECONDS:.0f} s; send the rotation again (it is idempotent)"
        )
        return self._record(
            lease.job_id, lambda r: r.fail("LEASE_EXPIRED", message, self.clock(), self.name)
        )

    # -- leases --------------------------------------------------------------------------------

    def reap_once(self, now: datetime) -> int:
        """Fail the rotation jobs whose worker died (``LEASE_EXPIRED``); release their leases."""
        return self.runner.reap_once(now)


def rotate_handler(rotations: KeyRotations) -> Handler:
    def handle(
        command: RotateEncryptionKeys, principal: Principal, context: CommandContext
    ) -> Handled:
        return rotations.start(command, principal, context)

    return handle
