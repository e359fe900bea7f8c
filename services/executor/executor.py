"""The backup-executor: takes and verifies backups (full and incremental).

TakeBackup → BackupStarted (IN_PROGRESS, with a lease) is recorded atomically with the command's
outcome, then the backup runs (through the one runner of leased jobs, ``shared/job_runner.py``:
renewed, fenced, reaped) in a worker thread through the cluster's engine adapter into its
backup region's object store → BackupCompleted (COMPLETE) or BackupFailed (error code, message and
the step or statement that failed). A TakeBackup for a backup id that already exists does nothing.
VerifyBackup reads every chunk the backup depends on and records which are missing or corrupt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID, uuid5

from managed_backups.contracts.commands import TakeBackup, VerifyBackup
from managed_backups.contracts.enums import BackupReason, BackupStatus, BackupType, Tier
from managed_backups.services.executor.leases import backup_leases
from managed_backups.services.runtime import Runtime
from managed_backups.shared import jobs
from managed_backups.shared.access import load_cluster
from managed_backups.shared.cluster_connection import cluster_connection, without_secret_hint
from managed_backups.shared.commands import CommandContext, Handled
from managed_backups.shared.dataplane.engine import BackupError, BackupRequest, ErrorCode
from managed_backups.shared.dataplane.keys import KeyUnavailable
from managed_backups.shared.dataplane.manifest import Manifest, list_manifests
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.sealing import chain_is_encrypted
from managed_backups.shared.dataplane.verify import verify_stored
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.backup_lifecycle import (
    backup_expires_at,
    chain_has_expired,
    incremental_parent,
    refuse_backup_on_expired_chain,
    refuse_second_backup,
)
from managed_backups.shared.domain.backup_settings import backup_retention_follows_the_cluster
from managed_backups.shared.domain.catalog import summarise_catalog
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import Conflict, NotFound
from managed_backups.shared.domain.ids import backup_aggregate_id
from managed_backups.shared.domain.restore_rules import (
    latest_restorable_backup,
    no_backup_while_a_cluster_restore_runs,
)
from managed_backups.shared.encryption import (
    ClusterEncryption,
    encrypted_chains,
    platform_keyring,
)
from managed_backups.shared.faults import crash_point
from managed_backups.shared.job_runner import JobHandle, JobRunner, record_job
from managed_backups.shared.jobs import LeaseLost
from managed_backups.shared.region_stores import RegionStores
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import ReadModels

log = logging.getLogger(__name__)
SWEEP_POLL_SECONDS = 0.5
"""How often a backup waiting for retention's sweep of its chain looks again."""


