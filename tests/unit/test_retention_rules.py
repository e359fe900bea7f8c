"""The retention rules (expiry of a chain, the newest restorable chain of a live cluster, the
deleted-cluster rule, what is listed) against an independent statement of them, and the SQL form
of the listing rule against its Python form."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from managed_backups.shared.domain.backup_lifecycle import (
    backup_expires_at,
    chain_expires_at,
    deleted_cluster_until,
    is_listed,
    kept_past_retention,
    listed_backup_sql,
    newest_restorable_chain,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class B:
    backup_id: str
    chain_id: str
    full: bool
    status: str
    data_from: datetime
    retention_days: int

    @property
    def expires_at(self) -> datetime | None:
        if self.status != "COMPLETE":
            return None
        return self.data_from + timedelta(days=self.retention_days)


def history(rng: random.Random, days: int) -> list[B]:
    """A cluster's backups: a full every 1-4 days (some fail or still run), incrementals
    between them, retention 2, 7 or 30 days changing now and then."""
    out: list[B] = []
    t = T0
    retention = rng.choice((2, 7, 30))
    n = 0
    chain: str | None = None
    while t < T0 + timedelta(days=days):
        n += 1
        if rng.random() < 0.05:
            retention = rng.choice((2, 7, 30))
        if chain is None or rng.random() < 0.3:
            status = rng.choices(["COMPLETE", "FAILED", "IN_PROGRESS"], [8, 2, 1])[0]
            out.append(B(f"b{n:04d}", f"b{n:04d}", True, status, t, retention))
            if status == "COMPLETE":
                chain = f"b{n:04d}"
        else:
            status = rng.choices(["COMPLETE", "FAILED"], [9, 1])[0]
            out.append(B(f"b{n:04d}", chain, False, status, t, retention))
        t += timedelta(hours=rng.choice((6, 12, 24)))
    return out


def stated_listed(
    backups: list[B], now: datetime, deleted: tuple[datetime, int] | None
) -> set[str]:
    """The rules as the product states them, written without the code under test."""
    fulls = {b.backup_id: b for b in backups if b.full}
    complete_fulls = [b for b in fulls.values() if b.status == "COMPLETE"]
    listed: set[str] = set()
    if deleted is not None and now >= deleted[0] + timedelta(days=deleted[1]):
        return listed  # kept for the configured retention after deletion, then deleted
    for b in backups:
        if b.status not in ("COMPLETE", "IN_PROGRESS"):
            continue
        full = fulls[b.chain_id]
        if full.status == "IN_PROGRESS" and b is full:
            listed.add(b.backup_id)
            continue
        if full.status != "COMPLETE":
            continue
        within_retention = now < full.data_from + timedelta(days=full.retention_days)
        newer_full_complete = any(f.data_from > full.data_from for f in complete_fulls)
        if within_retention or not newer_full_complete:
            listed.add(b.backup_id)
    return listed


def listed_by_rule(
    backups: list[B], now: datetime, deleted: tuple[datetime, int] | None
) -> set[str]:
    fulls = {b.backup_id: b for b in backups if b.full}
    kept = newest_restorable_chain((f.backup_id, f.status, f.data_from) for f in fulls.values())
    until = deleted_cluster_until(*deleted) if deleted else None
    return {
        b.backup_id
        for b in backups
        if is_listed(
            b.status,
            b.expires_at,
            b.full,
            fulls[b.chain_id].status,
            fulls[b.chain_id].expires_at,
            now,
            kept=b.chain_id == kept,
            deleted_until=until,
        )
    }


def listed_by_sql(
    backups: list[B], now: datetime, deleted: tuple[datetime, int] | None
) -> set[str]:
    fulls = [b for b in backups if b.full]
    kept = newest_restorable_chain((f.backup_id, f.status, f.data_from) for f in fulls)
    until = deleted_cluster_until(*deleted) if deleted else None
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE backups (backup_id TEXT, cluster_id TEXT, status TEXT, backup_type TEXT, "
        "chain_id TEXT, expires_at TEXT)"
    )
    db.execute("CREATE TABLE ret (cluster_id TEXT, kept_chain_id TEXT, deleted_until TEXT)")
    iso = lambda t: None if t is None else t.isoformat()  # noqa: E731
    db.executemany(
        "INSERT INTO backups VALUES (?, 'c', ?, ?, ?, ?)",
        [
            (
                b.backup_id,
                b.status,
                "FULL" if b.full else "INCREMENTAL",
                b.chain_id,
                iso(b.expires_at),
            )
            for b in backups
        ],
    )
    db.execute("INSERT INTO ret VALUES ('c', ?, ?)", (kept, iso(until)))
    rows = db.execute(
        f"SELECT b.backup_id FROM backups b WHERE {listed_backup_sql('backups', 'b', 'ret')}",
        (iso(now), iso(now)),
    ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("seed", range(20))
def test_listed_backups_match_the_stated_rules_day_by_day(seed: int) -> None:
    rng = random.Random(seed)
    backups = history(rng, 60)
    deleted = (T0 + timedelta(days=45), rng.choice((2, 7, 30))) if seed % 3 == 0 else None
    for day in range(0, 80):
        now = T0 + timedelta(days=day, hours=rng.random() * 24)
        stated = stated_listed(backups, now, deleted)
        assert listed_by_rule(backups, now, deleted) == stated, (seed, day)
        assert listed_by_sql(backups, now, deleted) == stated, (seed, day)


def test_a_full_expires_with_the_retention_it_was_taken_with_and_its_incrementals_with_it() -> None:
    full_expires = backup_expires_at(T0, 7)
    assert chain_expires_at(full_expires, kept=False, deleted_until=None) == T0 + timedelta(days=7)
    incremental_own = backup_expires_at(T0 + timedelta(days=6), 30)
    at = T0 + timedelta(days=8)
    assert not is_listed("COMPLETE", incremental_own, False, "COMPLETE", full_expires, at)


def test_the_newest_restorable_chain_of_a_live_cluster_is_kept_and_says_so() -> None:
    old = T0 - timedelta(days=40)
    fulls = [("a", "COMPLETE", old), ("b", "FAILED", T0), ("c", "IN_PROGRESS", None)]
    assert newest_restorable_chain(fulls) == "a"
    expires = backup_expires_at(old, 30)
    assert chain_expires_at(expires, kept=True, deleted_until=None) is None
    assert is_listed("COMPLETE", expires, True, None, None, T0, kept=True)
    assert kept_past_retention(expires, kept=True, now=T0)
    assert not kept_past_retention(expires, kept=True, now=old)


def test_a_deleted_clusters_backups_are_kept_for_its_retention_then_deleted() -> None:
    until = deleted_cluster_until(T0, 7)
    assert chain_expires_at(T0 - timedelta(days=1), kept=True, deleted_until=until) == until
    assert chain_expires_at(
        T0 + timedelta(days=3), kept=False, deleted_until=until
    ) == T0 + timedelta(days=3)
    assert chain_expires_at(T0 + timedelta(days=30), kept=False, deleted_until=until) == until
