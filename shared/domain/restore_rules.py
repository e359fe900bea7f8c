"""The restore rules, one named function each, checked when StartRestore is handled: a refusal
is a :class:`~.errors.Refused` (its 4xx code and a reason naming what is at fault), recorded
as the command's outcome before any data moves.

The order is the order a caller fixes things in: who may do it and which clusters
(:func:`check_restore_request`, always first), then, in the restore service, which objects
(:func:`objects_match_the_restore_type`, each named once), whether a CLUSTER restore runs
there, which backup, the destination's real server version, where the tables go
(:func:`table_restore_not_into_a_template_or_postgres`), what the destination already holds,
and last how many jobs are queued (:func:`restore_jobs_within_bounds`, counted once the job's
lease is taken). Because the access rule comes first, a caller without the restore right on
both clusters is told the cluster is not registered, as for an id that names nothing, before
any other rule could tell it the cluster exists (a 400 for a duplicate, a 403 for
``postgres``, a 429 for a full queue).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from managed_backups.contracts.enums import BackupStatus, RestoreType, Role, Tier
from managed_backups.shared.access import ClusterRef, registered_cluster, require_on_cluster
from managed_backups.shared.domain.backup import Backup, load_backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import (
    BadValue,
    Conflict,
    Forbidden,
    NotFound,
    Refused,
    TooMany,
)
from managed_backups.shared.eventstore import EventStore, event_topics
from managed_backups.shared.log_follower import LogReader
from managed_backups.shared.security import Action, Principal


def check_restore_request(
    store: EventStore,
    principal: Principal,
    destination_id: str,
    source_id: str | None,
    skip_localities_check: bool,
) -> tuple[Cluster, Cluster]:
    """Who may restore, and between which clusters: (source, destination), or the first rule
    that refuses. The backup and the objects are checked next, by the restore service."""
    destination = registered_cluster(store, destination_id)
    source = (
        registered_cluster(store, source_id)
        if source_id and source_id != destination_id
        else destination
    )
    caller_may_restore_from_source_into_destination(
        principal, source_id or destination_id, source, destination_id, destination
    )
    assert source is not None and destination is not None
    destination_is_live(destination)
    deleted_source_only_for_an_administrator(principal, source)
    cross_cluster_only_between_advanced_clusters_of_one_organization(source, destination)
    multi_region_backup_not_into_single_region_cluster(source, destination, skip_localities_check)
    destination_not_on_an_older_major_version(source, destination)
    return source, destination


def caller_may_restore_from_source_into_destination(
    principal: Principal,
    source_id: str,
    source: Cluster | None,
    destination_id: str,
    destination: Cluster | None,
) -> None:
    """The restore right is needed on both the source and the destination. The one access rule
    (:func:`~managed_backups.shared.access.require_on_cluster`) decides for each: a cluster the
    caller may not see is answered as one that is not registered (404), one it may see without
    the restore right is 403."""
    for cluster_id, cluster in ((destination_id, destination), (source_id, source)):
        ref = ClusterRef.of(cluster) if cluster is not None else None
        require_on_cluster(principal, Action.RESTORE, cluster_id, ref, live=False)


def deleted_source_only_for_an_administrator(principal: Principal, source: Cluster) -> None:
    if source.deleted and not principal.can(Action.ADMINISTER, cluster_id="*"):
        raise Forbidden(
            f"cluster {source.cluster_id} was deleted: only an administrator may restore its "
            "backups"
        )


def destination_is_live(destination: Cluster) -> None:
    if destination.deleted:
        raise NotFound(f"destination cluster {destination.cluster_id} was deleted")


def cross_cluster_only_between_advanced_clusters_of_one_organization(
    source: Cluster, destination: Cluster
) -> None:
    """BASIC and STANDARD clusters restore into themselves only; ADVANCED clusters also into
    another ADVANCED cluster of the same organization."""
    if source.cluster_id == destination.cluster_id:
        return
    if source.organization != destination.organization:
        raise Forbidden(
            f"cluster {source.cluster_id} (organization {source.organization}) cannot be "
            f"restored into cluster {destination.cluster_id} of another organization "
            f"({destination.organization})"
        )
    not_advanced = [
        f"{c.cluster_id} is {c.tier}"
        for c in (source, destination)
        if c.tier != Tier.ADVANCED.value
    ]
    if not_advanced:
        raise Conflict(
            "restoring into another cluster needs both clusters on the ADVANCED tier ("
            + ", ".join(not_advanced)
            + "); BASIC and STANDARD clusters restore into the same cluster"
        )


def multi_region_backup_not_into_single_region_cluster(
    source: Cluster, destination: Cluster, skip_localities_check: bool
) -> None:
    if len(source.regions) <= 1 or len(destination.regions) > 1:
        return
    if skip_localities_check and destination.tier == Tier.ADVANCED.value:
        return
    hint = (
        "set skip_localities_check to restore anyway"
        if destination.tier == Tier.ADVANCED.value
        else "skip_localities_check is available on ADVANCED clusters only"
    )
    raise Conflict(
        f"the backup of multi-region cluster {source.cluster_id} ({', '.join(source.regions)}) "
        f"cannot be restored into single-region cluster {destination.cluster_id}; {hint}"
    )


def _major(version: str) -> int:
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def destination_not_on_an_older_major_version(source: Cluster, destination: Cluster) -> None:
    """By the versions the clusters were registered with (no connection needed); the
    destination's real server is checked too (:func:`backup_not_into_an_older_major`)."""
    if _major(destination.database_version) < _major(source.database_version):
        raise Conflict(
            f"destination cluster {destination.cluster_id} runs PostgreSQL "
            f"{destination.database_version}, older than the source's "
            f"{source.database_version}: upgrade the destination first"
        )


