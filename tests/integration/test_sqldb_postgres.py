"""The SQL helper on a real PostgreSQL: a literal ``?`` or ``%`` is data, not a placeholder."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from managed_backups.shared import jobs
from managed_backups.shared.sqldb import SqlDatabase

pytestmark = pytest.mark.integration


def test_literal_question_marks_and_percents(postgres_store_url: str) -> None:
    db = SqlDatabase(postgres_store_url)
    try:
        rows = db.query("SELECT '?', '100%', ? || '?'", ("x",))
        assert [tuple(r) for r in rows] == [("?", "100%", "x?")]
    finally:
        db.close()


def test_job_lease_fencing_on_postgresql(postgres_store_url: str) -> None:
    """The lease table gains its token column on PostgreSQL too (a table of the version before
    fencing included), and a stale token is refused."""
    db = SqlDatabase(postgres_store_url)
    try:
        db.execute(f"DROP TABLE IF EXISTS {jobs.TABLE}")
        db.execute(
            f"CREATE TABLE {jobs.TABLE} (kind TEXT NOT NULL, job_id TEXT NOT NULL, "
            "cluster_id TEXT NOT NULL, owner TEXT NOT NULL, lease_until TEXT NOT NULL, "
            "detail TEXT NOT NULL, PRIMARY KEY (kind, job_id))"
        )
        leases = jobs.JobLeases(db, "fencing-test")
        job, now = uuid4(), datetime.now(UTC)
        first = leases.take_fenced(job, "c1", "a", jobs.lease_until(now, 60))
        assert first is not None and leases.renew(job, jobs.lease_until(now, 90), first)
        leases.release(job)
        second = leases.take_fenced(job, "c1", "b", jobs.lease_until(now, 60))
        assert second is not None
        assert not leases.renew(job, jobs.lease_until(now, 90), first)
        with pytest.raises(jobs.LeaseLost):
            leases.check(first)
        leases.check(second)
        leases.release(job, second)
    finally:
        db.close()
