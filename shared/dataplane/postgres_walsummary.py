"""WAL summaries (PostgreSQL 17 and later): which tables an incremental reads, and where.

With ``summarize_wal = on`` the server keeps, for ranges of its WAL, the blocks of every
relation fork that a WAL record touched (``pg_available_wal_summaries``,
``pg_wal_summary_contents``), and marks the forks created, truncated or dropped there
(*limit blocks*). An incremental ``I`` on top of a backup ``P`` asks them which tables were
written since ``P``: a table none of whose blocks was written holds exactly ``P``'s rows and is
recorded ``UNCHANGED`` without being read (not probed, not locked by a reader, no key set); in a
large table only the written blocks are read (TID range scans) to find the changed rows.
Everything else is today's probe (:mod:`.postgres_snapshots`): whenever a step below cannot be
shown, the table, or the database, is probed as before.

The points of the WAL
=====================
- **The mark** (:func:`take_mark`), before a database's snapshot, recorded in its manifest entry
  (:class:`~.manifest.WalMark`): ``M.lsn = pg_current_wal_insert_lsn()``, then
  ``M.xid = pg_current_xact_id()`` (a transaction of its own that writes nothing). Transaction
  ids are handed out in order, so every transaction with an xid ``> M.xid`` was given it after
  ``M.lsn`` was read, and everything it wrote is in WAL records that start at or after
  ``M.lsn``. (The snapshot's ``xmax`` is not such a bound: transactions with larger xids may
  already be running when a snapshot is taken.) Before the snapshot the backup waits, for a few
  seconds at most, until no transaction with an xid ``<= M.xid`` is still running, so that
  usually ``M.xid < P.xmin``. A ``CHECKPOINT`` comes first: summaries start and end at
  checkpoints' redo points, and the one holding ``M.lsn`` would otherwise start at whatever
  checkpoint came before and name the blocks written between it and the mark too (correct,
  but those tables would be read again for nothing).
- **The end**, read after the snapshots of a group of databases: every transaction the
  incremental's snapshot ``S`` sees committed before ``S`` was taken, so its records start
  before ``E = pg_current_wal_insert_lsn()``. Summaries only end at checkpoints' redo points,
  so the backup runs ``CHECKPOINT`` (superuser or ``pg_checkpoint``, as ``pg_basebackup
  --incremental`` does) and waits until the summarizer has summarized past ``E``
  (:func:`summarize_through`).

Why a table without written blocks holds ``P``'s rows
=====================================================
Let ``M`` be ``P``'s mark with ``M.xid < P.xmin``, and the summaries of one timeline cover
``[M.lsn, E)`` without a gap. Let ``R`` be the table's storage (``relfilenode``) in ``S``, a
permanent (WAL-logged) heap with no block of its main fork in those summaries, no limit block,
and no database-wide entry (a database created or dropped). A transaction not visible to ``P``
is running at ``P`` or starts after it, so its xid is ``>= P.xmin > M.xid``, and everything it
wrote is in records at or after ``M.lsn``:

1. *No row of ``S`` is new.* A tuple is put into a block by a record naming that block (insert,
   update, multi-insert). A tuple ``S`` sees whose inserter ``P`` did not see would be in a
   block written in ``[M.lsn, E)``: there is none. Every tuple ``S`` sees was inserted by a
   transaction with an xid ``<= M.xid < P.xmin``, not running at ``P``, committed (``S``
   sees it), so ``P`` saw it committed too, and not deleted as of ``P`` (a deleter ``P``
   sees, ``S`` sees). Tuples are immutable: it is the same row.
2. *No row of ``P`` is gone.* Deleting or updating a tuple sets its ``xmax`` in its block by
   a record naming that block (the old block of an update is named too); that deleter is not
   visible to ``P`` and committed before ``S``, so its record is in ``[M.lsn, E)``: there is
   none.
3. *The storage is the same.* A rewrite (``VACUUM FULL``, ``CLUSTER``, most ``ALTER TABLE``
   that change a column's type, ``SET TABLESPACE``, ``SET LOGGED``) or a ``TRUNCATE`` gives the
   table a new ``relfilenode`` whose creation (``XLOG_SMGR_CREATE``, a limit block of 0) is
   in the summaries if the transaction that did it is not visible to ``P``. An in-place
   truncation (``VACUUM`` cutting empty pages, ``TRUNCATE`` of a table created in the same
   transaction) is a limit block. Either way the table is probed.

So ``S``'s rows are ``P``'s rows, byte for byte: ``UNCHANGED``. For a table with written
blocks, every tuple ``S`` sees that ``P`` did not is in one of them (1.), so the probe's
changed-rows filter applied to those blocks alone finds every changed row (reading more blocks
than were written, e.g. to merge nearby ranges, only costs time); deleted rows are found by the
key set, read whole as before. What a summary does not say, and what is done about it:

- *Unlogged tables* write no WAL for their rows: always probed.
- *Hint bits, freezing, pruning, vacuum* write WAL or full-page images without changing any
  row: a table is read (or probed) for nothing, never missed.
- *Changes that write no row*: a column added with a default, an enum label renamed, a
  type's attribute added change a row's text without touching the heap; the table's
  fingerprint covers them and stores it ``WHOLE`` before any summary is asked.
- *A summary missing*: ``summarize_wal`` off for a while, summaries removed after
  ``wal_summary_keep_time`` (default 10 days), WAL written with ``wal_level = minimal``
  (never summarized): the coverage check fails and every table of the database is probed.
- *Another timeline* (a promotion, a point-in-time recovery): the previous backup's timeline
  differs (stored whole, see :func:`~.postgres_snapshots.global_whole_reason`), or the
  summaries of the current timeline do not reach back to the mark: probed.
- *A transaction older than the mark still running at ``P``* (``M.xid >= P.xmin``): it may
  have written before ``M.lsn``: every table probed.
- *A retaken snapshot* (concurrent DDL): the new snapshot is later than ``E``; that database
  is probed.
- *A server started from an older copy of its storage* (a volume snapshot rolled back)
  reuses WAL positions and transaction ids the previous backup saw, like the xmin test: not
  detectable by SQL in general (an end before the mark is: probed). Start a new chain with a
  full backup after such a restore, as the README says.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from .manifest import KeyColumn, PgSnapshot, WalMark
from .sql import copy_select_sql, order_by, quote_ident

__all__ = [
    "MIN_SERVER_VERSION",
    "Summarized",
    "WalWrites",
    "Written",
    "end_lsn",
    "lsn_text",
    "read_ranges",
    "read_wal_writes",
    "summarize_through",
    "summarizing",
    "take_mark",
    "tid_ranges_sql",
]

MIN_SERVER_VERSION = 170000
MARK_WAIT_SECONDS = 5.0
"""How long a mark waits for the transactions older than it (see :func:`take_mark`)."""
SUMMARY_STALL_SECONDS = 20.0
"""How long the summarizer may make no progress before the incremental gives up waiting."""
_BLOCK = 8192
_GAP_BLOCKS = 16
"""Written block ranges this close are read as one (a scan through 128 KiB of unwritten
blocks costs less than another scan)."""
_MAX_RANGES = 128
"""At most this many TID range scans per table; the nearest ranges are merged first."""

Written = tuple[tuple[int, int | None], ...]
"""A table's written blocks: ranges ``(first, last)`` of block numbers of its main fork, ``last``
``None`` for "to its end"; ``()`` when none was written."""


def lsn_text(lsn: int) -> str:
    """A byte position of the WAL as PostgreSQL prints a ``pg_lsn``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _int(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None and row[0] is not None, sql
    return int(row[0])


def summarizing(conn: psycopg.Connection[Any], version_num: int) -> bool:
    """Whether the server summarizes its WAL (17 and later, ``summarize_wal = on``)."""
    if version_num < MIN_SERVER_VERSION:
        return False
    row = conn.execute("SELECT current_setting('summarize_wal', true)").fetchone()
    return row is not None and row[0] == "on"


def take_mark(conn: psycopg.Connection[Any], wait: float | None = None) -> WalMark | None:
    """The mark to record before a group of snapshots (see the module docstring), on the
    coordinator's connection outside any transaction, after a ``CHECKPOINT`` (a summary starts
    at a checkpoint: without one, the summary holding the mark would start at an older one and
    name what was written before the mark too); then wait, at most ``wait`` seconds, until
    every transaction with an xid up to the mark's has ended (default
    :data:`MARK_WAIT_SECONDS`). ``None`` where no xid can be assigned (a standby, a read-only
    session): the next incremental probes."""
    with contextlib.suppress(psycopg.Error):
        conn.execute("CHECKPOINT")  # refused without pg_checkpoint: a looser start, still right
    try:
        lsn = _int(conn, "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8")
        xid = _int(conn, "SELECT pg_current_xact_id()::text::int8")
        deadline = time.monotonic() + (MARK_WAIT_SECONDS if wait is None else wait)
        pause = 0.005
        while _int(conn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8") <= xid:
            if time.monotonic() >= deadline:
                break  # a long transaction: the next incremental may have to probe
            time.sleep(pause)
            pause = min(0.1, pause * 2)
    except psycopg.Error:
        return None
    return WalMark(lsn=lsn, xid=xid)


def end_lsn(conn: psycopg.Connection[Any]) -> int | None:
    """The WAL insert position now (after the snapshots), ``None`` where it cannot be read."""
    try:
        return _int(conn, "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8")
    except psycopg.Error:
        return None


@dataclass(frozen=True)
class Summarized:
    """The summaries reach ``end`` on timeline ``tli`` (or why they do not: ``reason``)."""

    end: int
    tli: int = 0
    reason: str | None = None


def summarize_through(
    connect: Callable[[], psycopg.Connection[Any]],
    end: int,
    stall: float | None = None,
) -> Summarized:
    """``CHECKPOINT`` (summaries end at redo points), then wait until the summarizer has
    summarized the WAL up to ``end``, as long as it makes progress (gives up after ``stall``
    seconds without any, default :data:`SUMMARY_STALL_SECONDS`)."""
    stall = SUMMARY_STALL_SECONDS if stall is None else stall
    conn = connect()
    try:
        refused: str | None = None
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as exc:
            refused = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        last_progress = time.monotonic()
        seen = (-1, -1)
        pause = 0.005
        while True:
            row = conn.execute(
                "SELECT summarized_tli, (summarized_lsn - '0/0')::int8,"
                " (pending_lsn - '0/0')::int8 FROM pg_get_wal_summarizer_state()"
            ).fetchone()
            assert row is not None
            tli, summarized, pending = int(row[0]), int(row[1] or 0), int(row[2] or 0)
            if summarized >= end:
                return Summarized(end, tli)
            if refused is not None:
                return Summarized(
                    end,
                    reason=f"CHECKPOINT refused ({refused}): the WAL after the last checkpoint"
                    " is not summarized yet (grant the backup role pg_checkpoint)",
                )
            if (summarized, pending) != seen:
                seen, last_progress = (summarized, pending), time.monotonic()
            elif time.monotonic() - last_progress > stall:
                return Summarized(
                    end,
                    reason=f"WAL summarization made no progress for {stall:.0f} s"
                    f" (at {lsn_text(summarized)}, needed {lsn_text(end)})",
                )
            time.sleep(pause)
            pause = min(0.1, pause * 2)
    except psycopg.Error as exc:
        return Summarized(end, reason=f"WAL summarizer state unreadable: {exc}")
    finally:
        conn.close()


@dataclass(frozen=True)
class WalWrites:
    """A database's tables written since a mark, by oid (see :meth:`of`)."""

    since: int
    end: int
    tables: Mapping[int, Written | None]
    reason: str | None = None
    """Why no table of the database can be judged by the summaries (every one is probed)."""

    def of(self, oid: int) -> Written | None:
        """The table's written blocks (``()``: none), ``None`` when it must be probed."""
        return None if self.reason is not None else self.tables.get(oid)

    @property
    def range_text(self) -> str:
        return f"{lsn_text(self.since)}..{lsn_text(self.end)}"


_SUMMARIES_SQL = """
SELECT (start_lsn - '0/0')::int8, (end_lsn - '0/0')::int8 FROM pg_available_wal_summaries()
WHERE tli = %(tli)s AND end_lsn > %(since)s::pg_lsn AND start_lsn < %(until)s::pg_lsn
ORDER BY start_lsn
"""

# Per relfilenode: its smallest limit block (kind 'l'), and its written blocks as ranges of
# consecutive block numbers (kind 'w'). Relfilenode 0: the database's storage was created or
# dropped (CREATE DATABASE copies files without a record per relation).
_WRITES_SQL = """
WITH s AS (
  SELECT tli, start_lsn, end_lsn FROM pg_available_wal_summaries()
  WHERE tli = %(tli)s AND end_lsn > %(since)s::pg_lsn AND start_lsn < %(until)s::pg_lsn
), w AS (
  SELECT c.relfilenode::int8 AS node, c.relblocknumber AS b, c.is_limit_block AS lim
  FROM s CROSS JOIN LATERAL pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c
  WHERE c.reldatabase = %(db)s AND c.relforknumber = 0
    AND (c.relfilenode = 0 OR c.relfilenode = ANY (%(nodes)s::oid[]))
)
SELECT node, 'l', min(b), NULL::int8 FROM w WHERE lim GROUP BY node
UNION ALL
SELECT node, 'w', min(b), max(b) FROM (
  SELECT node, b, b - row_number() OVER (PARTITION BY node ORDER BY b) AS g
  FROM (SELECT DISTINCT node, b FROM w WHERE NOT lim) d
) r GROUP BY node, g
"""

_NOT_LOGGED_SQL = (
    "SELECT oid::int8 FROM pg_class WHERE oid = ANY (%s::oid[]) AND relpersistence <> 'p'"
)


def read_wal_writes(
    conn: psycopg.Connection[Any],
    db_oid: int,
    mark: WalMark,
    previous: PgSnapshot,
    summarized: Summarized,
    tables: Sequence[tuple[int, int]],
) -> WalWrites:
    """Which of ``tables`` (``(oid, relfilenode)`` as the snapshot sees them) were written
    since ``mark``, the mark of the previous backup of the database (whose snapshot is
    ``previous``), up to ``summarized.end``. Read on the database's coordinator connection, in
    the incremental's snapshot."""
    since, end = mark.lsn, summarized.end

    def whole(reason: str) -> WalWrites:
        return WalWrites(since, end, {}, reason)

    if summarized.reason is not None:
        return whole(summarized.reason)
    if mark.xid >= previous.xmin:
        return whole(
            "a transaction that began before the previous backup's WAL mark was still running"
            " at its snapshot"
        )
    if end < since:
        return whole("the WAL position went backwards (a server started from an older copy?)")
    params = {
        "tli": summarized.tli,
        "since": lsn_text(since),
        "until": lsn_text(end),
        "db": db_oid,
        "nodes": [node for _oid, node in tables],
    }
    covered = since
    for start, stop in conn.execute(_SUMMARIES_SQL, params).fetchall():
        if int(start) > covered:
            break
        covered = max(covered, int(stop))
    if covered < end:
        return whole(
            f"no WAL summary of timeline {summarized.tli} covers {lsn_text(covered)}.."
            f"{lsn_text(end)} (summarize_wal was off, or wal_summary_keep_time removed it)"
        )
    limits: dict[int, int] = {}
    ranges: dict[int, list[tuple[int, int | None]]] = {}
    for node, kind, first, last in conn.execute(_WRITES_SQL, params).fetchall():
        if kind == "l":
            limits[int(node)] = int(first)
        else:
            ranges.setdefault(int(node), []).append((int(first), int(last)))
    if 0 in limits or 0 in ranges:
        return whole("the database's storage was created or dropped in that WAL range")
    not_logged = {
        int(r[0]) for r in conn.execute(_NOT_LOGGED_SQL, ([oid for oid, _ in tables],)).fetchall()
    }
    out: dict[int, Written | None] = {}
    for oid, node in tables:
        limit = limits.get(node)
        if oid in not_logged or limit == 0:
            out[oid] = None  # unlogged, or a new storage (rewritten, truncated, new)
            continue
        written = sorted(ranges.get(node, []), key=lambda r: r[0])
        if limit is not None:
            written.append((limit, None))  # cut there: whatever lies beyond was rewritten
        out[oid] = tuple(written)
    return WalWrites(since, end, out)


def read_ranges(
    written: Written,
    table_blocks: int,
    *,
    gap: int = _GAP_BLOCKS,
    most: int = _MAX_RANGES,
) -> Written | None:
    """The block ranges to read for ``written`` (a table of about ``table_blocks`` blocks):
    ranges closer than ``gap`` blocks merged, at most ``most`` of them (the nearest merged
    first). ``None`` when they cover more than half the table: a sequential scan of it all
    costs no more. Reading more blocks than were written is always correct."""
    spans: list[tuple[int, int | None]] = []
    for first, last in sorted(written, key=lambda r: r[0]):
        if spans:
            lo, hi = spans[-1]
            if hi is None:
                continue
            if first - hi - 1 <= gap:
                spans[-1] = (lo, None if last is None else max(hi, last))
                continue
        spans.append((first, last))
    if len(spans) > most:
        ends = [lo if hi is None else hi for lo, hi in spans]
        gaps = sorted(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - ends[i])
        joined = set(gaps[: len(spans) - most])
        merged: list[tuple[int, int | None]] = []
        for i, span in enumerate(spans):
            if merged and i - 1 in joined:
                merged[-1] = (merged[-1][0], span[1])
            else:
                merged.append(span)
        spans = merged
    size = max(1, table_blocks)
    covered = sum((size if hi is None else hi + 1) - lo for lo, hi in spans)
    if 2 * covered > size:
        return None
    return tuple(spans)


def blocks_of(heap_bytes: int) -> int:
    """A table's blocks, from its heap size (the statistics': a heuristic only)."""
    return -(-heap_bytes // _BLOCK)


def tid_ranges_sql(
    qualified: str,
    columns: Sequence[str],
    key_columns: Sequence[KeyColumn],
    where: str,
    spans: Written,
) -> str:
    """The rows of ``qualified`` in the blocks ``spans`` that pass ``where`` (on ``_t``), in
    key order: a TID range scan per span (PostgreSQL plans one range per scan; ranges joined
    with ``OR`` would scan the whole table)."""

    def cond(lo: int, hi: int | None) -> str:
        text = f"_t.ctid >= '({lo},0)'::tid"
        return text if hi is None else f"{text} AND _t.ctid < '({hi + 1},0)'::tid"

    if len(spans) == 1:
        return copy_select_sql(qualified, columns, key_columns, f"{cond(*spans[0])} AND {where}")
    cols = ", ".join(f"_t.{quote_ident(c)}" for c in columns)
    parts = " UNION ALL ".join(
        f"SELECT {cols} FROM ONLY {qualified} AS _t WHERE {cond(lo, hi)} AND {where}"
        for lo, hi in spans
    )
    return f"SELECT {cols} FROM ({parts}) AS _t ORDER BY {order_by(key_columns)}"