def _version_text(version_num: int) -> str:
    return f"{version_num // 10000}.{version_num % 10000}"


def backup_not_into_an_older_major(
    backup_version_num: int, destination_version_num: int, destination_id: str
) -> None:
    """A backup restores into a server of its own major version or a newer one (restore to
    upgrade), never into an older one: its schema is what ``pg_dump`` wrote for that version
    and newer ones. Checked against the server the destination really runs (its
    ``server_version_num``; the backup's is in its manifest), before any data moves."""
    if destination_version_num // 10000 < backup_version_num // 10000:
        raise Conflict(
            f"the backup was taken from PostgreSQL {_version_text(backup_version_num)} and "
            f"destination cluster {destination_id} runs PostgreSQL "
            f"{_version_text(destination_version_num)}, an older major version: a backup "
            "restores only into the same or a newer major version (upgrade the destination "
            "first)"
        )


def backup_is_restorable(
    backup: Backup | None,
    full: Backup | None,
    source_cluster_id: str,
    backup_id: Any,
    now: datetime,
) -> Backup:
    """The backup exists, belongs to the source, is COMPLETE, and so is the full backup its
    chain starts with. Expiry is what the retention service records (``BackupExpired`` turns
    both to EXPIRED before anything is deleted), not a time check here: a live cluster's newest
    restorable chain is kept, and restorable, past its retention (see ``chain_expires_at``)."""
    if backup is None or backup.cluster_id != source_cluster_id:
        raise NotFound(f"backup {backup_id} of cluster {source_cluster_id} is not known")
    if backup.status != BackupStatus.COMPLETE.value:
        raise Conflict(f"backup {backup_id} is {backup.status}; only a COMPLETE backup restores")
    for b, what in ((backup, "backup"), (full, "its full backup")):
        if b is not None and b.status == BackupStatus.EXPIRED.value:
            raise Conflict(f"backup {backup_id} expired ({what} expired at {b.expired_at})")
        if b is None or b.status != BackupStatus.COMPLETE.value:
            raise Conflict(f"backup {backup_id}: {what} is not COMPLETE")
    return backup


