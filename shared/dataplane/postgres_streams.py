"""Streams: what is read of each table, on which connection, into which chunks.

A table is planned (:func:`plan_table`) as ``FULL`` (a full backup), ``WHOLE`` (an incremental
that cannot store a delta: the reason is recorded) or ``DELTA`` (its changed rows and its key
set, see :mod:`.postgres_snapshots`). Each plan has a data stream and, for a delta, a key-set
stream: a single-integer key is stored as runs ``lo<TAB>hi`` of consecutive keys (computed by
the server with ``k - row_number()``), so dense keys are a few lines and appends or deletes
change a few lines; other keys as a key list. Key sets are chunked with small content-defined
chunks so unchanged key ranges dedupe against the previous one.

The work is split into lanes (:func:`assign_lanes`: balanced, largest first). A
:class:`DbReader` holds one database's worker connections, one per lane, each importing the
database's snapshot and locking every table of its lane ``NOWAIT`` as it opens (a lock asked
for later could queue behind a DDL statement waiting for the coordinator's locks, for ever). Large tables stream
through a ``psql`` child (C speed, 1 MiB pipe reads; a lock it cannot get ``NOWAIT`` falls
back to the worker's connection, which holds it); small ones through the worker's psycopg
connection. Small delta tables are read in batches (:class:`SmallDeltas`), small tables stored
whole are packed into shared chunks (:class:`SmallTables`). Every stream is cut
into content-defined chunks, hashed and compressed by the :class:`~.chunks.ChunkStore`, so
memory stays bounded whatever the table size.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import psycopg

from .chunks import PACK_CHUNKING, ChunkingParams, ChunkStore, StreamCancelled, StreamResult
from .errors import BackupError, ErrorCode, pg_error
from .manifest import (
    KeySet,
    KeySetFormat,
    Manifest,
    PgSnapshot,
    TableBackup,
    TableMode,
    unchanged_entry,
)
from .objectstore import ObjectStoreError
from .postgres_catalog import Table
from .postgres_snapshots import LOCK_NOT_AVAILABLE, changed_rows_filter, lock_tables
from .sql import (
    INT_KEY_TYPES,
    copy_encoding,
    copy_select_sql,
    encode_statement,
    encoded,
    order_by,
    quote_ident,
    quote_literal,
)

if TYPE_CHECKING:
    from .postgres import PostgresAdapter

__all__ = [
    "DbReader",
    "Flags",
    "SmallDeltas",
    "SmallTables",
    "Stream",
    "StreamOutcome",
    "StreamSettings",
    "TablePlan",
    "WorkItem",
    "assign_lanes",
    "key_stream",
    "lane_tables",
    "plan_table",
    "table_backup",
    "work_items",
]

_COPY_BLOCK = 1 << 20
_NUMERIC_OUT_OF_RANGE = "22003"
_SMALL_TABLE_BYTES = 1 << 20
"""DELTA tables up to this heap size are asked about in batches (see :class:`SmallDeltas`)."""
_BATCH_TABLES = 200
_PSQL_PACK_BYTES = 4 << 20
"""A pack of small tables of at least this heap size is read through ``psql`` (see
:meth:`DbReader.run_small_tables`)."""
_PACK_MARK = b"\\.pack:"
_PACK_TABLE_BYTES = 1 << 20
"""Tables stored whole up to this heap size share chunks (see :class:`SmallTables`): on a
schema of thousands of tenant tables of a thousand rows each (100 KiB), a chunk object, its
compression-level trial and its write per table cost more than the rows themselves."""


@dataclass(frozen=True)
class StreamSettings:
    """The adapter's settings a plan needs."""

    psql_min_bytes: int
    data_chunking: ChunkingParams
    key_chunking: ChunkingParams


@dataclass
class Stream:
    table: Table
    kind: str  # "data" | "keys"
    sql: str
    params: ChunkingParams
    key_format: KeySetFormat | None = None
    psql: bool = False
    estimate: int = 0
    where: str = ""
    """A DELTA's changed-rows filter (on ``_t``) for the probe of small tables (see
    :class:`SmallDeltas`), ``""`` otherwise."""


