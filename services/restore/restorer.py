"""The restore service: restore jobs from StartRestore to SUCCEEDED or FAILED.

StartRestore is checked against the restore rules (``shared/domain/restore_rules.py``), the
backup's manifests and the destination (a name that already exists, a table already there)
before anything is recorded; a refusal is the command's outcome, and no data has moved. When
accepted, the job's lease is taken (``shared/jobs.py``) *before* ``RestoreRequested``
(PREPARING) is saved with the command's outcome; then a worker thread runs the restore plan
(``shared/dataplane/restore_plan.py``): ``RestoreRunning``, ``RestoreProgressed`` at most once
per percent, then ``RestoreSucceeded`` or ``RestoreFailed`` (code, message, step, and what the
destination holds). The job runs through the one runner of leased jobs
(``shared/job_runner.py``): its lease is renewed every third of ``restore_lease_seconds``;
every instance reaps expired leases: the job is failed with ``LEASE_EXPIRED`` and its
temporary databases are dropped; a worker that lost its lease stops, and the job ends
``LEASE_LOST`` if nobody recorded its end. Instances share jobs through their consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import psycopg

from managed_backups.contracts.commands import StartRestore
from managed_backups.contracts.enums import RestoreType
from managed_backups.services.restore.fair import FairSlots
from managed_backups.services.runtime import Runtime
from managed_backups.shared import jobs
from managed_backups.shared.cluster_connection import cluster_connection
from managed_backups.shared.commands import CommandContext, Handled
from managed_backups.shared.dataplane.engine import BackupError
from managed_backups.shared.dataplane.keys import KeyUnavailable
from managed_backups.shared.dataplane.manifest import Manifest, load_chain, read_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_plan import (
    NOT_DROPPED,
    ClusterAccess,
    DropReport,
    PlanError,
    RestorePlan,
    TableRef,
    check_destination,
    drop_temporary_databases,
    execute_plan,
    missing_objects,
    plan_bytes,
    table_restore_objects,
)
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import Conflict, NotFound, Refused
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.domain.restore import Restore, load_job, load_restore
from managed_backups.shared.domain.restore_rules import (
    backup_is_restorable,
    backup_not_into_an_older_major,
    check_restore_request,
    latest_restorable_backup,
    no_other_restore_while_a_cluster_restore_runs,
    objects_match_the_restore_type,
    restore_jobs_within_bounds,
    table_restore_not_into_a_template_or_postgres,
)
from managed_backups.shared.encryption import (
    ClusterEncryption,
    encrypted_chains,
    platform_keyring,
)
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.job_runner import JobHandle, JobRunner, record_job
from managed_backups.shared.region_stores import RegionStores
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.security import Principal
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels

log = logging.getLogger(__name__)
JOB_KIND = "restore"


def cluster_access(
    cluster: Cluster, secrets: ConnectionSecrets, settings: Settings
) -> ClusterAccess:
    """How the restore service reaches a cluster: as the executor does
    (``shared/cluster_connection.py``), its allow-listed ``connection_ref`` and its own secret,
    libpq's own lookups closed. A reference or secret that cannot be used is a refusal."""
    try:
        return cluster_connection(cluster, secrets, settings).restore_access()
    except BackupError as exc:
        raise Refused(f"cluster {cluster.cluster_id}: {exc.message}", 409) from None


@dataclass
class Progress:
    """How far a running restore is (reported by the job runner's heartbeat)."""

    total: int | None = None
    """Set once the job is recorded running."""
    bytes_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        """Progress from the restore's worker threads (several tables copy at once)."""
        with self.lock:
            self.bytes_done += n


@dataclass(frozen=True)
class Job:
    restore: Restore
    plan: RestorePlan
    chain: Sequence[Manifest]
    store: ObjectStore
    access: ClusterAccess
    organization: str