def objects_match_the_restore_type(
    restore_type: RestoreType, objects: list[dict[str, Any]], opts: dict[str, Any]
) -> None:
    """CLUSTER names no objects; DATABASE names one database (no table); TABLE names tables of
    one database. ``new_db_name`` and ``into_db`` exclude each other."""
    if opts.get("new_db_name") and opts.get("into_db"):
        raise BadValue("restore_opts: new_db_name and into_db exclude each other")
    if restore_type is RestoreType.CLUSTER:
        if objects:
            raise BadValue("a CLUSTER restore names no objects: it restores every database")
        if opts.get("new_db_name") or opts.get("into_db"):
            raise BadValue("a CLUSTER restore takes neither new_db_name nor into_db")
        return
    if not objects:
        raise BadValue(f"a {restore_type.value} restore needs objects")
    if restore_type is RestoreType.DATABASE:
        if len(objects) != 1:
            raise BadValue("a DATABASE restore names exactly one database in objects")
        if objects[0].get("table") or objects[0].get("schema"):
            raise BadValue(f"objects[0] names a table ({objects[0].get('table')}): use type TABLE")
        if opts.get("into_db"):
            raise BadValue("a DATABASE restore creates its database: into_db is for TABLE")
        return
    without_table = [str(i) for i, o in enumerate(objects) if not o.get("table")]
    if without_table:
        raise BadValue(f"a TABLE restore needs a table in objects[{', '.join(without_table)}]")
    databases = sorted({o["database"] for o in objects})
    if len(databases) > 1:
        raise BadValue(f"a TABLE restore takes tables of one database, not {', '.join(databases)}")
    each_object_named_once(objects)


def each_object_named_once(objects: Sequence[dict[str, Any]]) -> None:
    """A request names each table once: a table named twice (a schema left out names
    ``public``) would be restored twice, and the second copy fails after the first ran."""
    seen: dict[tuple[str, str, str], int] = {}
    for i, o in enumerate(objects):
        key = (o["database"], o.get("schema") or "public", o.get("table") or "")
        if key in seen:
            raise BadValue(
                f"objects[{i}] names {key[1]}.{key[2]} of database {key[0]} again "
                f"(objects[{seen[key]}]); name each table once"
            )
        seen[key] = i


TEMPLATE_DATABASES = ("template0", "template1")
"""Templates every cluster has. A database with ``datistemplate`` set is one too."""
MAINTENANCE_DATABASE = "postgres"


def table_restore_not_into_a_template_or_postgres(
    principal: Principal, destination: Cluster, target_database: str, target_is_template: bool
) -> None:
    """Rows restored into a template database appear in every database created from it
    afterwards: no TABLE restore writes into one. The maintenance database ``postgres`` is
    what tools and administrators connect to first: only a caller holding the Cluster Admin
    role on the destination (or a role above it: Organization Admin, the system administrator)
    restores tables into it: the role, as the rule names it, not an action that comes with it."""
    if target_is_template or target_database in TEMPLATE_DATABASES:
        raise BadValue(
            f"database {target_database} is a template: tables restored into it would be "
            "copied into every database created from it afterwards; restore into another "
            "database (into_db) or a new one (new_db_name)"
        )
    if target_database == MAINTENANCE_DATABASE and not principal.holds_role(
        Role.CLUSTER_ADMIN, destination.organization, destination.cluster_id
    ):
        raise Forbidden(
            f"only a Cluster Admin (or an Organization Admin) may restore tables into database "
            f"{MAINTENANCE_DATABASE} of cluster {destination.cluster_id}; restore into another "
            "database (into_db) or a new one (new_db_name)"
        )