@dataclass
class StreamOutcome:
    result: StreamResult
    rows: int
    key_format: KeySetFormat | None = None
    unchanged: bool = False
    """A small delta table's data stream only: no row changed or deleted since the previous
    backup (nothing read; the table is stored ``UNCHANGED``)."""
    offset: int = 0
    """Where the stream starts in its first chunk (a table packed with others)."""
    size_bytes: int | None = None
    """A packed table's ``pg_total_relation_size``, read by the worker that read its rows."""


@dataclass
class TablePlan:
    table: Table
    mode: TableMode
    reason: str | None
    ordered: bool
    data: Stream
    keys: Stream | None = None
    previous: TableBackup | None = None
    """A delta's entry in the previous backup."""


@dataclass
class SmallDeltas:
    """Small DELTA tables read together, so a schema of thousands of tables costs a few round
    trips per batch rather than two COPYs per table.

    - *Changed rows*: one query counts, in one scan of each table of the batch (in the same
      snapshot), its rows and those that pass its changed-rows filter;
      only those with changed rows run their data COPY. The others' data streams are empty,
      exactly what their COPY would have returned.
    - *Unchanged tables*: a table without changed rows whose row count is the previous
      backup's ``live_rows`` is stored ``UNCHANGED`` (no key set read, nothing stored). Its
      rows are the previous backup's: every row without a changed-rows mark was written by a
      transaction visible to the previous snapshot and not deleted as of it (a deleter visible
      to that snapshot would be visible to ours), so the rows we see are a subset of the rows
      the previous backup holds, and a subset of the same size is the same set. A table with
      deletions only (fewer rows) still reads its key set.
    - *Key sets*: the ``RANGES`` key sets of the batch come from one ``COPY`` of the
      ``UNION ALL`` of the per-table range queries, prefixed with the table's position and
      ordered by it; each table's lines are cut out and stored as its own key set, byte for
      byte what its own query returns. Only one table's lines are in memory at a time.
    """

    plans: list[TablePlan]

    @property
    def estimate(self) -> int:
        return sum(p.data.estimate + (p.keys.estimate if p.keys else 0) for p in self.plans)


@dataclass
class SmallTables:
    """Small tables stored whole (a full's, an incremental's ``WHOLE`` ones) packed into
    shared chunks: their COPYs, one after the other on the lane's connection, make one stream
    cut with :data:`~.chunks.PACK_CHUNKING`, and each table records the chunks holding its
    bytes and where it starts in the first (``data_offset``). Thousands of tables of a few rows
    are a few objects, not one each (on S3 a request each, and a per-object minimum
    where the storage class has one), and compress together. Tables of one batch are
    consecutive in the stream in plan order, so a full of unchanged small tables dedupes
    against the previous one."""

    plans: list[TablePlan]

    @property
    def estimate(self) -> int:
        return sum(p.data.estimate for p in self.plans)