class BackupExecutor:
    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.name = name
        self.slots = asyncio.Semaphore(max(1, self.settings.max_concurrent_backups))
        self.stores = RegionStores(runtime.settings)
        # Backups run through the one runner of leased jobs (lease, heartbeat, fence, reaper).
        self.runner = JobRunner(
            backup_leases(runtime.db),
            name,
            self.settings.backup_lease_seconds,
            runtime.clock.now,
            fail_expired=self._fail_expired,
            record_lost=self._record_lost,
        )
        self.leases = self.runner.leases
        # Verifies too: a verify's lease holds its backup (retention deletes no chain a lease
        # names); it records its report only while it holds the lease. It records no start, so
        # an expired verify lease is an orphan (released) and a lost verify is sent again.
        self.verifies = JobRunner(
            jobs.JobLeases(runtime.db, jobs.VERIFY),
            name,
            self.settings.backup_lease_seconds,
            runtime.clock.now,
            fail_expired=lambda lease: False,
            record_lost=lambda running: False,
        )
        self.secrets = ConnectionSecrets(
            runtime.db, self.settings.secrets_path, platform_keyring(self.settings)
        )
        self.encryption = ClusterEncryption(self.settings, runtime.store)

    # -- helpers ---------------------------------------------------------------------------------

    def store_for(self, cluster: Cluster, region: str, *backups: Backup | None) -> ObjectStore:
        """The region's store, sealed for the cluster (encryption at rest); the chains of
        ``backups`` recorded as encrypted are never read as unencrypted."""
        return self.encryption.seal(
            self.stores.for_region(region), cluster, encrypted_chains(*backups)
        )

    def adapter_for(self, cluster: Cluster) -> PostgresAdapter:
        if cluster.engine != "postgres":
            raise BackupError(
                ErrorCode.UNSUPPORTED,
                f"engine {cluster.engine} is not supported yet",
                "select engine adapter",
            )
        connection = cluster_connection(cluster, self.secrets, self.settings)
        return connection.postgres_adapter()

    # -- TakeBackup ------------------------------------------------------------------------------

    def take_backup(
        self, command: TakeBackup, principal: Principal, context: CommandContext
    ) -> Handled:
        cluster = load_cluster(context.store, principal, Action.TAKE_BACKUP, command.cluster_id)
        retention_days = backup_retention_follows_the_cluster(
            cluster.cluster_id,
            Tier(cluster.tier),
            cluster.retention_days,
            command.retention_days,
            cluster.scheduled_retention(command.backup_id),
        )
        if load_backup(context.store, cluster.cluster_id, command.backup_id) is not None:
            return Handled([], command.cluster_id)  # a duplicate TakeBackup does nothing
        running = self.runner.running_on(cluster.cluster_id)
        refuse_second_backup(
            cluster.cluster_id, UUID(running.detail["backup_id"]) if running else None
        )
        restoring = jobs.exclusive_job(self.runtime.db, cluster.cluster_id)
        no_backup_while_a_cluster_restore_runs(
            cluster.cluster_id, restoring.job_id if restoring else None
        )
        if command.backup_type is BackupType.FULL:
            chain_id = command.backup_id
        elif command.chain_id is not None:
            chain_id = command.chain_id
        else:
            # On demand: on the chain of the newest restorable backup, whoever took its full
            # (the schedule's chain may have a failed full while an on-demand one completed).
            newest = latest_restorable_backup(
                context.store,
                cluster.cluster_id,
                context.clock.now(),
                ReadModels(self.runtime.db).completed_backups(cluster.cluster_id),
            )
            if newest is None:
                raise Conflict(
                    f"cluster {cluster.cluster_id} has no restorable backup to build an "
                    "incremental on; take a full backup"
                )
            newest_backup = load_backup(context.store, cluster.cluster_id, newest)
            assert newest_backup is not None
            chain_id = newest_backup.chain_id
        now = context.clock.now()
        if command.backup_type is not BackupType.FULL:
            full = load_backup(context.store, cluster.cluster_id, chain_id)
            full_status = full.status if full is not None else None
            if command.reason is not BackupReason.SCHEDULED:
                refuse_backup_on_expired_chain(chain_id, full_status)
            elif chain_has_expired(full_status):
                return self._refuse_expired_chain(command, cluster, chain_id, principal, now)
        lease = self.runner.until()
        backup = Backup(
            backup_id=command.backup_id,
            cluster_id=cluster.cluster_id,
            backup_type=command.backup_type.value,
            chain_id=chain_id,
            reason=command.reason.value,
            region=cluster.backup_region,
            retention_days=retention_days,
            scheduled_for=command.scheduled_for,
            executor=self.name,
            lease_until=lease,
            command_id=command.command_id,
            at=now,
            by=principal.name,
        )

        # The lease is taken *before* BackupStarted is saved: whatever happens between the save
        # and the worker's start (a crash, a kill), the lease expires and the reaper fails the
        # backup with LEASE_EXPIRED. A lease whose backup was never recorded (the save failed)
        # is dropped by the reaper as an orphan.
        # The lease's job id is the backup's stream id: a backup id is unique only within
        # its cluster, so another tenant's backup of the same id never meets this lease.
        handle = self.runner.take(
            backup.id,
            cluster.cluster_id,
            {
                "chain_id": str(chain_id),
                "region": cluster.backup_region,
                "backup_id": str(command.backup_id),
            },
        )
        if handle is None:
            raise Conflict(f"backup {command.backup_id} is being started by another executor")

        async def start() -> None:
            crash_point(self.settings, "executor-after-backup-started-saved")
            self.runner.start(handle, lambda held: self._run(cluster, backup, held))

        return Handled([backup], cluster.cluster_id, follow_up=start)

    def _refuse_expired_chain(
        self,
        command: TakeBackup,
        cluster: Cluster,
        chain_id: UUID,
        principal: Principal,
        now: datetime,
    ) -> Handled:
        """A scheduled incremental into an expired chain: refused, and the refusal recorded as
        the slot's backup FAILED (``CHAIN_EXPIRED``) without running. The scheduler sees its
        slot ended and schedules a full next; a resent TakeBackup finds the backup and does
        nothing (no resend loop)."""
        backup = Backup(
            backup_id=command.backup_id,
            cluster_id=cluster.cluster_id,
            backup_type=command.backup_type.value,
            chain_id=chain_id,
            reason=command.reason.value,
            region=cluster.backup_region,
            retention_days=command.retention_days or cluster.retention_days,
            scheduled_for=command.scheduled_for,
            executor=self.name,
            lease_until=now,
            command_id=command.command_id,
            at=now,
            by=principal.name,
        )
        backup.fail(
            ErrorCode.CHAIN_EXPIRED.value,
            f"chain {chain_id} has expired; no incremental is added to it (the next scheduled "
            "backup is a full)",
            "check chain",
            now,
            self.name,
        )
        return Handled([backup], cluster.cluster_id)

    def _fenced(self, running: JobHandle) -> None:
        """Refuse a write by this worker if its lease is no longer its own."""
        try:
            running.check()
        except LeaseLost as lost:
            raise BackupError(ErrorCode.LEASE_LOST, str(lost), "executor lease") from None

    def _write_fence(self, running: JobHandle) -> Callable[[], None]:
        """What the backup's store calls before each object it writes (see
        :meth:`JobHandle.write_fence`): a worker that stalled past its lease (paused, starved)
        writes no chunk into a chain that retention may already have deleted or swept."""
        fence = running.write_fence(
            self.runtime.clock.now, timedelta(seconds=self.settings.backup_lease_seconds / 3)
        )

        def before_write() -> None:
            try:
                fence()
            except LeaseLost as lost:
                raise BackupError(ErrorCode.LEASE_LOST, str(lost), "executor lease") from None

        return before_write

    async def _run(self, cluster: Cluster, backup: Backup, running: JobHandle) -> None:
        """The backup's work (its lease renewed by the runner meanwhile), and its end recorded."""
        try:
            async with self.slots:
                manifest, encrypted = await asyncio.to_thread(self._take, cluster, backup, running)
                await asyncio.to_thread(
                    self._record_completed, backup, manifest, encrypted, running
                )
        except BackupError as error:
            message = error.message
            if error.code is ErrorCode.AUTHENTICATION_FAILED:
                message = await asyncio.to_thread(
                    without_secret_hint, backup.cluster_id, self.secrets, message
                )
            await asyncio.to_thread(
                self._record_failed,
                backup.cluster_id,
                backup.backup_id,
                error.code.value,
                message,
                error.step,
                running,
            )
        except Exception as error:  # never leave a backup IN_PROGRESS because of a bug
            log.exception("backup %s failed unexpectedly", backup.backup_id)
            await asyncio.to_thread(
                self._record_failed,
                backup.cluster_id,
                backup.backup_id,
                ErrorCode.INTERNAL.value,
                f"{type(error).__name__}: {error}",
                "executor",
                running,
            )

    def _take(self, cluster: Cluster, backup: Backup, running: JobHandle) -> tuple[Manifest, bool]:
        """The backup's manifest, and whether its chain is stored encrypted."""
        full = None
        if backup.backup_type != BackupType.FULL.value:
            full = load_backup(self.runtime.store, cluster.cluster_id, backup.chain_id)
        store = self.store_for(cluster, backup.region, full)
        fenced = store.fenced_by(self._write_fence(running))
        manifest = self._take_into(fenced, cluster, backup, running)
        return manifest, chain_is_encrypted(store, cluster.cluster_id, str(backup.chain_id))

    def _take_into(
        self, store: ObjectStore, cluster: Cluster, backup: Backup, running: JobHandle
    ) -> Manifest:
        adapter = self.adapter_for(cluster)
        request = BackupRequest(
            store=store,
            cluster_id=cluster.cluster_id,
            backup_id=str(backup.backup_id),
            cancel=running.cancel,
            before_commit=lambda: self._fenced(running),
        )
        if backup.backup_type == BackupType.FULL.value:
            return adapter.full_backup(request)
        self._wait_for_sweep(cluster.cluster_id, str(backup.chain_id), running.cancel)
        try:
            chain = list_manifests(store, cluster.cluster_id, str(backup.chain_id))
        except KeyUnavailable as exc:
            raise BackupError(ErrorCode.KEY_UNAVAILABLE, str(exc), "read chain manifests") from exc
        except Exception as exc:
            raise BackupError(
                ErrorCode.STORE_FAILED,
                f"cannot read chain {backup.chain_id}: {exc}",
                "read chain manifests",
            ) from exc
        if not chain:
            raise BackupError(
                ErrorCode.INVALID_CHAIN,
                f"the full backup {backup.chain_id} this incremental depends on is not in the store",
                "read chain manifests",
            )
        by_id = {m.backup_id: m for m in chain}
        parent = incremental_parent(
            ((m.backup_id, m.data_from) for m in chain),
            lambda backup_id: self._is_complete(cluster.cluster_id, backup_id),
        )
        if parent is None:
            raise BackupError(
                ErrorCode.INVALID_CHAIN,
                f"chain {backup.chain_id} has no COMPLETE backup to build this incremental on",
                "read chain manifests",
            )
        return adapter.incremental_backup(request, by_id[parent])

    def _is_complete(self, cluster_id: str, backup_id: str) -> bool:
        recorded = load_backup(self.runtime.store, cluster_id, UUID(backup_id))
        return recorded is not None and recorded.status == BackupStatus.COMPLETE.value

    def _wait_for_sweep(self, cluster_id: str, chain_id: str, cancel: threading.Event) -> None:
        """Wait while retention sweeps the chain's leftovers, before reading or writing it.

        Our lease is already taken (before ``BackupStarted``): a sweep that starts after this
        check sees it and leaves the chain alone; one that started before holds a sweep lease,
        seen here (:func:`managed_backups.shared.jobs.sweep_of_chain`). Without this, a chunk a
        failed backup left and this one merely references (chunks are written once, by content)
        could be deleted under it. A sweep lease whose worker died expires."""
        while (
            sweep := jobs.sweep_of_chain(
                self.runtime.db, cluster_id, chain_id, self.runtime.clock.now()
            )
        ) is not None:
            log.info("backup of chain %s waits for %s to sweep the chain", chain_id, sweep.owner)
            if cancel.wait(SWEEP_POLL_SECONDS):
                raise BackupError(ErrorCode.CANCELLED, "backup cancelled", "wait for a sweep")

    def _record_completed(
        self, started: Backup, manifest: Manifest, encrypted: bool, running: JobHandle
    ) -> None:
        """Record COMPLETE, unless the backup ended already (the reaper failed it: that stands)
        or this worker lost its lease (a stale worker's completion is refused)."""
        catalog = summarise_catalog(
            manifest.catalog.databases, max_tables=self.settings.catalog_tables_in_event
        )
        now = self.runtime.clock.now()

        def complete(backup: Backup) -> None:
            backup.complete(
                as_of_time=manifest.data_from,
                size_bytes=manifest.totals.new_stored_bytes,
                database_count=manifest.catalog.database_count,
                catalog=catalog,
                manifest_key=f"clusters/{manifest.cluster_id}/chains/{manifest.chain_id}/manifests/{manifest.backup_id}.json",
                expires_at=backup_expires_at(manifest.data_from, backup.retention_days),
                at=now,
                by=self.name,
                encrypted=encrypted,
            )

        store = self.runtime.store
        record_job(store, store.get_or_none(started.id, Backup), complete, running)

    def _record_failed(
        self,
        cluster_id: str,
        backup_id: UUID,
        code: str,
        message: str,
        step: str,
        running: JobHandle | None = None,
    ) -> bool:
        """Record the backup FAILED; by a worker (``running``) only while its fencing token is
        current. A stale worker records nothing here: the runner then records ``LEASE_LOST``
        (:meth:`_record_lost`) if nobody recorded the backup's end. A stale worker never writes
        a result (a manifest, COMPLETE)."""
        now = self.runtime.clock.now()
        return record_job(
            self.runtime.store,
            load_backup(self.runtime.store, cluster_id, backup_id),
            lambda backup: backup.fail(code, message, step, now, self.name),
            running,
        )

    # -- leases ----------------------------------------------------------------------------------

    def _record_lost(self, running: JobHandle) -> bool:
        """The worker lost its lease: FAILED ``LEASE_LOST`` unless the backup's end is recorded
        (by the reaper, or by this worker before): its lease may have been released as an orphan
        (it expired before the start was saved), and then no reaper records the end."""
        return self._record_failed(
            running.cluster_id,
            UUID(running.detail["backup_id"]),
            ErrorCode.LEASE_LOST.value,
            f"the executor {self.name} lost the lease of this backup and stopped",
            "executor lease",
        )

    def _fail_expired(self, lease: jobs.Lease) -> bool:
        """The backup of an expired lease (its executor died): FAILED ``LEASE_EXPIRED``.

        Nothing is deleted here: what such a backup left half-written (chunks without a
        manifest) is swept by the retention service, the only service that deletes objects
        (``services/retention/leftovers.py``; a failed full goes with its chain). A lease whose
        backup was never recorded (an orphan: nothing was written) or has already ended is
        released."""
        # Leases taken before the job id was the stream id name the bare backup id.
        backup_id = UUID(str(lease.detail.get("backup_id", lease.job_id)))
        return self._record_failed(
            lease.cluster_id,
            backup_id,
            "LEASE_EXPIRED",
            f"the executor running this backup stopped renewing its lease for "
            f"{self.settings.backup_lease_seconds:.0f} s (it died or lost the database)",
            "executor lease",
        )

    def reap_once(self) -> int:
        """Fail the backups whose executor died (``LEASE_EXPIRED``) and release their leases."""
        return self.runner.reap_once()

    async def reap(self, stop: asyncio.Event) -> None:
        clock = self.runtime.clock
        reached = (
            (lambda now: clock.report_reached("backup-executor", now)) if clock.simulated else None
        )
        await asyncio.gather(self.runner.reap(stop, reached), self.verifies.reap(stop))

    # -- VerifyBackup ----------------------------------------------------------------------------

    def verify(
        self, command: VerifyBackup, principal: Principal, context: CommandContext
    ) -> Handled:
        cluster = load_cluster(context.store, principal, Action.VIEW_BACKUPS, command.cluster_id)
        # The lease first (it holds the backup: retention deletes no chain a lease names), then
        # the status: retention records an expiry before it reads the leases, so either this
        # sees the backup expired or retention sees it held.
        stream_id = backup_aggregate_id(cluster.cluster_id, command.backup_id)
        job_id = uuid5(stream_id, str(command.command_id))
        handle = self.verifies.take(
            job_id, cluster.cluster_id, jobs.holding([str(command.backup_id)])
        )
        if handle is None:
            raise Conflict(f"verify {command.command_id} is being run by another executor")
        try:
            backup = load_backup(context.store, cluster.cluster_id, command.backup_id)
            if backup is None:
                raise NotFound(
                    f"backup {command.backup_id} of cluster {cluster.cluster_id} is not known"
                )
            if backup.status != BackupStatus.COMPLETE.value:
                raise Conflict(
                    f"backup {command.backup_id} is {backup.status}; only a COMPLETE backup can "
                    "be verified"
                )
        except (NotFound, Conflict):
            self.verifies.leases.release(job_id, handle.fence)
            raise

        async def start() -> None:
            self.verifies.start(
                handle,
                lambda held: asyncio.to_thread(
                    self._verify, cluster, backup, command, principal, held
                ),
            )

        return Handled([], cluster.cluster_id, follow_up=start)

    def _verify(
        self,
        cluster: Cluster,
        backup: Backup,
        command: VerifyBackup,
        principal: Principal,
        running: JobHandle,
    ) -> None:
        missing: list[str] = []
        corrupt: list[str] = []
        checked = 0
        try:
            store = self.store_for(cluster, backup.region, backup)
            report = verify_stored(
                store, backup.cluster_id, str(backup.chain_id), str(backup.backup_id)
            )
            missing, corrupt, checked = report.missing, report.corrupt, report.chunks_checked
        except Exception as exc:
            missing = [f"manifest or chain unreadable: {exc}"]
        if not running.holds():  # a stale verify records nothing: it is simply sent again
            return
        latest = self.runtime.store.get_or_none(backup.id, Backup)
        assert latest is not None
        latest.record_verification(
            ok=not missing and not corrupt,
            chunks_checked=checked,
            missing_chunks=missing,
            corrupt_chunks=corrupt,
            command_id=command.command_id,
            at=self.runtime.clock.now(),
            by=principal.name,
        )
        self.runtime.store.save_all(latest)

    async def stop(self) -> None:
        await asyncio.gather(self.runner.stop(), self.verifies.stop())
