"""Snapshots, locks, and the xmin argument: which rows an incremental must store.

- :func:`export_snapshot` opens a database's repeatable-read transaction and exports its
  snapshot; :func:`lock_tables` and :func:`check_identities` make sure nothing the snapshot
  will read was dropped, replaced, truncated or rewritten since (``TRUNCATE`` and rewrites are
  not MVCC-safe): any difference raises :class:`Retake`, and the caller takes a new snapshot.
- :func:`global_whole_reason` and :func:`database_whole_reason` say when no table may be
  stored as a delta of the previous backup; :func:`changed_rows_filter` is the ``WHERE``
  clause that selects the rows a delta stores. Why it is correct:

Incrementals: what changed since the previous backup of the chain
=================================================================
For a table with a supported primary key and an unchanged definition, an incremental stores

1. the rows *changed* since the previous backup ``P`` (inserted or updated), in key order, and
2. the table's *key set* (every live key, in key order) so a restore knows which keys were
   deleted. A single-integer key is stored as runs ``lo<TAB>hi`` of consecutive keys (computed
   by the server with ``k - row_number()``), so 6 million dense keys are one line and appends
   or deletes change a few lines; other keys are stored as a key list. Key sets are chunked
   with small content-defined chunks so unchanged key ranges dedupe against the previous one.

A restore takes the newest full copy of the table in the chain, upserts each incremental's
changed rows in order (a k-way merge by key; the newest version of a key wins) and keeps only
the keys of the last key set.

**Which rows changed.** A row version (tuple) visible in our snapshot ``S`` was written by the
transaction ``X = xmin``. If ``X`` was already visible to ``P``'s snapshot, then this exact
tuple was visible to ``P`` too (a tuple visible to ``S`` has no deleter visible to ``S``, hence
none visible to the earlier ``P``), with the same contents: it is in ``P``'s reconstruction.
Otherwise the tuple was written after ``P`` (an insert, an update, a re-insert of a deleted
key) and is "changed". We use a conservative test for "``X`` not visible to ``P``":
``X >= P.xmin`` (64-bit), with ``P.xmin`` from ``pg_current_snapshot()`` of ``P``'s
transaction:

- *Transactions in flight at P*: every transaction running at ``P`` has ``xid >= P.xmin``,
  and so have its subtransactions (a subtransaction's xid is always assigned after its
  parent's). ``pg_snapshot_xip`` lists top-level xids only, so testing ``xip`` membership
  would miss rows written in a ``SAVEPOINT`` of an in-flight transaction; the ``xmin``
  threshold cannot. The price: transactions between ``P.xmin`` and ``P.xmax`` that had already
  committed are included again (an idempotent upsert).
- *Rows updated twice*: only the newest version is visible to ``S``; its ``xmin`` is the last
  updater, so it is changed and its latest contents are stored once.
- *Deleted and re-inserted keys*: the new tuple has a new ``xmin`` (changed, stored); the key
  is in the key set, so the restore keeps it with the new contents.
- *Deletes* leave no tuple; the key is absent from the key set and the restore drops it.
- *Aborted transactions* leave no visible tuples. Row locks (``SELECT FOR UPDATE``) touch only
  ``xmax``, not the contents.
- *Wraparound*: ``xmin`` is 32 bits; snapshots are 64-bit ``xid8``. In the worker's
  transaction ``age(x)`` is ``(int32)(now - x)`` for a normal xid, so
  ``d = (age(xmin) - age(S.xmax mod 2^32)) mod 2^32`` is ``(S.xmax - xmin) mod 2^32``
  whatever ``now`` and the epoch are, and the filter is ``1 <= d <= S.xmax - P.xmin``. The
  64-bit value this assigns to ``xmin`` is the largest one ``<= S.xmax`` congruent to it mod
  ``2^32``, never smaller than the true one (which is ``< S.xmax`` since the tuple is visible),
  so a changed row is never missed: no false negatives. The only false positives are frozen
  tuples older than ``2^32`` transactions whose raw ``xmin`` happens to alias into the window
  (``VACUUM FREEZE`` keeps the raw ``xmin`` since PostgreSQL 9.4; pre-9.4 ``FrozenXid`` and
  bootstrap xids give ``age = INT_MAX`` and count as old): they are stored again, costing bytes,
  not correctness. ``age()`` uses one stable "now" per transaction, evaluated in the same
  statement, so the test is exact; it reads ``xmin`` without a text conversion per row.
- *Limits, all answered by storing the table WHOLE* (with the reason in the manifest): no
  primary key, an unsupported key type, a key on a generated column, a non-heap table access
  method, a new table or a changed definition, more than ``2^31`` transactions between
  ``P.xmin`` and ``S.xmax``, a transaction counter that went backwards, a different system
  identifier or timeline (a restored or PITR'd source reuses xids), a new server major
  version, another database under the same name (databases are matched by oid: a rename swap
  or a copy from a template keeps old xmins on different rows), or a previous manifest that
  did not record the database's oid (schema_version 1).
- *Definition changes that alter a row's text without writing the row*: the fingerprint covers
  the oid, column names/types/collations/generation, the key, and the columns' whole **type
  closure** (array elements, domain bases, composite attributes, range subtypes, at any
  depth), with each type's name, enum labels, attribute list, typmod, collation and the
  version of the extension owning it. ``ALTER TABLE ... ADD COLUMN ... DEFAULT``, ``ALTER TYPE
  ... RENAME VALUE`` or ``ADD ATTRIBUTE`` on a type used anywhere in a column change it. A
  column whose closure holds a ``reg*`` type prints other objects' current names, which no
  fingerprint of the table can follow: such tables are stored whole in every incremental.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from .errors import BackupError, ErrorCode, pg_error
from .manifest import DatabaseBackup, Manifest, PgSnapshot
from .sql import encoded, quote_literal

if TYPE_CHECKING:
    from .postgres_catalog import Table

__all__ = [
    "LOCK_NOT_AVAILABLE",
    "MAX_RETAKES",
    "Retake",
    "changed_rows_filter",
    "check_identities",
    "database_whole_reason",
    "export_snapshot",
    "global_whole_reason",
    "lock_tables",
]

_XID_WINDOW = 1 << 31
MAX_RETAKES = 5
LOCK_NOT_AVAILABLE = "55P03"
_UNDEFINED_TABLE = "42P01"


class Retake(Exception):
    """Concurrent DDL got between a database's snapshot and its locks: take a new snapshot."""


