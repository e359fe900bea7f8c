"""The PostgreSQL event store's notification log stays in commit order without a table lock.

Followers (relay, projections, scheduler) read "after my position" and never look back, so an
event that became visible with a lower id than one already read would be skipped for ever. The
recorder orders writers with a transaction-scoped advisory lock (``shared/eventstore_postgres``)
instead of ``LOCK TABLE … EXCLUSIVE``, which stalled every writer behind autovacuum. Checked on
a real PostgreSQL: a writer held between taking its ids and committing holds back the next one
(whichever recorder each runs, for an upgrade in progress; and without any lock a follower does
skip an event, so the check can fail); many concurrent writers with a follower tailing them; a
writer does not wait for the lock VACUUM and ANALYZE hold; a store written by the previous
version is read, written and scheduled on as it is.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from managed_backups.contracts.enums import BackupStatus
from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared.clock import WallClock
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.ids import cluster_aggregate_id, scheduled_backup_id
from managed_backups.shared.eventstore import EventStore, event_store_env, open_event_store
from managed_backups.shared.eventstore_postgres import OrderedApplicationRecorder
from tests.factories import new_cluster
from tests.infra.postgres import find_pg_bindir

pytestmark = pytest.mark.integration

EVENTS = "managedbackups_events"
GATE = 7_770_001  # an advisory key the test holds to stop a writer inside its transaction
DATA = Path(__file__).resolve().parent.parent / "data" / "postgres-store-table-lock"
T0 = datetime(2026, 1, 5, tzinfo=UTC)


class TableLockRecorder(PostgresApplicationRecorder):
    """The previous version's recorder: the library's own (``LOCK TABLE … EXCLUSIVE``)."""


class UnorderedRecorder(PostgresApplicationRecorder):
    """No ordering at all: what the lock prevents (a follower skips an event)."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.lock_table_statements = []


OTHER_RECORDERS = {"table-lock": TableLockRecorder, "none": UnorderedRecorder}


def open_with(url: str, recorder: str) -> EventStore:
    """The store as every service opens it ("ordered"), or with another recorder."""
    env = event_store_env(url)
    if recorder != "ordered":  # in a transaction of its own, as the previous version inserted
        env["APPLICATION_RECORDER_TOPIC"] = f"{__name__}:{OTHER_RECORDERS[recorder].__name__}"
        del env["POSTGRES_ENABLE_DB_FUNCTIONS"]
    return EventStore(env=env)


def all_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT notification_id FROM {EVENTS} ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def follow(store: EventStore, after: int) -> list[int]:
    """What a follower reads after ``after``, page by page, as the relay and projections do."""
    seen: list[int] = []
    while rows := store.notifications(after, 50):
        seen += [row.id for row in rows]
        after = rows[-1].id
    return seen


def waiting_on_locks(url: str) -> int:
    """Backends of this database waiting for a heavyweight lock (advisory or relation)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


@pytest.fixture
def url(postgres_store_url: str) -> str:
    return postgres_store_url


class Gate:
    """Stops one cluster's insert after its id was taken and before its transaction commits
    (a trigger waits for an advisory lock this test holds), until :meth:`open`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.holder = psycopg.connect(url, autocommit=True)
        self.holder.execute("SELECT pg_advisory_lock(%s)", (GATE,))

    def stop(self, cluster: Cluster) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE FUNCTION mb_test_gate() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF NEW.originator_id = '{cluster.id}' THEN"
                f" PERFORM pg_advisory_xact_lock_shared({GATE}); END IF; RETURN NEW; END $$;"
                f" CREATE TRIGGER mb_test_gate AFTER INSERT ON {EVENTS}"
                " FOR EACH ROW EXECUTE FUNCTION mb_test_gate()"
            )

    def open(self) -> None:
        self.holder.execute("SELECT pg_advisory_unlock(%s)", (GATE,))

    def close(self) -> None:
        self.holder.close()


@pytest.fixture
def gate(url: str) -> Iterator[Gate]:
    gate = Gate(url)
    yield gate
    gate.close()


@pytest.mark.parametrize(
    ("first", "second"),
    [("ordered", "ordered"), ("table-lock", "ordered"), ("ordered", "table-lock")],
)
def test_a_writer_holding_its_ids_holds_back_the_next_writer(
    url: str, gate: Gate, first: str, second: str
) -> None:
    """Writer A has taken its id and not committed; writer B must not commit a higher id before
    A does, or a follower reading in between would skip A's event. Also when one of them still
    runs the previous version's recorder (an upgrade rolling through the services)."""
    skipped, b_done_early, ids = _race(url, gate, first, second)
    assert skipped == [], f"a follower skipped {skipped}"
    assert not b_done_early, "the second writer committed while the first held its ids"
    assert ids == list(range(1, len(ids) + 1))


def test_without_ordering_a_follower_skips_an_event(url: str, gate: Gate) -> None:
    """The same race with no lock at all: the follower skips the held writer's event. (What the
    ordering prevents, and proof that the race above can catch it.)"""
    skipped, b_done_early, _ = _race(url, gate, "none", "none")
    assert b_done_early and len(skipped) == 1


