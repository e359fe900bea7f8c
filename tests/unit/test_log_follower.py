"""The one log follower (``shared/log_follower.py``): batches, resume, compare-and-set, the
positions the previous release wrote, and one active instance of a role."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from eventsourcing.persistence import Notification

from managed_backups.services.projections.service import Projector
from managed_backups.services.relay.relay import Relay
from managed_backups.services.retention.retention import RetentionIndex
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.eventstore import EventStore, event_topics, open_event_store
from managed_backups.shared.jobs import Fence, JobLeases
from managed_backups.shared.log_follower import LogFollower, OneActive, PositionRow
from managed_backups.shared.sqldb import Cursor, SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.factories import new_cluster

NOW = datetime(2026, 3, 1, tzinfo=UTC)
AT = PositionRow("test_positions", "follower")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.sqlite'}"


@pytest.fixture
def store(url: str) -> Iterator[EventStore]:
    store = open_event_store(url)
    for i in range(7):
        store.save_all(new_cluster(f"c{i}", at=NOW))
    yield store
    store.close()


@pytest.fixture
def db(url: str) -> Iterator[SqlDatabase]:
    db = SqlDatabase(url)
    with db.transaction() as cursor:
        AT.create_table(cursor)
        cursor.execute("CREATE TABLE applied (position BIGINT PRIMARY KEY)")
    yield db
    db.close()


def record(cursor: Cursor, positions: list[int]) -> None:
    for position in positions:
        cursor.execute("INSERT INTO applied (position) VALUES (?)", (position,))


def position_of(row: Notification) -> int:
    return row.id


def applied(db: SqlDatabase) -> list[int]:
    return [int(r[0]) for r in db.query("SELECT position FROM applied ORDER BY position")]


def test_batches_move_the_position_with_the_consumers_rows(
    store: EventStore, db: SqlDatabase
) -> None:
    everything = store.max_position()
    follower = LogFollower(store, db, AT, batch=3)
    assert follower.follow_once(record, position_of) == 3
    assert applied(db) == [1, 2, 3] and follower.position() == 3
    follower.catch_up(record, position_of)
    assert applied(db) == list(range(1, everything + 1))
    assert follower.position() == everything
    assert follower.follow_once(record, position_of) == 0


def test_a_failed_batch_moves_nothing(store: EventStore, db: SqlDatabase) -> None:
    def broken(cursor: Cursor, positions: list[int]) -> None:
        record(cursor, positions)
        raise RuntimeError("the consumer failed mid-batch")

    follower = LogFollower(store, db, AT, batch=3)
    with pytest.raises(RuntimeError):
        follower.follow_once(broken, position_of)
    assert applied(db) == [] and follower.position() == 0


def test_a_new_follower_resumes_from_the_stored_position(
    store: EventStore, db: SqlDatabase
) -> None:
    LogFollower(store, db, AT, batch=4).follow_once(record, position_of)
    again = LogFollower(store, db, AT, batch=100)  # a restarted process
    assert again.follow_once(record, position_of) == store.max_position() - 4
    assert applied(db) == list(range(1, store.max_position() + 1))  # no replay, no gap


def test_only_the_followed_topics_are_read(store: EventStore, db: SqlDatabase) -> None:
    deleted = store.get_or_none(cluster_aggregate_id("c3"), Cluster)
    assert deleted is not None
    deleted.delete(command_id=None, at=NOW, by="test")
    last = store.save_all(deleted)
    follower = LogFollower(store, db, AT, event_topics(Cluster.ClusterDeleted))
    follower.catch_up(record, position_of)
    assert applied(db) == [last] and follower.position() == last


def test_of_two_instances_reading_one_batch_only_one_applies_it(
    store: EventStore, db: SqlDatabase
) -> None:
    """The second instance moves the position while the first decodes the same batch: the
    first's claim fails and its consumer never runs."""
    first = LogFollower(store, db, AT, batch=3)
    second = LogFollower(store, db, AT, batch=3)

    def decode_while_the_other_applies(row: Notification) -> int:
        if row.id == 1:
            assert second.follow_once(record, position_of) == 3
        return row.id

    assert first.follow_once(record, decode_while_the_other_applies) == 0
    assert applied(db) == [1, 2, 3] and first.position() == 3
    assert first.follow_once(record, position_of) == 3  # it goes on from where the other is
    assert applied(db) == [1, 2, 3, 4, 5, 6]


async def test_a_deposed_instance_never_moves_the_position_back(
    store: EventStore, db: SqlDatabase
) -> None:
    """A side-effect follower (the relay) pauses after its effect; meanwhile another instance
    publishes further. When the first resumes, its commit fails: the position stays ahead."""
    first = LogFollower(store, db, AT, batch=2)
    second = LogFollower(store, db, AT, batch=5)
    sent: list[int] = []

    async def send(rows: list[Notification]) -> None:
        sent.extend(row.id for row in rows)

    async def send_then_pause(rows: list[Notification]) -> None:
        await send(rows)
        assert await second.follow_once_then_commit(send) == 5

    assert await first.follow_once_then_commit(send_then_pause) == 0
    assert first.position() == 5
    assert await first.follow_once_then_commit(send) == 2
    assert first.position() == 7 and sent == [1, 2, 1, 2, 3, 4, 5, 6, 7]