class Flags:
    """The request's cancel event and the backup's own abort event, as one flag."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [e for e in events if e is not None]

    def with_event(self, event: threading.Event) -> Flags:
        return Flags(*self._events, event)

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


class _LineCounter:
    def __init__(self) -> None:
        self.count = 0

    def wrap(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self.count += block.count(b"\n")
            yield block


class _RangeCounter:
    """Counts keys of a RANGES key set (``lo\\thi`` lines) while it streams."""

    def __init__(self) -> None:
        self.count = 0
        self._carry = b""

    def wrap(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            data = self._carry + block if self._carry else block
            lines = data.split(b"\n")
            self._carry = lines.pop()
            for line in lines:
                lo, hi = line.split(b"\t")
                self.count += int(hi) - int(lo) + 1
            yield block


class _Demux:
    """Cuts a COPY whose first column is a table's position (ascending) into each table's
    lines without that column, as that table's own query would have returned them. Blocks
    hold whole rows (psycopg's COPY yields one row per message)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._pieces = self._split(blocks)
        self._next = next(self._pieces, None)

    @staticmethod
    def _split(blocks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
        for block in blocks:
            current, lines = -1, bytearray()
            for line in block.split(b"\n")[:-1]:
                index, _tab, rest = line.partition(b"\t")
                position = int(index)
                if position != current and lines:
                    yield current, bytes(lines)
                    lines.clear()
                current = position
                lines += rest + b"\n"
            if lines:
                yield current, bytes(lines)

    def take(self, position: int) -> Iterator[bytes]:
        """The lines of the table at ``position`` (none if it has no row)."""
        while self._next is not None and self._next[0] <= position:
            if self._next[0] == position:
                yield self._next[1]
            self._next = next(self._pieces, None)

    def finish(self) -> None:
        if self._next is not None:
            raise BackupError(
                ErrorCode.INTERNAL,
                f"batched COPY returned rows for unknown table position {self._next[0]}",
                "split batched key sets",
            )


WorkItem = Stream | SmallDeltas | SmallTables


def work_items(plans: Sequence[TablePlan], lanes: int = 1) -> list[WorkItem]:
    """The units of work of a database's plans, largest first: small DELTA tables read
    through psycopg in batches of ``_BATCH_TABLES``, small tables stored whole packed in
    batches of at most as many (fewer, so that every one of ``lanes`` gets a pack), every other
    stream on its own."""
    small = [
        p
        for p in plans
        if p.mode == TableMode.DELTA
        and not p.data.psql
        and p.table.heap_bytes <= _SMALL_TABLE_BYTES
    ]
    packed = [
        p
        for p in plans
        if p.mode in (TableMode.FULL, TableMode.WHOLE)
        and p.keys is None
        and not p.data.psql
        and p.table.heap_bytes <= _PACK_TABLE_BYTES
    ]
    batched = {id(p) for p in (*small, *packed)}
    work: list[WorkItem] = [
        SmallDeltas(small[i : i + _BATCH_TABLES]) for i in range(0, len(small), _BATCH_TABLES)
    ]
    per_pack = max(1, min(_BATCH_TABLES, -(-len(packed) // max(1, lanes))))
    work += [SmallTables(packed[i : i + per_pack]) for i in range(0, len(packed), per_pack)]
    for p in plans:
        if id(p) not in batched:
            work += [p.data] if p.keys is None else [p.data, p.keys]
    work.sort(key=lambda w: w.estimate, reverse=True)
    return work


def assign_lanes(work: Sequence[WorkItem], count: int) -> list[list[WorkItem]]:
    """``work`` split into ``count`` lanes: each item, largest first, to the lane with the
    least estimated work so far (the lanes end close together)."""
    lanes: list[list[WorkItem]] = [[] for _ in range(max(1, count))]
    loads = [0] * len(lanes)
    for item in sorted(work, key=lambda w: w.estimate, reverse=True):
        lane = loads.index(min(loads))
        lanes[lane].append(item)
        loads[lane] += max(1, item.estimate)
    return lanes


def lane_tables(items: Sequence[WorkItem]) -> list[Table]:
    """The tables a lane reads (each once)."""
    tables: dict[int, Table] = {}
    for item in items:
        if isinstance(item, SmallDeltas | SmallTables):
            tables.update((p.table.oid, p.table) for p in item.plans)
        else:
            tables[item.table.oid] = item.table
    return list(tables.values())


def plan_table(
    table: Table,
    previous: Manifest | None,
    db: str,
    snapshot: PgSnapshot,
    global_reason: str | None,
    settings: StreamSettings,
) -> TablePlan:
    """How ``table`` is read: ``FULL`` without ``previous``, else ``DELTA`` unless a reason
    (``global_reason``, the key, the access method, ``reg*`` columns, a new or changed
    definition) stores it ``WHOLE``."""
    unsupported = table.unsupported_key()
    ordered = unsupported is None
    use_psql = table.heap_bytes >= settings.psql_min_bytes
    condition = table.extension_condition
    # pg_extension_config_dump's condition: "WHERE <expression>" (or empty: every row).
    where = re.sub(r"(?is)^\s*where\s", "", condition or "").strip()
    full_sql = copy_select_sql(
        table.qualified, table.columns, table.key_columns, f"({where})" if where else ""
    )
    data = Stream(
        table, "data", full_sql, settings.data_chunking, psql=use_psql, estimate=table.heap_bytes
    )
    if previous is None:
        return TablePlan(table, TableMode.FULL, None, ordered, data)
    if condition is not None:
        # Restored by appending to what CREATE EXTENSION creates, as pg_restore does.
        return TablePlan(table, TableMode.WHOLE, "extension configuration table", ordered, data)
    reason = global_reason or unsupported
    if reason is None and table.access_method != "heap":
        reason = f"table access method {table.access_method}"
    if reason is None and table.text_follows_names:
        reason = "a reg* column: its text follows the referenced objects' names"
    prev = previous.table(db, table.schema, table.name)
    if reason is None:
        if prev is None:
            reason = "new table"
        elif prev.fingerprint != table.fingerprint:
            reason = "definition changed"
        elif not prev.ordered:
            reason = "previous backup not in key order"
    if reason is not None:
        return TablePlan(table, TableMode.WHOLE, reason, ordered, data)
    since = previous.database(db).snapshot
    data = Stream(
        table,
        "data",
        copy_select_sql(
            table.qualified,
            table.columns,
            table.key_columns,
            changed_rows_filter(snapshot, since),
        ),
        settings.data_chunking,
        psql=use_psql,
        estimate=max(1, table.heap_bytes // 20),
        where=changed_rows_filter(snapshot, since, small=True),
    )
    keys = key_stream(table, use_psql, settings.key_chunking)
    return TablePlan(table, TableMode.DELTA, None, True, data, keys, prev)


def key_stream(
    table: Table, use_psql: bool, params: ChunkingParams, force_list: bool = False
) -> Stream:
    """The key set of a DELTA table: ranges of a single integer key, else the key list."""
    kcs = table.key_columns
    estimate = max(1, table.heap_bytes // 10)
    if len(kcs) == 1 and kcs[0].type in INT_KEY_TYPES and not force_list:
        k = f"_t.{quote_ident(kcs[0].name)}"
        sql = (
            "SELECT min(k), max(k) FROM (SELECT "
            f"{k} AS k, {k}::int8 - row_number() OVER (ORDER BY {k}) AS g"
            f" FROM ONLY {table.qualified} AS _t) AS s GROUP BY g ORDER BY 1"
        )
        return Stream(table, "keys", sql, params, KeySetFormat.RANGES, use_psql, estimate)
    cols = ", ".join(f"_t.{quote_ident(kc.name)}" for kc in kcs)
    sql = f"SELECT {cols} FROM ONLY {table.qualified} AS _t ORDER BY {order_by(kcs)}"
    return Stream(table, "keys", sql, params, KeySetFormat.KEYS, use_psql, estimate)


def table_backup(
    plan: TablePlan, outcomes: Mapping[int, StreamOutcome], sizes: Mapping[int, int]
) -> TableBackup:
    data = outcomes[id(plan.data)]
    if data.unchanged:
        assert plan.previous is not None
        return unchanged_entry(plan.previous)
    key_set: KeySet | None = None
    live_rows = data.rows
    if plan.keys is not None:
        keys = outcomes[id(plan.keys)]
        assert keys.key_format is not None
        key_set = KeySet(
            format=keys.key_format,
            chunks=keys.result.chunks,
            keys=keys.rows,
            size=keys.result.size,
        )
        live_rows = keys.rows
    t = plan.table
    return TableBackup(
        schema_name=t.schema,
        name=t.name,
        oid=t.oid,
        fingerprint=t.fingerprint,
        columns=t.columns,
        key_columns=t.key_columns,
        ordered=plan.ordered,
        mode=plan.mode,
        reason=plan.reason,
        rows=data.rows,
        live_rows=live_rows,
        data=data.result.chunks,
        data_size=data.result.size,
        data_offset=data.offset,
        key_set=key_set,
        size_bytes=sizes.get(t.oid, 0),
        extension_condition=t.extension_condition,
    )


_PackReader = Callable[
    [Sequence[TablePlan], Flags, list[tuple[int, int, int]], dict[int, int]], Iterator[bytes]
]
"""Reads a pack's tables: yields their bytes, records each one's span (start, end, rows) and
the exact sizes of their relations."""


def _pack_sections(blocks: Iterable[bytes], step: str) -> Iterator[tuple[int, bytes | None]]:
    """``psql``'s output for a pack cut at its ``\\.pack:<i>`` lines: ``(i, None)`` at each
    (in order from 0), then ``(i, data)`` for the complete lines that follow it. Anything
    before the first mark, a mark out of order or an unfinished last line fails ``step``."""
    marks = 0
    tail = bytearray()
    for block in blocks:
        tail += block
        cut = tail.rfind(b"\n") + 1
        if not cut:
            continue
        region = bytes(tail[:cut])
        del tail[:cut]
        pos = 0
        while pos < len(region):
            if region.startswith(_PACK_MARK, pos):
                end = region.index(b"\n", pos)
                if region[pos + len(_PACK_MARK) : end] != str(marks).encode():
                    raise BackupError(ErrorCode.DUMP_FAILED, "psql's output is out of order", step)
                yield marks, None
                marks, pos = marks + 1, end + 1
                continue
            if marks == 0:
                raise BackupError(ErrorCode.DUMP_FAILED, "psql's output is out of order", step)
            following = region.find(b"\n" + _PACK_MARK, pos)
            stop = len(region) if following < 0 else following + 1
            yield marks - 1, region[pos:stop]
            pos = stop
    if tail:
        raise BackupError(ErrorCode.DUMP_FAILED, "psql's output ended early", step)


@dataclass
class DbReader:
    """One database during a backup: its snapshot, the workers' connections, and the
    streams read on them."""

    adapter: PostgresAdapter
    name: str
    encoding: str
    snapshot_id: str
    psql: str
    """The ``psql`` of the client tools chosen for the server."""
    _conns: dict[int, psycopg.Connection[Any]] = field(default_factory=dict)
    """Lane → its worker connection."""
    _lanes: list[list[Table]] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_lanes(self, lanes: Sequence[Sequence[Table]]) -> None:
        """One worker connection per lane, opened now: each imports the snapshot and locks
        ``NOWAIT`` every table its lane will read (a reader that asked for its lock later
        would queue behind any DDL statement waiting for the coordinator's locks, and wait
        for ever). A table is locked by the lane that reads it, not by every worker, so all
        workers together hold about one lock per table in the server's lock table."""
        self._lanes = [list(tables) for tables in lanes]
        used = [lane for lane, tables in enumerate(self._lanes) if tables]
        if len(used) <= 1:
            for lane in used:
                self._conns[lane] = self._new_conn(lane)
            return
        # Opened side by side: on a schema of thousands of tables, each lane's locks take a
        # while. Every connection opened is kept (``close`` releases it) whatever failed.
        with ThreadPoolExecutor(max_workers=len(used), thread_name_prefix="pg-lane") as pool:
            opening = {lane: pool.submit(self._new_conn, lane) for lane in used}
        failure: BaseException | None = None
        for lane, future in opening.items():
            try:
                self._conns[lane] = future.result()
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def enter_lane(self, lane: int) -> None:
        """This thread reads the tables of ``lane`` (on that lane's connection)."""
        self._local.lane = lane

    def _new_conn(self, lane: int) -> psycopg.Connection[Any]:
        conn = self.adapter.connect(
            self.name, step=f"connect to database {self.name}", encoding=self.encoding
        )
        try:
            self.begin(conn, f"import snapshot in database {self.name}")
            lock_tables(conn, self._lanes[lane], self.name, nowait=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: psycopg.Connection[Any], step: str) -> None:
        try:
            for stmt in self.adapter.settings_sql().splitlines():
                conn.execute(stmt)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(self.snapshot_id)}")
        except psycopg.Error as exc:
            err = pg_error(exc, step)
            if err.code == ErrorCode.DUMP_FAILED:
                err = BackupError(
                    ErrorCode.SNAPSHOT_FAILED, err.message, step, sqlstate=err.sqlstate
                )
            raise err from None

    def _worker_conn(self) -> psycopg.Connection[Any]:
        lane: int = getattr(self._local, "lane", 0)
        with self._lock:
            conn = self._conns.get(lane)
        if conn is None:  # dropped after an error: a new one locks the lane's tables again
            conn = self._new_conn(lane)
            with self._lock:
                self._conns[lane] = conn
        return conn

    def _drop_conn(self) -> None:
        with self._lock:
            conn = self._conns.pop(getattr(self._local, "lane", 0), None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def rows(self, sql: str, step: str) -> list[tuple[Any, ...]]:
        """A query's rows on this thread's worker connection (in the snapshot)."""
        conn = self._worker_conn()
        try:
            return conn.execute(encoded(conn, sql)).fetchall()
        except psycopg.Error as exc:
            self._drop_conn()
            raise pg_error(exc, step) from None

    def psycopg_blocks(self, sql: str, step: str, flag: Flags) -> Generator[bytes, None, None]:
        conn = self._worker_conn()
        ok = False
        try:
            buf = bytearray()
            with conn.cursor() as cur, cur.copy(encoded(conn, sql)) as copy:
                for row in copy:
                    buf += row
                    if len(buf) >= _COPY_BLOCK:
                        if flag.is_set():
                            raise StreamCancelled()
                        yield bytes(buf)
                        buf.clear()
            if buf:
                yield bytes(buf)
            ok = True
        except psycopg.Error as exc:
            raise pg_error(exc, step) from None
        finally:
            if not ok:
                self._drop_conn()

    def psql_blocks(self, sql: str, step: str, flag: Flags, table: str) -> Iterator[bytes]:
        return self._psql(
            [f"LOCK TABLE {table} IN ACCESS SHARE MODE NOWAIT;", sql + ";"], step, flag
        )

    def _psql(self, statements: Sequence[str], step: str, flag: Flags) -> Iterator[bytes]:
        """``statements`` (which lock what they read ``NOWAIT``) in a ``psql`` session in the
        database's snapshot: its standard output, in blocks."""
        adapter = self.adapter
        script = "\n".join(
            [
                adapter.settings_sql(),
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;",
                f"SET TRANSACTION SNAPSHOT {quote_literal(self.snapshot_id)};",
                *statements,
                "COMMIT;",
                "",
            ]
        )
        cmd = [
            self.psql,
            "-X",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-d",
            adapter.tool_conninfo(self.name),
            "-f",
            "-",
        ]
        return adapter.run_tool(
            cmd,
            step=step,
            # psql sends the script as is and the server reads it in the client encoding: the
            # identifiers in it must be in the database's encoding, not UTF-8.
            stdin=encode_statement(script, self.encoding, copy_encoding(self.encoding)),
            extra_env={"PGCLIENTENCODING": copy_encoding(self.encoding)},
            flag=flag,
        )

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def run_stream(self, stream: Stream, chunks: ChunkStore, flag: Flags) -> StreamOutcome:
        try:
            return self._run_stream_once(stream, chunks, flag)
        except BackupError as exc:
            if stream.psql and exc.sqlstate == LOCK_NOT_AVAILABLE:
                # A DDL statement queued behind our locks: a new session would wait behind it,
                # the worker's connection already holds the lock.
                return self.run_stream(replace(stream, psql=False), chunks, flag)
            if stream.key_format == KeySetFormat.RANGES and exc.sqlstate == _NUMERIC_OUT_OF_RANGE:
                # int8 keys near -2^63 overflow k - row_number(): fall back to a key list.
                return self._run_stream_once(
                    key_stream(stream.table, stream.psql, self.adapter.key_chunking, True),
                    chunks,
                    flag,
                )
            raise

    def run_small_deltas(
        self, batch: SmallDeltas, chunks: ChunkStore, flag: Flags
    ) -> list[tuple[Stream, StreamOutcome]]:
        """The data and key streams of a batch of small DELTA tables (see :class:`SmallDeltas`)."""
        plans = batch.plans
        # One scan of each (small) table counts its rows and its changed rows.
        probe = " UNION ALL ".join(
            f"SELECT {i}, count(*) FILTER (WHERE {p.data.where}), count(*)"
            f" FROM ONLY {p.table.qualified} AS _t"
            for i, p in enumerate(plans)
        )
        found = self.rows(probe, f"in database {self.name}: {probe[:500]}")
        changed = {int(r[0]) for r in found if int(r[1]) > 0}
        counts = {int(r[0]): int(r[2]) for r in found}
        out: list[tuple[Stream, StreamOutcome]] = []
        unchanged: set[int] = set()
        for i, p in enumerate(plans):
            if flag.is_set():
                raise StreamCancelled()
            if i in changed:
                out.append((p.data, self.run_stream(p.data, chunks, flag)))
                continue
            same = p.previous is not None and counts[i] == p.previous.live_rows
            if same:
                unchanged.add(id(p))
            # what the COPY of no row stores
            empty = StreamOutcome(StreamResult(chunks=[], size=0), rows=0, unchanged=same)
            out.append((p.data, empty))
        keys = [p.keys for p in plans if p.keys is not None and id(p) not in unchanged]
        ranges = [k for k in keys if k.key_format == KeySetFormat.RANGES]
        try:
            out += self._run_key_ranges(ranges, chunks, flag)
        except BackupError as exc:
            if exc.sqlstate != _NUMERIC_OUT_OF_RANGE:
                raise
            # int8 keys near -2^63: each table on its own (a key list where it overflows).
            out += [(k, self.run_stream(k, chunks, flag)) for k in ranges]
        out += [
            (k, self.run_stream(k, chunks, flag))
            for k in keys
            if k.key_format != KeySetFormat.RANGES
        ]
        return out

    def run_small_tables(
        self, batch: SmallTables, chunks: ChunkStore, flag: Flags
    ) -> list[tuple[Stream, StreamOutcome]]:
        """The data streams of a batch of small tables stored whole, packed into shared chunks
        (see :class:`SmallTables`). A pack of :data:`_PSQL_PACK_BYTES` or more is read through
        one ``psql`` (:meth:`_pack_psql`), a smaller one on the lane's connection."""
        if sum(p.table.heap_bytes for p in batch.plans) >= _PSQL_PACK_BYTES:
            try:
                return self._run_pack(batch, chunks, flag, self._pack_psql)
            except BackupError as exc:
                if exc.sqlstate != LOCK_NOT_AVAILABLE:
                    raise
                # A DDL statement queued behind our locks (before any row was read): a new
                # session would wait behind it, the lane's connection already holds the locks.
        return self._run_pack(batch, chunks, flag, self._pack_psycopg)

    def _run_pack(
        self, batch: SmallTables, chunks: ChunkStore, flag: Flags, read: _PackReader
    ) -> list[tuple[Stream, StreamOutcome]]:
        spans: list[tuple[int, int, int]] = []  # start, end, rows of each table in the pack
        sizes: dict[int, int] = {}
        try:
            result = chunks.write_stream(
                read(batch.plans, flag, spans, sizes), PACK_CHUNKING, cancel=flag
            )
        except ObjectStoreError as exc:
            raise BackupError(
                ErrorCode.STORE_FAILED,
                str(exc),
                f"store chunks of {self.name}: {len(batch.plans)} small tables from"
                f" {batch.plans[0].table.label}",
            ) from None
        starts = [0]
        for ref in result.chunks:
            starts.append(starts[-1] + ref.size)
        out = []
        for plan, (start, end, rows) in zip(batch.plans, spans, strict=True):
            if start == end:
                refs, offset = [], 0
            else:
                first = bisect.bisect_right(starts, start) - 1
                last = bisect.bisect_left(starts, end) - 1
                refs, offset = result.chunks[first : last + 1], start - starts[first]
            piece = StreamResult(chunks=refs, size=end - start)
            outcome = StreamOutcome(
                piece, rows, offset=offset, size_bytes=sizes.get(plan.table.oid)
            )
            out.append((plan.data, outcome))
        return out

    def _sizes_sql(self, plans: Sequence[TablePlan]) -> str:
        """The exact sizes of ``plans``' tables, read on the session that has just read them:
        its relation cache already holds them and their indexes (another session would build
        every entry)."""
        oids = ",".join(str(plan.table.oid) for plan in plans)
        return f"SELECT o::int8, pg_total_relation_size(o) FROM unnest('{{{oids}}}'::oid[]) o"

    def _pack_psycopg(
        self,
        plans: Sequence[TablePlan],
        flag: Flags,
        spans: list[tuple[int, int, int]],
        sizes: dict[int, int],
    ) -> Iterator[bytes]:
        """The pack's tables, one ``COPY`` after the other on the lane's connection."""
        position = 0
        for plan in plans:
            if flag.is_set():
                raise StreamCancelled()
            sql = f"COPY ({plan.data.sql}) TO STDOUT"
            start, rows = position, 0
            for block in self.psycopg_blocks(sql, f"in database {self.name}: {sql}", flag):
                rows += block.count(b"\n")
                position += len(block)
                yield block
            spans.append((start, position, rows))
        step = f"in database {self.name}: read the sizes of {len(plans)} small tables"
        sizes.update(
            (int(oid), int(size))
            for oid, size in self.rows(self._sizes_sql(plans), step)
            if size is not None
        )

    def _pack_psql(
        self,
        plans: Sequence[TablePlan],
        flag: Flags,
        spans: list[tuple[int, int, int]],
        sizes: dict[int, int],
    ) -> Iterator[bytes]:
        """The pack's tables in one ``psql`` session: their rows stream in C, where the lane's
        connection costs a Python call per row (seconds on thousands of tenant tables of a
        thousand rows). Each table's ``COPY`` follows a line ``\\.pack:<i>``, which no
        ``COPY`` text line can be (a backslash in a row is always followed by an escape
        letter, a digit or a backslash), and after the last table come their exact sizes.
        The bytes of each table are those its own ``COPY`` gives on the lane's connection."""
        n = len(plans)
        step = f"psql COPY of {n} small tables from {plans[0].table.label} in database {self.name}"
        tables = ", ".join("ONLY " + plan.table.qualified for plan in plans)
        statements = [f"LOCK TABLE {tables} IN ACCESS SHARE MODE NOWAIT;"]
        for i, plan in enumerate(plans):
            statements += [f"\\echo '\\\\.pack:{i}'", f"COPY ({plan.data.sql}) TO STDOUT;"]
        statements += [f"\\echo '\\\\.pack:{n}'", f"COPY ({self._sizes_sql(plans)}) TO STDOUT;"]
        position = start = rows = 0
        last = -1
        size_lines = bytearray()
        for index, data in _pack_sections(self._psql(statements, step, flag), step):
            if data is None:  # the start of table ``index`` (``n``: the sizes)
                if index:
                    spans.append((start, position, rows))
                start, rows, last = position, 0, index
            elif index == n:
                size_lines += data
            else:
                rows += data.count(b"\n")
                position += len(data)
                yield data
        if last != n:
            raise BackupError(ErrorCode.DUMP_FAILED, "psql's output ended early", step)
        for line in bytes(size_lines).splitlines():
            oid, size = line.split(b"\t")
            if size != b"\\N":
                sizes[int(oid)] = int(size)

    def _run_key_ranges(
        self, streams: Sequence[Stream], chunks: ChunkStore, flag: Flags
    ) -> list[tuple[Stream, StreamOutcome]]:
        """``RANGES`` key sets of single-integer-key tables, from one COPY."""
        if not streams:
            return []
        parts = []
        for i, stream in enumerate(streams):
            k = f"_t.{quote_ident(stream.table.key_columns[0].name)}"
            parts.append(
                f"SELECT {i} AS i, {k}::int8 AS k,"
                f" {k}::int8 - row_number() OVER (ORDER BY {k}) AS g"
                f" FROM ONLY {stream.table.qualified} AS _t"
            )
        sql = (
            f"COPY (SELECT i, min(k), max(k) FROM ({' UNION ALL '.join(parts)}) AS s"
            " GROUP BY i, g ORDER BY i, 2) TO STDOUT"
        )
        blocks = self.psycopg_blocks(sql, f"in database {self.name}: {sql[:500]}", flag)
        demux = _Demux(blocks)
        out = []
        try:
            for i, stream in enumerate(streams):
                counter = _RangeCounter()
                result = self._store(stream, counter.wrap(demux.take(i)), chunks, flag)
                out.append((stream, StreamOutcome(result, counter.count, KeySetFormat.RANGES)))
            demux.finish()
        finally:
            blocks.close()
        return out

    def _run_stream_once(self, stream: Stream, chunks: ChunkStore, flag: Flags) -> StreamOutcome:
        sql = f"COPY ({stream.sql}) TO STDOUT"
        step = f"in database {self.name}: {sql}"
        blocks = (
            self.psql_blocks(sql, step, flag, "ONLY " + stream.table.qualified)
            if stream.psql
            else self.psycopg_blocks(sql, step, flag)
        )
        counter: _LineCounter | _RangeCounter
        counter = _RangeCounter() if stream.key_format == KeySetFormat.RANGES else _LineCounter()
        result = self._store(stream, counter.wrap(blocks), chunks, flag)
        return StreamOutcome(result=result, rows=counter.count, key_format=stream.key_format)

    def _store(
        self, stream: Stream, blocks: Iterable[bytes], chunks: ChunkStore, flag: Flags
    ) -> StreamResult:
        """``blocks`` chunked and stored with the stream's chunking (errors name the table)."""
        try:
            return chunks.write_stream(blocks, stream.params, cancel=flag)
        except ObjectStoreError as exc:
            raise BackupError(
                ErrorCode.STORE_FAILED,
                str(exc),
                f"store chunks of {self.name}.{stream.table.label}",
            ) from None
