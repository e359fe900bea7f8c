"""The restore rules (each refuses with its status and a reason naming what is at fault) and the
job leases that let a dead restore be reaped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from managed_backups.contracts.enums import RestoreType, Role
from managed_backups.services.projections.service import Projector
from managed_backups.shared import jobs
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import Refused
from managed_backups.shared.domain.restore_rules import (
    backup_not_into_an_older_major,
    caller_may_restore_from_source_into_destination,
    cross_cluster_only_between_advanced_clusters_of_one_organization,
    deleted_source_only_for_an_administrator,
    destination_not_on_an_older_major_version,
    latest_restorable_backup,
    multi_region_backup_not_into_single_region_cluster,
    no_other_restore_while_a_cluster_restore_runs,
    objects_match_the_restore_type,
)
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.security import Grant, Principal
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.factories import new_backup, new_cluster

NOW = datetime(2026, 1, 5, tzinfo=UTC)


def cluster(
    cluster_id: str,
    tier: str = "ADVANCED",
    org: str = "acme",
    regions: tuple[str, ...] = ("us-east-1", "eu-west-1"),
    version: str = "15.8",
) -> Cluster:
    return new_cluster(
        cluster_id, tier=tier, organization=org, regions=regions, version=version, at=NOW
    )


def refused(call: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


def test_cross_cluster_only_between_advanced_clusters_of_one_organization() -> None:
    rule = cross_cluster_only_between_advanced_clusters_of_one_organization
    rule(cluster("a", "BASIC"), cluster("a", "BASIC"))  # into itself: any tier
    rule(cluster("a"), cluster("b"))
    standard = refused(rule, cluster("a", "STANDARD"), cluster("b"))
    assert standard.code == 409 and "a is STANDARD" in standard.reason
    other_org = refused(rule, cluster("a"), cluster("b", org="globex"))
    assert other_org.code == 403 and "another organization" in other_org.reason


def test_localities_and_versions() -> None:
    rule = multi_region_backup_not_into_single_region_cluster
    single = cluster("s", regions=("us-east-1",))
    assert "skip_localities_check" in refused(rule, cluster("m"), single, False).reason
    rule(cluster("m"), single, True)
    basic_single = cluster("s", "STANDARD", regions=("us-east-1",))
    assert "ADVANCED clusters only" in refused(rule, cluster("m"), basic_single, True).reason
    rule(cluster("s1", regions=("x",)), single, False)  # single into single
    older = refused(
        destination_not_on_an_older_major_version, cluster("a"), cluster("b", version="14.2")
    )
    assert older.code == 409 and "14.2" in older.reason
    destination_not_on_an_older_major_version(cluster("a"), cluster("b", version="16.1"))


def test_a_backup_restores_into_the_same_or_a_newer_major_never_an_older_one() -> None:
    backup_not_into_an_older_major(140023, 140001, "same")  # another minor release
    backup_not_into_an_older_major(140023, 180006, "upgrade")  # restore to upgrade
    backup_not_into_an_older_major(130023, 140000, "upgrade")
    older = refused(backup_not_into_an_older_major, 170011, 160015, "old")
    assert older.code == 409
    assert "PostgreSQL 17.11" in older.reason and "PostgreSQL 16.15" in older.reason
    assert "destination cluster old" in older.reason and "same or a newer major" in older.reason


def test_rights_on_both_clusters_and_deleted_sources() -> None:
    rule = caller_may_restore_from_source_into_destination
    operator = Principal("op", "k", (Grant(Role.CLUSTER_OPERATOR, "cluster:b"),))
    rule(operator, "b", cluster("b"), "b", cluster("b"))
    # No right on the source: answered as for a source that is not registered (the one rule).
    denied = refused(rule, operator, "a", cluster("a"), "b", cluster("b"))
    unknown = refused(rule, operator, "a", None, "b", cluster("b"))
    assert (denied.code, denied.reason) == (unknown.code, unknown.reason)
    assert (denied.code, denied.reason) == (404, "cluster a is not registered")
    monitor_too = Principal(
        "op",
        "k",
        (Grant(Role.CLUSTER_OPERATOR, "cluster:b"), Grant(Role.CLUSTER_MONITOR, "cluster:a")),
    )
    assert refused(rule, monitor_too, "a", cluster("a"), "b", cluster("b")).code == 404
    admin = Principal("root", "k", (Grant(Role.SYSTEM_ADMIN, "*"),))
    gone = cluster("a")
    gone.delete(None, NOW, "test")
    org_admin = Principal("oa", "k", (Grant(Role.ORG_ADMIN, "org:acme"),))
    assert (
        "only an administrator"
        in refused(deleted_source_only_for_an_administrator, org_admin, gone).reason
    )
    deleted_source_only_for_an_administrator(admin, gone)


@pytest.mark.parametrize(
    ("kind", "objects", "opts", "reason"),
    [
        (RestoreType.CLUSTER, [{"database": "d"}], {}, "names no objects"),
        (RestoreType.DATABASE, [], {}, "needs objects"),
        (RestoreType.DATABASE, [{"database": "d", "table": "t"}], {}, "use type TABLE"),
        (RestoreType.DATABASE, [{"database": "d"}, {"database": "e"}], {}, "exactly one"),
        (RestoreType.TABLE, [{"database": "d"}], {}, "needs a table in objects[0]"),
        (
            RestoreType.TABLE,
            [{"database": "d", "table": "t"}, {"database": "e", "table": "t"}],
            {},
            "one database, not d, e",
        ),
        (
            RestoreType.TABLE,
            [{"database": "d", "table": "t"}],
            {"new_db_name": "x", "into_db": "y"},
            "exclude",
        ),
    ],
)
def test_type_and_objects_must_match(
    kind: RestoreType, objects: list[dict[str, str]], opts: dict[str, str], reason: str
) -> None:
    error = refused(objects_match_the_restore_type, kind, objects, opts)
    assert error.code == 400 and reason in error.reason


def test_a_cluster_restore_runs_alone() -> None:
    rule = no_other_restore_while_a_cluster_restore_runs
    rule(RestoreType.DATABASE, "c", [("j1", False)])
    assert "j1" in refused(rule, RestoreType.CLUSTER, "c", [("j1", False)]).reason
    assert "no other restore" in refused(rule, RestoreType.TABLE, "c", [("j2", True)]).reason


def test_leases_taken_before_the_job_is_recorded_are_reaped(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    leases = jobs.JobLeases(db, "restore")
    recorded, never, alive = uuid4(), uuid4(), uuid4()
    for job_id, until in ((recorded, NOW), (never, NOW), (alive, NOW + timedelta(minutes=5))):
        assert leases.take(job_id, "c", "w1", until, {jobs.EXCLUSIVE: job_id == alive})
    assert not leases.take(alive, "c", "w2", NOW)  # held by w1
    failed: list[Any] = []
    cleaned: list[Any] = []
    reaped = leases.reap(
        NOW + timedelta(seconds=1),
        fail=lambda lease: (failed.append(lease.job_id), lease.job_id == recorded)[1],
        cleanup=lambda lease: cleaned.append(lease.job_id),
    )
    assert reaped == 1 and set(failed) == set(cleaned) == {recorded, never}
    assert [lease.job_id for lease in jobs.on_cluster(db, "c")] == [alive]
    exclusive = jobs.exclusive_job(db, "c")
    assert exclusive is not None and exclusive.job_id == alive
    # A failed cleanup keeps the lease, so the next reaper retries.
    leases.renew(alive, NOW)

    def broken(lease: jobs.Lease) -> None:
        raise RuntimeError("destination unreachable")

    assert leases.reap(NOW + timedelta(seconds=1), lambda lease: True, broken) == 0
    assert [lease.job_id for lease in jobs.on_cluster(db, "c")] == [alive]
    db.close()


def _backup(cluster_id: str, day: float, chain: UUID | None = None) -> Backup:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
    kind = "FULL" if chain is None else "INCREMENTAL"
    return new_backup(cluster_id, backup_type=kind, chain_id=chain, scheduled_for=at, at=at)


def _complete(backup: Backup) -> Backup:
    assert backup.scheduled_for is not None
    at = backup.scheduled_for
    backup.complete(at, 1, 1, [], f"m/{backup.backup_id}", at + timedelta(days=7), at, "test")
    return backup


def test_latest_restorable_backup_reads_the_view_and_the_log_after_it(tmp_path: Path) -> None:
    """The candidates are the backups view up to its position plus the log after it; every
    answer equals the answer of a scan of the whole log, and each candidate is checked on its
    aggregates (a chain expired after the view's position is refused although the view still
    has it)."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    models = ReadModels(db)
    assert models.completed_backups("c") == (0, [])  # no views yet: the whole log is read
    projector = Projector(store, models)
    full = _complete(_backup("c", 0))
    first = _complete(_backup("c", 1, full.backup_id))
    failed_full = _backup("c", 2)
    failed_full.fail("X", "failed", "copy", failed_full.created_on, "test")
    other_cluster = _complete(_backup("d", 3))
    store.save_all(full, first, failed_full, other_cluster)
    projector.catch_up()
    later = _complete(_backup("c", 2.5, full.backup_id))  # after the views' position
    store.save_all(later)
    now = datetime(2026, 1, 4, tzinfo=UTC)

    def both() -> tuple[UUID | None, UUID | None]:
        known = models.completed_backups("c")
        return latest_restorable_backup(store, "c", now, known), latest_restorable_backup(
            store, "c", now
        )

    position, completed = models.completed_backups("c")
    assert position > 0 and {b for _, b in completed} == {full.backup_id, first.backup_id}
    assert both() == (later.backup_id, later.backup_id)
    projector.catch_up()
    assert both() == (later.backup_id, later.backup_id)
    for backup in (full, first, later):
        backup.expire("test", now, now, "test")
    store.save_all(full, first, later)  # the view still lists them as completed
    assert both() == (None, None)
    assert latest_restorable_backup(store, "d", now, models.completed_backups("d")) == (
        other_cluster.backup_id
    )