def restore_jobs_within_bounds(
    destination: Cluster,
    jobs_on_cluster: int,
    jobs_in_organization: int,
    per_cluster: int,
    per_organization: int,
) -> None:
    """Queued and running restore jobs (this one included) are bounded per destination cluster
    and per organization, so one tenant cannot fill the restore service's queue."""
    if jobs_on_cluster > per_cluster:
        raise TooMany(
            f"cluster {destination.cluster_id} has {jobs_on_cluster - 1} restore jobs queued or "
            f"running, the limit per cluster (MANAGED_BACKUPS_MAX_RESTORES_PER_CLUSTER={per_cluster}); "
            "retry when one has ended"
        )
    if jobs_in_organization > per_organization:
        raise TooMany(
            # Not how many: they may be on clusters of the organization the caller cannot see.
            f"organization {destination.organization} has reached its limit of restore jobs "
            "queued or running "
            f"(MANAGED_BACKUPS_MAX_RESTORES_PER_ORGANIZATION={per_organization}); retry when "
            "one has ended"
        )


def no_other_restore_while_a_cluster_restore_runs(
    restore_type: RestoreType, destination_id: str, running: list[tuple[Any, bool]]
) -> None:
    """``running``: (job id, exclusive) of the restores holding a lease on the destination. A
    CLUSTER restore is exclusive: it starts alone and nothing starts beside it."""
    for job_id, exclusive in running:
        if exclusive:
            raise Conflict(
                f"CLUSTER restore {job_id} is running on cluster {destination_id}; no other "
                "restore starts until it ends"
            )
    if restore_type is RestoreType.CLUSTER and running:
        raise Conflict(
            f"restore {running[0][0]} is running on cluster {destination_id}; a CLUSTER restore "
            "starts only when no other restore runs there"
        )


def no_backup_while_a_cluster_restore_runs(cluster_id: str, restore_id: Any | None) -> None:
    if restore_id is not None:
        raise Conflict(
            f"CLUSTER restore {restore_id} is replacing cluster {cluster_id}'s databases; it "
            "takes no backup until the restore ends"
        )


def scheduled_backup_waits_for_a_cluster_restore(cluster_id: str, held: set[str]) -> bool:
    """The schedule's side of the same rule: a slot that falls due while a CLUSTER restore
    replaces the cluster's databases is not scheduled until the restore ends (then it is, late,
    and the schedule goes on)."""
    return cluster_id in held


CompletedBackups = tuple[int, Sequence[tuple[datetime, UUID]]]
"""A log position and the backups known to have completed up to it (as-of time, id): what the
backups view holds (:meth:`~managed_backups.shared.views.ReadModels.completed_backups`)."""


def latest_restorable_backup(
    store: EventStore, cluster_id: str, now: Any, known: CompletedBackups = (0, ())
) -> UUID | None:
    """The newest COMPLETE, unexpired backup of the cluster whose full is too.

    The candidates are the backups that completed: ``known`` up to its position (the backups
    view, so a cluster's history costs one indexed query, not a scan of every cluster's
    events), and the ``BackupCompleted`` events of the log after that position (what the views
    have not applied yet; all of the log when nothing is known). Each candidate, newest first,
    is then checked on its aggregates (:func:`backup_is_restorable`): the view only proposes."""
    position, completed = known
    topics = event_topics(Backup.BackupCompleted)
    found: list[tuple[datetime, UUID]] = list(completed)
    for page in LogReader(store, topics, 1000).pages(position):
        for n in page:
            e = store.domain_event(n)
            if isinstance(e, Backup.BackupCompleted) and e.cluster_id == cluster_id:
                found.append((e.as_of_time, e.backup_id))
    seen: set[UUID] = set()
    for _, backup_id in sorted(found, key=lambda f: f[0], reverse=True):
        if backup_id in seen:
            continue
        seen.add(backup_id)
        backup = load_backup(store, cluster_id, backup_id)
        if backup is None:
            continue
        full = load_backup(store, cluster_id, backup.chain_id)
        try:
            backup_is_restorable(backup, full, cluster_id, backup_id, now)
        except Refused:
            continue
        return backup_id
    return None