def is_template(access: ClusterAccess, database: str) -> bool:
    """Whether ``database`` is a template on the destination (``datistemplate``)."""
    with access.connect() as conn:
        row = conn.execute(
            "SELECT datistemplate FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    return bool(row and row[0])


def destination_state(plan: RestorePlan | None, target: str | None, cleanup: str) -> str:
    """What a failed job left on the destination; ``cleanup`` says what became of its
    temporary databases, as checked (:func:`cleanup_state`)."""
    if plan is not None and plan.kind == "CLUSTER":
        return (
            "unchanged: every existing database kept its name and data (the swap is one "
            f"transaction that did not commit); {cleanup}"
        )
    if plan is not None and plan.into_existing:
        return (
            f"unchanged: the restore's transaction in database {target} was rolled back; "
            f"nothing of the backup was written; {cleanup}"
        )
    return f"unchanged: database {target} was not created; {cleanup}"


def cleanup_state(report: DropReport | None, error: str | None = None) -> str:
    """The job's temporary databases as :func:`drop_temporary_databases` left them: said
    dropped only when the catalog no longer lists them."""
    if report is None:
        return (
            f"whether the restore's temporary databases are dropped could not be checked"
            f" ({error}); the restore service tries again"
        )
    if not report.left:
        return "the restore's temporary databases were dropped"
    names = ", ".join(f"{name} ({why})" for name, why in report.left)
    return f"temporary databases not dropped yet: {names}; the restore service tries again"


class RestoreService:
    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.name = name
        # A freed slot goes to the organization with the fewest jobs running (fair.py).
        self.slots = FairSlots(self.settings.max_concurrent_restores)
        self.stores = RegionStores(runtime.settings)
        # Restores run through the one runner of leased jobs (lease, heartbeat, fence, reaper).
        self.runner = JobRunner(
            jobs.JobLeases(runtime.db, JOB_KIND),
            name,
            self.settings.restore_lease_seconds,
            runtime.clock.now,
            fail_expired=self._fail_expired,
            record_lost=self._record_lost,
            cleanup=self._cleanup,
        )
        self.leases = self.runner.leases
        self.secrets = ConnectionSecrets(
            runtime.db, self.settings.secrets_path, platform_keyring(self.settings)
        )
        self.encryption = ClusterEncryption(self.settings, runtime.store)

    def store_for(self, source: Cluster, region: str, *backups: Backup | None) -> ObjectStore:
        """The region's store, sealed for the source cluster (encryption at rest); the chains
        of ``backups`` recorded as encrypted are never read as unencrypted."""
        return self.encryption.seal(
            self.stores.for_region(region), source, encrypted_chains(*backups)
        )

    # -- StartRestore ----------------------------------------------------------------------------

    def start_restore(
        self, command: StartRestore, principal: Principal, context: CommandContext
    ) -> Handled:
        store = context.store
        now = context.clock.now()
        source, destination = check_restore_request(
            store,
            principal,
            command.destination_cluster_id,
            command.source_cluster_id,
            command.restore_opts.skip_localities_check,
        )
        opts = command.restore_opts.model_dump()
        if load_restore(store, destination.cluster_id, command.restore_id) is not None:
            return Handled([], destination.cluster_id)  # a repeated StartRestore starts nothing
        job_id = Restore.create_id(destination.cluster_id, command.restore_id)
        objects = [o.model_dump(by_alias=True, exclude_none=True) for o in command.objects]
        objects_match_the_restore_type(command.restore_type, objects, opts)
        no_other_restore_while_a_cluster_restore_runs(
            command.restore_type,
            destination.cluster_id,
            [
                (job.job_id, bool(job.detail.get(jobs.EXCLUSIVE)))
                for job in jobs.on_cluster(self.runtime.db, destination.cluster_id)
                if job.kind == JOB_KIND
            ],
        )
        cluster_kind = command.restore_type is RestoreType.CLUSTER
        backup_id = command.backup_id or latest_restorable_backup(
            store,
            source.cluster_id,
            now,
            ReadModels(self.runtime.db).completed_backups(source.cluster_id),
        )
        if backup_id is None:
            raise NotFound(f"cluster {source.cluster_id} has no restorable backup")
        backup = load_backup(store, source.cluster_id, backup_id)
        full = (
            load_backup(store, source.cluster_id, backup.chain_id) if backup is not None else None
        )
        backup = backup_is_restorable(backup, full, source.cluster_id, backup_id, now)
        objects_store = self.store_for(source, backup.region, backup, full)
        try:
            head = read_manifest(
                objects_store, source.cluster_id, str(backup.chain_id), str(backup.backup_id)
            )
            chain = load_chain(objects_store, head)
        except KeyUnavailable as exc:
            # Before anything is recorded or touched: the destination stays as it is.
            raise Refused(f"backup {backup_id} cannot be decrypted: {exc}", 409) from None
        except Exception as exc:
            raise Conflict(f"backup {backup_id} cannot be read from its store: {exc}") from exc
        database = "" if cluster_kind else objects[0]["database"]
        named = tuple(
            TableRef(o.get("schema", "public"), o["table"]) for o in objects if "table" in o
        )
        tables = tuple(t for t in named if chain[-1].table(database, t.schema, t.name))
        access = cluster_access(destination, self.secrets, self.settings)
        try:
            destination_version = access.server_version_num()
        except PlanError as exc:
            raise Refused(exc.message, 503 if exc.code == "CONNECTION_FAILED" else 409) from None
        backup_not_into_an_older_major(
            chain[-1].server_version_num, destination_version, destination.cluster_id
        )
        views: tuple[TableRef, ...] = ()
        sequences: tuple[TableRef, ...] = ()
        missing = [] if cluster_kind else missing_objects(chain[-1], database)
        if not missing and named:
            # Partitioned tables (no rows of their own), their partitions, views, sequences.
            found = table_restore_objects(objects_store, chain[-1], database, named, access)
            tables, views, sequences = found.tables, found.views, found.sequences
            missing = [f"table {database}.{t}" for t in found.missing]
        if missing:
            raise NotFound(f"not in backup {backup_id}: {', '.join(missing)}")
        into = command.restore_opts.into_db
        plan = RestorePlan(
            kind=command.restore_type.value,
            source_database=database,
            target_database=into or command.restore_opts.new_db_name or database,
            job_id=job_id,
            tables=tables,
            views=views,
            sequences=sequences,
            into_existing=into is not None,
            skip_missing_foreign_keys=command.restore_opts.skip_missing_foreign_keys,
            skip_missing_sequences=command.restore_opts.skip_missing_sequences,
            skip_missing_views=command.restore_opts.skip_missing_views,
        )
        try:
            if command.restore_type is RestoreType.TABLE:
                table_restore_not_into_a_template_or_postgres(
                    principal,
                    destination,
                    plan.target_database,
                    plan.into_existing and is_template(access, plan.target_database),
                )
            check_destination(access, plan)
        except PlanError as exc:
            raise Refused(exc.message, 503 if exc.code == "CONNECTION_FAILED" else 409) from None
        lease = self.runner.until()
        # The lease first: a job recorded without a lease could never be reaped.
        # It names every backup of the chain the restore reads: retention deletes none of them
        # while the lease is held (the job re-checks their expiry once it is recorded).
        handle = self.runner.take(
            job_id,
            destination.cluster_id,
            {
                "target_database": plan.target_database,
                jobs.ORGANIZATION: destination.organization,
                jobs.EXCLUSIVE: cluster_kind,
                **jobs.holding([m.backup_id for m in chain], source.cluster_id),
            },
        )
        if handle is None:
            raise Conflict(f"restore {command.restore_id} is being started by another worker")
        try:
            self._within_bounds(store, destination)
        except Refused:
            self.leases.release(job_id, handle.fence)  # counted while taken; never recorded
            raise
        restore = Restore(
            restore_id=command.restore_id,
            cluster_id=destination.cluster_id,
            restore_type=command.restore_type.value,
            source_cluster_id=source.cluster_id,
            source_cluster_name=source.name,
            destination_cluster_name=destination.name,
            backup_id=backup.backup_id,
            chain_id=backup.chain_id,
            backup_end_time=chain[-1].data_from,
            objects=objects,
            restore_opts=command.restore_opts.model_dump(),
            target_database=None if cluster_kind else plan.target_database,
            worker=self.name,
            lease_until=lease,
            command_id=command.command_id,
            at=now,
            by=principal.name,
        )
        job = Job(restore, plan, chain, objects_store, access, destination.organization)

        async def start() -> None:
            progress = Progress()
            self.runner.start(
                handle,
                lambda held: self._run(job, held, progress),
                progress=lambda: self._progress(handle, progress),
                progress_seconds=max(0.05, min(1.0, self.settings.restore_lease_seconds / 3)),
            )

        return Handled([restore], destination.cluster_id, follow_up=start)

    def _within_bounds(self, store: EventStore, destination: Cluster) -> None:
        """Counted with this job's lease already taken: two jobs started at once on two
        instances both see each other (both may be refused, never both admitted past the
        bound)."""
        leases = jobs.of_kind(self.runtime.db, JOB_KIND)
        organizations: dict[str, str | None] = {destination.cluster_id: destination.organization}

        def organization(lease: jobs.Lease) -> str | None:
            known = lease.detail.get(jobs.ORGANIZATION)
            if known is not None:
                return str(known)
            if lease.cluster_id not in organizations:  # a lease taken before it was recorded
                cluster = store.get_or_none(cluster_aggregate_id(lease.cluster_id), Cluster)
                organizations[lease.cluster_id] = cluster.organization if cluster else None
            return organizations[lease.cluster_id]

        restore_jobs_within_bounds(
            destination,
            sum(1 for lease in leases if lease.cluster_id == destination.cluster_id),
            sum(1 for lease in leases if organization(lease) == destination.organization),
            self.settings.max_restores_per_cluster,
            self.settings.max_restores_per_organization,
        )

    # -- the job ---------------------------------------------------------------------------------

    def _record(
        self,
        job_id: UUID,
        change: Callable[[Restore], object],
        running: JobHandle | None = None,
    ) -> bool:
        """Record ``change``; by a worker (``running``) only while its fencing token is current
        (a worker whose lease was reaped or taken anew records nothing here; the runner then
        records ``LEASE_LOST`` if nobody recorded the job's end: :meth:`_record_lost`)."""
        return record_job(self.runtime.store, load_job(self.runtime.store, job_id), change, running)

    def _chain_still_restorable(self, job: Job) -> None:
        """Once the job and its lease are recorded, the backup must still be restorable: retention
        records an expiry before it reads the leases, so an expiry it recorded after the command's
        checks is seen here, and the job fails before reading anything."""
        restore = job.restore
        store = self.runtime.store
        backup = load_backup(store, restore.source_cluster_id, restore.backup_id)
        full = load_backup(store, restore.source_cluster_id, restore.chain_id)
        try:
            backup_is_restorable(
                backup, full, restore.source_cluster_id, restore.backup_id, self.runtime.clock.now()
            )
        except Refused as refused:
            raise PlanError("BACKUP_NOT_RESTORABLE", refused.reason, "check the backup") from None

    def _fail(
        self,
        job_id: UUID,
        code: str,
        message: str,
        step: str,
        state: str,
        running: JobHandle | None = None,
    ) -> bool:
        now = self.runtime.clock.now()
        return self._record(
            job_id, lambda r: r.fail(code, message, step, state, now, self.name), running
        )

    def _progress(self, running: JobHandle, progress: Progress) -> None:
        """Recorded by the job's worker, at most once per percent (the runner's heartbeat)."""
        total = progress.total
        if total is None:  # not running yet
            return
        done = min(progress.bytes_done, total)
        now = self.runtime.clock.now()
        self._record(running.job_id, lambda r: r.progress(done, now, self.name), running)

    def _drop_temporary(self, job_id: UUID, access: ClusterAccess) -> tuple[str, bool]:
        """The cleanup step (after the plan, whatever its outcome; the reaper's too): the
        job's temporary databases dropped, whatever they hold. Returns what became of them,
        as checked, and whether none is left."""
        try:
            report = drop_temporary_databases(access, job_id)
        except PlanError as exc:  # the destination cannot be reached
            return cleanup_state(None, exc.message), False
        except psycopg.Error as exc:
            return cleanup_state(None, str(exc).strip().splitlines()[0]), False
        if report.left:
            log.warning("restore %s: %s", job_id, cleanup_state(report))
        return cleanup_state(report), not report.left

    @staticmethod
    def _still_holds(running: JobHandle) -> None:
        """Fencing at the restore's commit points (``execute_plan``'s ``before_commit``): a
        worker whose lease was reaped or taken anew makes nothing visible on the destination."""
        try:
            running.check()
        except jobs.LeaseLost:
            raise PlanError("LEASE_LOST", "the restore worker lost its lease", "commit") from None

    async def _run(self, job: Job, running: JobHandle, progress: Progress) -> None:
        """The restore's work (its lease renewed and its progress recorded by the runner
        meanwhile), its temporary databases dropped, and its end recorded."""
        job_id = job.restore.id  # the stream id: also the lease and the temporary databases
        clock = self.runtime.clock
        cleaned = True
        try:
            async with self.slots.slot(job.organization):
                await asyncio.to_thread(self._chain_still_restorable, job)
                total = plan_bytes(job.chain, job.plan)
                await asyncio.to_thread(
                    self._record,
                    job_id,
                    lambda r: r.start_running(total, clock.now(), self.name),
                    running,
                )
                progress.total = total
                outcome = await asyncio.to_thread(
                    execute_plan,
                    job.store,
                    job.chain,
                    job.plan,
                    job.access,
                    progress.add,
                    running.cancel,
                    lambda: self._still_holds(running),
                )
                cleanup, cleaned = await asyncio.to_thread(self._drop_temporary, job_id, job.access)
                # What execute_plan could not drop is said again only if it is still there.
                restored = [r for r in outcome.restored if not r.startswith(NOT_DROPPED)]
                if not cleaned:
                    restored.append(cleanup)
                await asyncio.to_thread(
                    self._record,
                    job_id,
                    lambda r: r.succeed(
                        progress.bytes_done,
                        restored,
                        outcome.left_out,
                        clock.now(),
                        self.name,
                    ),
                    running,
                )
        except Exception as error:  # PlanError, or a bug: never leave a job running
            if isinstance(error, PlanError):
                code, message, step = error.code, error.message, error.step
            else:
                log.exception("restore %s failed unexpectedly", job.restore.restore_id)
                code, message = "INTERNAL", f"{type(error).__name__}: {error}"
                step = "restore service"
            cleanup, cleaned = await asyncio.to_thread(self._drop_temporary, job_id, job.access)
            state = destination_state(job.plan, job.plan.target_database, cleanup)
            await asyncio.to_thread(self._fail, job_id, code, message, step, state, running)
        finally:
            if not cleaned:  # the reaper drops what is left (it holds no backup, excludes nothing)
                running.leave_to_reaper({"target_database": job.plan.target_database})

    # -- leases ----------------------------------------------------------------------------------

    def _lease_access(self, cluster_id: str) -> ClusterAccess | str:
        """How to reach a job's destination, or why it cannot be reached."""
        cluster = self.runtime.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
        if cluster is None:
            return "the destination cluster is not registered"
        try:
            return cluster_access(cluster, self.secrets, self.settings)
        except Refused as refused:  # e.g. its connection is no longer allowed
            return refused.reason

    def _fail_unattended(
        self, job_id: UUID, cluster_id: str, target: object, code: str, message: str
    ) -> bool:
        """A job no worker ends: its temporary databases first (nothing else drops them), then
        its failure, saying what became of them; nothing if its end is recorded already."""
        access = self._lease_access(cluster_id)
        cleanup = (
            cleanup_state(None, access)
            if isinstance(access, str)
            else self._drop_temporary(job_id, access)[0]
        )
        state = (
            f"unchanged: database {target} was not created, or the restore's transaction into "
            f"it was rolled back when its worker's connection closed; {cleanup}"
        )
        return self._fail(job_id, code, message, "restore lease", state)

    def _fail_expired(self, lease: jobs.Lease) -> bool:
        """The job of an expired lease (its worker died): FAILED ``LEASE_EXPIRED``."""
        return self._fail_unattended(
            lease.job_id,
            lease.cluster_id,
            lease.detail.get("target_database"),
            "LEASE_EXPIRED",
            f"the restore worker {lease.owner} stopped renewing its lease for "
            f"{self.settings.restore_lease_seconds:.0f} s (it died or lost the database)",
        )

    def _record_lost(self, running: JobHandle) -> bool:
        """The worker lost its lease: FAILED ``LEASE_LOST`` unless the job's end is recorded
        (by the reaper, as a rule). Its lease may have been released as an orphan (it expired
        before the start was saved), and then no reaper records the end."""
        return self._fail_unattended(
            running.job_id,
            running.cluster_id,
            running.detail.get("target_database"),
            "LEASE_LOST",
            f"the restore worker {self.name} lost the lease of this restore and stopped",
        )

    def _cleanup(self, lease: jobs.Lease) -> None:
        """Checks that nothing of the job is left (dropping what is); raises while something
        is, so the lease stays and the next pass tries again."""
        access = self._lease_access(lease.cluster_id)
        if isinstance(access, str):  # nothing can be dropped there, nor ever checked
            return
        cleanup, cleaned = self._drop_temporary(lease.job_id, access)
        if not cleaned:
            raise RuntimeError(f"restore {lease.job_id}: {cleanup}")

    def reap_once(self) -> int:
        return self.runner.reap_once()

    async def reap(self, stop: asyncio.Event) -> None:
        await self.runner.reap(stop)

    async def stop(self) -> None:
        await self.runner.stop()
