"""The PostgreSQL event store's recorder: notifications in commit order without a table lock.

What it guarantees. Every follower of the notification log (the relay, the projections, the
scheduler) reads "the events after my position, in order" and never looks back. That is only
safe if no event can become visible later with a *lower* notification id than one a follower
has already read: the ids a transaction takes from the ``bigserial`` sequence must all be lower
than those of any transaction that commits after it. Two writers inserting at once break it
(writer A takes id 10, writer B takes 11 and commits first; a follower reads 11 and skips 10
for ever), so inserts into the log must be serialised from the moment ids are taken until
commit.

How. ``eventsourcing``'s PostgreSQL recorder serialises them with ``LOCK TABLE … IN EXCLUSIVE
MODE`` on the events table. That lock also conflicts with the ``SHARE UPDATE EXCLUSIVE`` lock
that VACUUM and ANALYZE take, so under a steady write load every autovacuum of the events table
stalls every writer until PostgreSQL cancels it after ``deadlock_timeout`` (1 s) — a stall that
grows with the table — and the vacuum never completes (nor would an anti-wraparound one, which
is not cancelled: every writer would wait for all of it). This recorder takes a
transaction-scoped advisory lock on a key derived from the events table instead
(``pg_advisory_xact_lock``), at the same point (before the insert takes its ids). Writers still
run one at a time, exactly as before, but the lock conflicts with nothing else: autovacuum,
ANALYZE and readers never wait for writers nor writers for them.

Where. The lock, the ``NOTIFY`` and the ``INSERT`` run in one server-side function, called as a
single statement on an autocommit connection (the library's ``POSTGRES_ENABLE_DB_FUNCTIONS``
path, with a function of ours): the lock is held only while the server inserts and commits. The
library's other path sends the lock first and the rows after it in a pipeline, then commits in
another round trip, so the lock was also held while the client encoded its rows and while it
waited for its turn on a busy CPU (sampled every 5 ms in the scheduler benchmark: the lock was
held 34% of the time, three quarters of that by a server waiting for its client's rows or
COMMIT; with the function, 6%).

Why the order still holds. A transaction's heavyweight locks, advisory ones included, are
released after its commit is recorded and made visible (``CommitTransaction`` releases locks
last), so the next writer takes its ids only after the previous writer's rows are visible:
insert order = commit order, as with the table lock. A rolled-back writer leaves a hole in the
ids that is never filled, which followers already skip. During an upgrade, a writer running
the previous code (``LOCK TABLE … EXCLUSIVE``) and one running this one still exclude each
other: the table lock conflicts with the ``ROW EXCLUSIVE`` lock every INSERT holds until commit.
The tables do not change, so a store written by the previous version is used as it is (opening
it creates the function). Opening a store whose tables exist touches no table: the library's
``CREATE UNIQUE INDEX IF NOT EXISTS`` locks the table before it finds the index, so every
process start waited for a running autovacuum, cancelled it, and held up the writers behind it.
``tests/integration/test_event_store_order.py`` checks the order with concurrent writers
(including a writer held between taking its ids and committing), and that neither a writer nor
a process opening the store waits for a held VACUUM lock.
"""

from __future__ import annotations

import hashlib

from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.sql import SQL, Identifier, Literal


def notification_log_lock_key(schema: str, table: str) -> int:
    """The advisory lock key of one events table (signed 64-bit, as PostgreSQL's ``bigint``):
    derived from its qualified name, so another application's advisory locks, or another
    store's in the same database, never share it."""
    digest = hashlib.sha256(f"managed-backups:notification-log:{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class OrderedApplicationRecorder(PostgresApplicationRecorder):
    """``eventsourcing``'s PostgreSQL application recorder, with the notification ids ordered by
    a transaction-scoped advisory lock instead of a table lock, taken inside one server-side
    function that also inserts (see the module docstring)."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.lock_key = notification_log_lock_key(datastore.schema, events_table_name)
        schema = Identifier(datastore.schema)
        lock_timeout = SQL("SET LOCAL lock_timeout = '{0}s'").format(datastore.lock_timeout)
        take_lock = SQL("SELECT pg_advisory_xact_lock({0})").format(Literal(self.lock_key))
        # The library's insert in a transaction of its own (POSTGRES_ENABLE_DB_FUNCTIONS off)
        # runs these before the INSERT; ours goes through the function below.
        self.lock_table_statements = [lock_timeout, take_lock]
        # Its own name: a process of the previous version recreates the library's function
        # (which takes no lock at all) under the library's name, never this one.
        self.pg_function_name_insert_events = f"mb_insert_events_{datastore.originator_id_type}"
        function = Identifier(self.pg_function_name_insert_events)
        self.sql_invoke_pg_function_insert_events = SQL("SELECT * FROM {0}.{1}((%s))").format(
            schema, function
        )
        self.sql_create_pg_function_insert_events = SQL(
            "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[])"
            " RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN"
            " {lock_timeout}; PERFORM pg_advisory_xact_lock({key}); NOTIFY {channel};"
            " RETURN QUERY INSERT INTO {schema}.{table} AS t"
            " (originator_id, originator_version, topic, state)"
            " SELECT originator_id, originator_version, topic, state FROM unnest(events)"
            " RETURNING notification_id;"
            " END; $BODY$"
        ).format(
            schema=schema,
            function=function,
            event=Identifier(self.stored_event_type_name),
            lock_timeout=lock_timeout,
            key=Literal(self.lock_key),
            channel=Identifier(self.channel_name),
            table=Identifier(self.events_table_name),
        )
        self.sql_create_statements[self.create_insert_function_statement_index] = (
            self.sql_create_pg_function_insert_events
        )
        self.sql_tables_exist = SQL(
            "SELECT to_regclass({table}) IS NOT NULL AND to_regclass({index}) IS NOT NULL"
            " AND to_regtype({type}) IS NOT NULL"
        ).format(
            table=Literal(f'"{datastore.schema}"."{events_table_name}"'),
            index=Literal(f'"{datastore.schema}"."{self.notification_id_index_name}"'),
            type=Literal(f'"{datastore.schema}"."{self.stored_event_type_name}"'),
        )

    def create_table(self) -> None:
        """Create the tables, or, when they exist, only (re)create the insert function: the
        library's ``CREATE UNIQUE INDEX IF NOT EXISTS`` locks an existing table (SHARE) before
        it finds the index, so every process opening the store waited for a running autovacuum
        and cancelled it, and held up every writer queued behind it."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql_tables_exist)
            row = curs.fetchone()
        if row is None or not next(iter(row.values())):
            super().create_table()
            return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.sql_create_pg_function_insert_events, prepare=False)
        self.datastore.register_type_adapters()