async def test_a_failed_side_effect_commits_nothing(store: EventStore, db: SqlDatabase) -> None:
    async def unacknowledged(rows: list[Notification]) -> None:
        raise ConnectionError("the broker went away")

    follower = LogFollower(store, db, AT, batch=2)
    with pytest.raises(ConnectionError):
        await follower.follow_once_then_commit(unacknowledged)
    assert follower.position() == 0


# -- positions written by the previous release (each follower had its own code) -----------


def test_the_relays_old_position_is_adopted(store: EventStore, url: str) -> None:
    old = SqlDatabase(url)  # exactly what the previous release's relay executed
    old.execute(
        "CREATE TABLE IF NOT EXISTS mb_relay_position (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
    )
    old.execute(
        "INSERT INTO mb_relay_position (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        ("relay", 4),
    )
    relay = Relay(store, SqlDatabase(url), "127.0.0.1:1", batch_size=100)
    assert relay.position == 4
    sent: list[int] = []

    async def send(rows: list[Notification]) -> None:
        sent.extend(row.id for row in rows)

    assert asyncio.run(relay.follower.follow_once_then_commit(send)) == 3
    assert sent == [5, 6, 7] and relay.position == 7


def test_the_views_old_position_is_adopted(store: EventStore, url: str) -> None:
    db = SqlDatabase(url)
    views = ReadModels(db)
    Projector(store, views, batch=2).catch_up_once()  # the views at 2, written by the old code:
    db.execute(
        "INSERT INTO mb_view_position (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        ("views", 2),
    )
    projector = Projector(store, ReadModels(SqlDatabase(url)))  # the upgraded service
    assert projector.follower.position() == 2
    projector.catch_up()
    assert views.position() == store.max_position()
    audit = [int(r[0]) for r in db.query("SELECT position FROM mb_view_audit ORDER BY 1")]
    assert audit == list(range(1, store.max_position() + 1))  # each event once, none skipped


def test_the_retention_index_old_position_is_adopted(store: EventStore, url: str) -> None:
    RetentionIndex(store, SqlDatabase(url))  # its tables, in the current shape
    db = SqlDatabase(url)
    last = store.max_position()
    db.execute(  # what the previous release wrote after its last batch
        "INSERT INTO mb_retention_position (name, position) VALUES ('index', ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (last,),
    )
    cluster = store.get_or_none(cluster_aggregate_id("c1"), Cluster)
    assert cluster is not None
    cluster.delete(command_id=None, at=NOW, by="test")
    store.save_all(cluster)
    index = RetentionIndex(store, db)
    assert index.position() == last
    index.catch_up()
    assert index.position() == store.max_position()
    rows = db.query("SELECT cluster_id FROM mb_retention_clusters")
    assert [r[0] for r in rows] == ["c1"]


# -- one active instance ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def __call__(self) -> datetime:
        return self.at


def test_one_instance_holds_the_role_and_a_standby_takes_over_once_it_expired(
    db: SqlDatabase,
) -> None:
    clock = Clock()
    first = OneActive(db, "relay", "relay", "first", 6.0, clock)
    second = OneActive(db, "relay", "relay", "second", 6.0, clock)
    held = first.try_take()
    assert held is not None and second.try_take() is None
    clock.at += timedelta(seconds=5)
    assert first.try_take() == held  # its holder extends it, same token
    clock.at += timedelta(seconds=7)  # the holder stopped renewing
    taken = second.try_take()
    assert taken is not None and taken.token != held.token
    leases = JobLeases(db, "relay")
    assert not leases.renew(held.job_id, clock.at, held)  # the deposed one learns it lost
    assert first.try_take() is None
    assert leases.renew(taken.job_id, clock.at + timedelta(seconds=6), taken)


async def test_a_standby_runs_only_after_the_active_one_stopped(db: SqlDatabase) -> None:
    first = OneActive(db, "relay", "relay", "first", 0.6)
    second = OneActive(db, "relay", "relay", "second", 0.6)
    running: list[str] = []
    refused: list[None] = []
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    take = second.try_take

    def counted_take() -> Fence | None:
        fence = take()
        if fence is None:
            refused.append(None)
        return fence

    second.try_take = counted_take  # type: ignore[method-assign]

    def work(name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def run(stopping: asyncio.Event) -> None:
            running.append(name)
            await stopping.wait()

        return run

    a = asyncio.create_task(first.run(stop_first, work("first")))
    async with asyncio.timeout(5):
        while running != ["first"]:
            await asyncio.sleep(0.01)
    b = asyncio.create_task(second.run(stop_second, work("second")))
    async with asyncio.timeout(5):  # across several renewals of the first's lease
        while len(refused) < 4:
            await asyncio.sleep(0.01)
    assert running == ["first"]
    stop_first.set()  # a clean stop releases the lease: the standby takes it at its next try
    await a
    async with asyncio.timeout(5):
        while running != ["first", "second"]:
            await asyncio.sleep(0.01)
    stop_second.set()
    await b