def export_snapshot(conn: psycopg.Connection[Any], db: str, settings_sql: str) -> PgSnapshot:
    """Open the database's repeatable-read transaction (after ``settings_sql``, one statement
    a line) and export its snapshot."""
    step = (
        f"in database {db}: BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
        " SELECT pg_export_snapshot()"
    )
    try:
        for stmt in settings_sql.splitlines():
            conn.execute(stmt)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(
            "SELECT pg_export_snapshot(), s::text, pg_snapshot_xmin(s)::text,"
            " pg_snapshot_xmax(s)::text, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) AS x),"
            " statement_timestamp() FROM pg_current_snapshot() AS s"
        ).fetchone()
    except psycopg.Error as exc:
        err = pg_error(exc, step)
        if err.code == ErrorCode.DUMP_FAILED:
            err = BackupError(ErrorCode.SNAPSHOT_FAILED, err.message, step, sqlstate=err.sqlstate)
        raise err from None
    assert row is not None
    snap_id, text, xmin, xmax, xip, ts = row
    return PgSnapshot(
        snapshot_id=str(snap_id),
        xmin=int(xmin),
        xmax=int(xmax),
        xip=sorted(int(x) for x in xip),
        text=str(text),
        taken_at=ts,
    )


def global_whole_reason(
    previous: Manifest | None, system_id: int | None, timeline: int | None, version_num: int
) -> str | None:
    """Why *no* table of this incremental may be a DELTA (``None``: deltas allowed)."""
    if previous is None:
        return None
    if (
        previous.system_identifier is not None
        and system_id is not None
        and previous.system_identifier != system_id
    ):
        return "cluster system identifier changed since the previous backup"
    if (
        previous.timeline_id is not None
        and timeline is not None
        and previous.timeline_id != timeline
    ):
        return "timeline changed since the previous backup (point-in-time recovery)"
    if previous.server_version_num // 10000 != version_num // 10000:
        return "server major version changed since the previous backup"
    return None