def _race(url: str, gate: Gate, first: str, second: str) -> tuple[list[int], bool, list[int]]:
    """Returns (the ids a follower skipped, whether B committed while A was held, all ids)."""
    a_store, b_store = open_with(url, first), open_with(url, second)
    reader = open_with(url, "ordered")
    try:
        a_store.save_all(new_cluster("before"))
        slow, fast = new_cluster("slow"), new_cluster("fast")
        gate.stop(slow)
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(a_store.save_all, slow)
            wait_for(lambda: waiting_on_locks(url) == 1, "writer A waits at the gate")
            b = pool.submit(b_store.save_all, fast)
            wait_for(lambda: b.done() or waiting_on_locks(url) == 2, "writer B is done or waits")
            b_done_early = b.done()
            seen = follow(reader, 0)
            gate.open()
            a.result(timeout=30)
            b.result(timeout=30)
        seen += follow(reader, max(seen))
        ids = all_ids(url)
        return sorted(set(ids) - set(seen)), b_done_early, ids
    finally:
        for store in (a_store, b_store, reader):
            store.close()


def test_concurrent_writers_and_a_tailing_follower_miss_nothing(url: str) -> None:
    """Four writers save for a while (each commit slowed a little at random after its ids are
    taken, as a busy disk would) while a follower tails the log: it reads every event, each once,
    in order."""
    _slow_commits(url)
    stores = [open_with(url, "ordered") for _ in range(5)]
    follower = stores[-1]
    stop = threading.Event()
    seen: list[int] = []

    def write(store: EventStore, n: int) -> None:
        rng = random.Random(n)
        for i in range(25):
            store.save_all(*(new_cluster(f"w{n}-{i}-{k}") for k in range(rng.randint(1, 3))))

    def tail() -> None:
        after = 0
        while not stop.is_set():
            for row in follower.notifications(after, 20):
                seen.append(row.id)
                after = row.id

    try:
        with ThreadPoolExecutor(5) as pool:
            tailing = pool.submit(tail)
            writers = [pool.submit(write, store, n) for n, store in enumerate(stores[:4])]
            for writer in writers:
                writer.result(timeout=120)
            stop.set()
            tailing.result(timeout=30)
        seen += follow(follower, seen[-1] if seen else 0)
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        assert seen == all_ids(url)
        assert len(seen) >= 100
    finally:
        for store in stores:
            store.close()


def _slow_commits(url: str) -> None:
    open_with(url, "ordered").close()  # creates the tables
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION mb_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM pg_sleep(random() * 0.004); RETURN NULL; END $$;"
            f" CREATE TRIGGER mb_test_slow AFTER INSERT ON {EVENTS}"
            " FOR EACH STATEMENT EXECUTE FUNCTION mb_test_slow()"
        )


def test_neither_a_writer_nor_a_starting_service_waits_for_vacuum(url: str) -> None:
    """VACUUM and ANALYZE (autovacuum too) hold SHARE UPDATE EXCLUSIVE on the table they work on.
    The previous recorder's EXCLUSIVE table lock waited for it (autovacuum was cancelled after
    deadlock_timeout, a manual VACUUM not at all), and so did opening the store (the library's
    ``CREATE UNIQUE INDEX IF NOT EXISTS`` locks the table first). Today both go on."""
    store = open_with(url, "ordered")
    try:
        store.save_all(new_cluster("before"))
        with ThreadPoolExecutor(2) as pool, psycopg.connect(url) as vacuum_like:
            vacuum_like.execute(f"LOCK TABLE {EVENTS} IN SHARE UPDATE EXCLUSIVE MODE")
            saved: Future[Any] = pool.submit(store.save_all, new_cluster("during"))
            opened: Future[EventStore] = pool.submit(open_event_store, url)
            try:
                wait_for(
                    lambda: (saved.done() and opened.done()) or waiting_on_locks(url) > 0,
                    "the save and the opening end, or one waits",
                )
                assert saved.done(), "the writer waits for the lock VACUUM holds"
                assert opened.done(), "opening the store waits for the lock VACUUM holds"
            finally:
                vacuum_like.rollback()  # what waited goes on, so the pool can end
        assert saved.result() == 2
        opened.result().close()
    finally:
        store.close()


def test_a_store_written_with_the_table_lock_is_used_as_it_is(url: str) -> None:
    """The store of ``tests/data/postgres-store-table-lock`` (written by the previous version):
    read in order, loaded, written to, and the scheduler decides its next slot from it."""
    dump = gzip.decompress((DATA / "store.sql.gz").read_bytes())
    subprocess.run(
        [str(find_pg_bindir() / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d", url],
        input=dump,
        check=True,
        capture_output=True,
    )
    store = open_event_store(url)
    try:
        assert isinstance(store.recorder, OrderedApplicationRecorder)
        assert follow(store, 0) == list(range(1, 318))
        one = store.get_or_none(cluster_aggregate_id("pg-one"), Cluster)
        assert one is not None and one.last_scheduled is not None
        last_slot = T0 + timedelta(minutes=5 * 104)
        assert one.last_scheduled["slot"] == last_slot
        failed = load_backup(
            store, "pg-one", scheduled_backup_id("pg-one", 0, T0 + timedelta(minutes=250))
        )
        assert failed is not None and failed.status == BackupStatus.FAILED.value

        scheduler = Scheduler(store, WallClock(), send=_no_send, sign=_no_sign)
        scheduler.bootstrap()
        due = last_slot + timedelta(minutes=5)
        decided, _ = scheduler._decide_all(["pg-one", "pg-two"], due)
        assert [c.cluster_id for c in decided] == ["pg-one", "pg-two"]
        nxt = decided[0].last_scheduled
        assert nxt is not None and nxt["slot"] == due and nxt["backup_type"] == "INCREMENTAL"
        assert nxt["chain_id"] == scheduled_backup_id("pg-one", 0, T0)
        assert follow(store, 317) == [318, 319]
    finally:
        store.close()


async def _no_send(command: object) -> None:
    raise AssertionError("decisions only")


def _no_sign(command: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("decisions only: nothing is signed")