def database_whole_reason(prev_db: DatabaseBackup, snap: PgSnapshot, oid: int) -> str | None:
    """Why no table of this database may be a DELTA of ``prev_db`` (``None``: allowed).
    A database is known by its oid, not its name: one dropped and recreated, copied from a
    template or renamed into place is another database whose rows kept old xmins."""
    if prev_db.oid is None:
        return "the previous backup did not record the database's identity"
    if prev_db.oid != oid:
        return "another database now has this name (recreated, copied or swapped in)"
    prev = prev_db.snapshot
    if snap.xmax < prev.xmax:
        return "transaction counter went backwards since the previous backup"
    if snap.xmax - prev.xmin >= _XID_WINDOW:
        return "more than 2^31 transactions since the previous backup"
    return None


def changed_rows_filter(snapshot: PgSnapshot, previous: PgSnapshot, *, small: bool = False) -> str:
    """The ``WHERE`` clause (on ``_t``) of the rows written after ``previous``, as seen in
    ``snapshot``: ``1 <= (S.xmax - xmin) mod 2^32 <= S.xmax - P.xmin``, computed with
    ``age()`` (see the module docstring). Only valid when :func:`database_whole_reason` is
    ``None``.

    The reference's age is computed once per statement (an init plan); ``small``: once per row
    instead, for the probe of small tables (a few rows each, hundreds of tables in one
    statement, where an init plan per table costs more to plan than the rows to read). Both
    give the same rows: ``age()`` is stable within the transaction."""
    distance = snapshot.xmax - previous.xmin
    reference = f"age({quote_literal(str(snapshot.xmax % (1 << 32)))}::xid)"
    if not small:
        reference = f"(SELECT {reference})"
    return f"((age(_t.xmin)::int8 - {reference}::int8) & 4294967295) BETWEEN 1 AND {distance}"


def lock_tables(
    conn: psycopg.Connection[Any], tables: Sequence[Table], db: str, *, nowait: bool = False
) -> None:
    """``ACCESS SHARE`` on every table (``ONLY``), in batches; a table dropped since the
    snapshot, or (``nowait``) a conflicting lock already queued, raises :class:`Retake`."""
    for start in range(0, len(tables), 500):
        batch = tables[start : start + 500]
        sql = (
            f"LOCK TABLE {', '.join('ONLY ' + t.qualified for t in batch)} IN ACCESS SHARE MODE"
            + (" NOWAIT" if nowait else "")
        )
        try:
            conn.execute(encoded(conn, sql))
        except psycopg.Error as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate == _UNDEFINED_TABLE:
                raise Retake(f"a table was dropped: {str(exc).splitlines()[0]}") from None
            if nowait and sqlstate == LOCK_NOT_AVAILABLE:
                raise Retake("a DDL statement waits for a lock on one of the tables") from None
            raise pg_error(exc, f"in database {db}: {sql}") from None


def check_identities(
    conn: psycopg.Connection[Any], tables: Sequence[Table], filenodes: Sequence[int], db: str
) -> None:
    """With the locks held: every table still has the snapshot's oid under its name and
    the snapshot's storage (not truncated or rewritten meanwhile)."""
    if not tables:
        return
    sql = (
        "SELECT x.qname FROM unnest(%s::oid[], %s::text[], %s::oid[]) AS x(oid, qname, node)"
        " WHERE to_regclass(x.qname) IS DISTINCT FROM x.oid::regclass"
        " OR pg_relation_filenode(x.oid) IS DISTINCT FROM x.node"
    )
    try:
        changed = conn.execute(
            sql,
            ([t.oid for t in tables], [t.qualified for t in tables], list(filenodes)),
        ).fetchall()
    except psycopg.Error as exc:
        raise pg_error(exc, f"in database {db}: check table identities") from None
    if changed:
        names = ", ".join(str(r[0]) for r in changed[:5])
        raise Retake(f"replaced, truncated or rewritten since the snapshot: {names}")
