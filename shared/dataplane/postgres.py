"""The ``postgres`` engine adapter: logical, streaming, deduplicated full and incremental backups.

What a backup holds
===================
- **One exported snapshot per database, all taken up front.** For each database a coordinator
  connection opens a ``REPEATABLE READ READ ONLY`` transaction and runs
  ``pg_export_snapshot()``; the snapshots of all databases (in groups of
  ``max_held_snapshots``) are taken back to back before any data is read, and each stays open
  until its database is done. Every worker connection of that database imports it with ``SET
  TRANSACTION SNAPSHOT`` and ``pg_dump --snapshot`` uses it for the schema, so a database is
  read at one instant, as ``pg_dump -j`` does. (PostgreSQL refuses to import a snapshot into
  another database, so a single cluster-wide snapshot is impossible; databases do not share
  transactions, so per-database consistency is what a restore can observe.) A snapshot's time
  is ``statement_timestamp()`` of the statement that took it; the backup's ``data_from`` is the
  earliest of them: every transaction committed before ``data_from`` is in the backup.
- **Globals**: ``pg_dumpall --globals-only`` (roles, tablespaces); when the role may not read
  ``pg_authid`` it is retried with ``--no-role-passwords`` (recorded in the manifest).
- **Which databases**: every database that allows connections, templates included; the others
  (``ALLOW_CONNECTIONS false``, ``template0``) are listed in ``catalog.skipped_databases``
  with the reason, never left out silently.
- **Per database**: a ``pg_dump -Fc -b --exclude-table-data='*.*'`` archive (the schema and
  the large objects with owners, ACLs and comments; restores filter it with
  ``pg_restore -l``/``-L``), sequence states (``last_value``, ``is_called``), materialized views
  (populated or not: a restore refreshes them, as ``pg_restore`` does), the database's own
  properties (settings, role-in-database settings, comment, connection limit, owner, ACL), its
  oid (its identity), and per table (``relkind = 'r'``, including partitions and unlogged
  tables; extension-owned tables are left to ``CREATE EXTENSION`` except configuration tables
  registered with ``pg_extension_config_dump``, whose rows matching their condition are stored
  whole) the rows by ``COPY (SELECT cols FROM ONLY t ORDER BY key) TO STDOUT``.
- **Locks and concurrent DDL**: when a database's turn comes its coordinator takes ``ACCESS
  SHARE`` locks on its tables, then checks each against the snapshot's catalog: the same oid
  under the same name (``to_regclass``) and the same storage (``pg_relation_filenode``).
  ``TRUNCATE`` and table rewrites are not MVCC-safe: a table truncated, rewritten, dropped or
  replaced between the snapshot and the locks would read as empty or missing. Any difference
  retakes the database's snapshot (at most five times, then ``SNAPSHOT_FAILED``). The worker
  connections import the snapshot and lock every table ``NOWAIT`` right away: a DDL statement
  already queued behind the coordinator's locks would make any later lock request (a reader's,
  ``pg_dump``'s) wait for ever, so it retakes the snapshot too (after the DDL ran); ``psql``
  streams lock ``NOWAIT`` and fall back to the worker's connection, and ``pg_dump`` gets
  ``--lock-wait-timeout`` and a retake. ``pg_dump`` also reads some definitions (views,
  functions, types) in the current catalog, not the snapshot: one dropped meanwhile fails it,
  and that too retakes the snapshot. A sequence dropped before its value is read does too.
  Once the locks are checked the schema dump starts, then the workers lock, then sequences and
  the database's own state are read; any retake stops that attempt's schema dump. Tables are
  then read in parallel (``parallelism`` connections, default 2, largest first by the
  statistics' ``relpages``, as ``pg_dump -j`` orders them): no DDL can rewrite them under the
  snapshot.
- **Thousands of tables**: every catalog read is one set-based query per database whatever the
  table count (tables, their columns' type closures, sequences in batches, locks in batches of
  500, identities in one ``unnest``); the catalog queries run with ``jit = off``. Each table
  costs one ``COPY`` in a full; in an incremental, small unchanged tables cost no ``COPY`` of
  their own (see :class:`_SmallDeltas`). The lock table must hold ``parallelism + 2`` locks
  per table (the coordinator's, each worker's, ``pg_dump``'s): ``max_locks_per_transaction x
  max_connections`` sized for the table count, as ``pg_dump`` itself asks.
- **Text COPY, not binary**: text is what ``pg_dump`` uses; it works for every type (extension
  types without binary send/receive functions break binary COPY), restores into other
  PostgreSQL major versions and architectures, compresses as well, and lets a restore parse the
  key columns without type-specific binary decoders. Session settings are pinned
  (``DateStyle=ISO``, ``extra_float_digits=3``, ``TimeZone=UTC``, ``bytea_output=hex``,
  client encoding = the database's encoding) and replayed on restore.
- **Key order that Python can merge**: text/varchar keys are ordered ``COLLATE "C"`` (byte
  order in the database encoding), so a restore merges incrementals with plain byte
  comparisons whatever the database's collation. Keys of other types than ``int2``, ``int4``,
  ``int8``, ``oid``, ``text``, ``varchar``, ``uuid``, ``bytea`` and ``bool`` are still dumped in
  key order but such tables are stored whole in incrementals.
- Large tables stream through a ``psql`` child (C speed, 1 MiB pipe reads); small ones through
  the worker's psycopg connection (no process start per table). Both import the snapshot.
  Every stream is cut into content-defined chunks, hashed and zstd-compressed in a thread pool
  (:mod:`.chunks`), so memory stays bounded whatever the table size.

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

Errors are :class:`~.engine.BackupError` with codes ``CONNECTION_FAILED``,
``AUTHENTICATION_FAILED``, ``PERMISSION_DENIED``, ``SNAPSHOT_FAILED``, ``DUMP_FAILED``,
``STORE_FAILED``, ``UNSUPPORTED``, ``TOOL_MISSING``, ``CANCELLED`` and the failing step or
statement. Connection parameters are a libpq DSN *without* password; secrets come from
``password=`` or libpq's own mechanisms (``env={"PGPASSFILE": ...}``, ``~/.pgpass``) and are
passed to child processes through their environment only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .chunks import (
    DATA_CHUNKING,
    KEY_CHUNKING,
    ChunkingParams,
    ChunkStore,
    StreamCancelled,
    StreamResult,
)
from .engine import BackupError, BackupRequest, EngineAdapter, ErrorCode
from .errors import pg_error
from .manifest import (
    BackupType,
    Catalog,
    CatalogDatabase,
    CatalogSchema,
    CatalogTable,
    ChunkRef,
    DatabaseBackup,
    DatabaseProperties,
    KeyColumn,
    KeySet,
    KeySetFormat,
    Manifest,
    MatView,
    PgSnapshot,
    RoleSettings,
    SequenceValue,
    SkippedDatabase,
    TableBackup,
    TableMode,
    Totals,
    save_manifest,
)
from .objectstore import ObjectExists, ObjectStore, ObjectStoreError
from .restore_rows import iter_table_rows
from .sql import (
    BYTES_KEY_TYPES,
    INT_KEY_TYPES,
    SESSION_SETTINGS,
    copy_select_sql,
    order_by,
    python_codec,
    quote_ident,
    quote_literal,
)
from .tools import find_pg_tool, run_tool

# The SQL helpers and find_pg_tool live in .sql and .tools; re-exported for older imports.
__all__ = [
    "BYTES_KEY_TYPES",
    "INT_KEY_TYPES",
    "SESSION_SETTINGS",
    "PostgresAdapter",
    "copy_select_sql",
    "find_pg_tool",
    "quote_ident",
]

_XID_WINDOW = 1 << 31
_COPY_BLOCK = 1 << 20
_MIN_SERVER_VERSION = 130000  # pg_current_snapshot() / xid8
_MAX_RETAKES = 5
_DUMP_LOCK_WAIT_MS = 5_000
_LOCK_NOT_AVAILABLE = "55P03"
_NUMERIC_OUT_OF_RANGE = "22003"
_SMALL_TABLE_BYTES = 1 << 20
"""DELTA tables up to this heap size are asked about in batches (see :class:`_SmallDeltas`)."""
_BATCH_TABLES = 200
_UNDEFINED_TABLE = "42P01"


_DROPPED_SINCE_SNAPSHOT = re.compile(
    r"could not open relation with OID|cache lookup failed|with OID \d+ does not exist"
)


class _Retake(Exception):
    """Concurrent DDL got between a database's snapshot and its locks: take a new snapshot."""


# ------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class _DbInfo:
    name: str
    encoding: str
    collate: str
    ctype: str
    size: int
    oid: int
    is_template: bool


@dataclass(frozen=True)
class _DbJob:
    """What backing up one database needs besides its (retakeable) snapshot."""

    info: _DbInfo
    conn: psycopg.Connection[Any]
    """The coordinator: holds the snapshot's transaction and the locks."""
    previous: Manifest | None
    global_reason: str | None
    chunks: ChunkStore
    table_pool: ThreadPoolExecutor
    dump_pool: ThreadPoolExecutor
    flag: _Flags
    request: BackupRequest


@dataclass(frozen=True)
class _Table:
    oid: int
    schema: str
    name: str
    heap_bytes: int
    """The heap's size from the statistics (``relpages``; exact when never analysed): it
    orders the streams and picks their transport, never what is read."""
    columns: list[str]
    key_columns: list[KeyColumn]
    fingerprint: str
    access_method: str
    text_follows_names: bool = False
    """A column's type closure holds a ``reg*`` type: its text follows other objects' names."""
    extension_condition: str | None = None
    """An extension configuration table: the ``WHERE`` clause of the rows ``pg_dump`` keeps
    (``""``: all); ``None`` for ordinary tables."""

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    def unsupported_key(self) -> str | None:
        if not self.key_columns:
            return "no primary key"
        for kc in self.key_columns:
            if kc.name not in self.columns:
                return f"primary key on generated column {kc.name}"
            if kc.type not in INT_KEY_TYPES and kc.type not in BYTES_KEY_TYPES:
                return f"primary key type {kc.type} not supported for incrementals"
        return None


@dataclass
class _Stream:
    table: _Table
    kind: str  # "data" | "keys"
    sql: str
    params: ChunkingParams
    key_format: KeySetFormat | None = None
    psql: bool = False
    estimate: int = 0
    where: str = ""
    """A DELTA's changed-rows filter (on ``_t``), ``""`` otherwise."""


@dataclass
class _StreamOutcome:
    result: StreamResult
    rows: int
    key_format: KeySetFormat | None = None


@dataclass
class _TablePlan:
    table: _Table
    mode: TableMode
    reason: str | None
    ordered: bool
    data: _Stream
    keys: _Stream | None = None


@dataclass
class _SmallDeltas:
    """Small DELTA tables read together, so a schema of thousands of tables costs a few round
    trips per batch rather than two COPYs per table.

    - *Changed rows*: one query asks which tables of the batch have a row that passes their
      changed-rows filter (``EXISTS``, in the same snapshot); only those run their data
      COPY. The others' data streams are empty, exactly what their COPY would have returned.
    - *Key sets*: the ``RANGES`` key sets of the batch come from one ``COPY`` of the
      ``UNION ALL`` of the per-table range queries, prefixed with the table's position and
      ordered by it; each table's lines are cut out and stored as its own key set, byte for
      byte what its own query returns. Only one table's lines are in memory at a time.
    """

    plans: list[_TablePlan]

    @property
    def estimate(self) -> int:
        return sum(p.data.estimate + (p.keys.estimate if p.keys else 0) for p in self.plans)


class _Flags:
    """The request's cancel event and the backup's own abort event, as one flag."""

    def __init__(self, *events: threading.Event | None) -> None:
        self._events = [e for e in events if e is not None]

    def with_event(self, event: threading.Event) -> _Flags:
        return _Flags(*self._events, event)

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


# ------------------------------------------------------------------------------ catalog SQL
_DATABASES_SQL = """
SELECT d.datname, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END,
       d.oid::int8, d.datistemplate
FROM pg_database d
WHERE d.datallowconn
ORDER BY d.datname
"""

# Databases no backup can read: listed in the catalog with the reason, never left out silently.
_SKIPPED_DATABASES_SQL = """
SELECT d.datname FROM pg_database d WHERE NOT d.datallowconn ORDER BY d.datname
"""

_PROPERTIES_SQL = """
SELECT pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit,
       shobj_description(d.oid, 'pg_database'),
       ARRAY(SELECT coalesce(r.rolname, '') || chr(1) || array_to_string(s.setconfig, chr(2))
             FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
             WHERE s.setdatabase = d.oid ORDER BY 1)
FROM pg_database d WHERE d.datname = current_database()
"""

_MATVIEWS_SQL = """
SELECT n.nspname, c.relname, c.relispopulated FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""

_SCHEMAS_SQL = """
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                  AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY n.nspname
"""

_TABLES_SQL = """
SELECT c.oid::int8, n.nspname, c.relname,
       CASE WHEN c.reltuples < 0 THEN coalesce(pg_relation_size(c.oid), 0)
            ELSE c.relpages::int8 * current_setting('block_size')::int8 END,
       NULL::int8,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' ORDER BY a.attnum),
       ARRAY(SELECT a.attname::text FROM unnest(pk.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord),
       ARRAY(SELECT (CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END)::text
             FROM unnest(pk.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
             ORDER BY k.ord),
       (SELECT string_agg(concat_ws(':', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                                    a.attcollation, a.attgenerated, a.attnotnull,
                                    (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                     FROM pg_enum e
                                     WHERE e.enumtypid IN (a.atttypid, t.typbasetype, t.typelem))),
                          '|' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       coalesce(am.amname, 'heap'), c.relkind::text, c.relfilenode::int8,
       ARRAY(SELECT DISTINCT a.atttypid::int8 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT coalesce(x.extcondition[array_position(x.extconfig, c.oid)], '')
        FROM pg_extension x WHERE c.oid = ANY (x.extconfig) LIMIT 1)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u')
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND (NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
       OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
ORDER BY n.nspname, c.relname
"""

# The type closure of every column type of the database, in one set-based pass (a recursive
# query per table costs a millisecond each: seconds on a multi-tenant schema of thousands of
# tables). Per root type: every type reachable through array elements, domain bases, composite
# attributes, range subtypes and multirange ranges, to depth 32.
_TYPE_CLOSURES_SQL = """
WITH RECURSIVE roots AS (
  SELECT DISTINCT a.atttypid AS root FROM pg_attribute a
  WHERE a.attrelid = ANY (%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
), closure(root, typ, depth) AS (
  SELECT root, root, 0 FROM roots
  UNION
  SELECT cl.root, x.typ, cl.depth + 1 FROM closure cl JOIN pg_type t ON t.oid = cl.typ
  CROSS JOIN LATERAL (
    SELECT t.typelem WHERE t.typelem <> 0
    UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
    UNION ALL SELECT a2.atttypid FROM pg_attribute a2
              WHERE t.typrelid <> 0 AND a2.attrelid = t.typrelid AND a2.attnum > 0
                AND NOT a2.attisdropped
    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid
  ) AS x(typ)
  WHERE cl.depth < 32
)
SELECT root::int8, array_agg(DISTINCT typ::int8) FROM closure GROUP BY root
"""

# What a type contributes to a fingerprint: name, kind, base, typmod, not-null, collation, enum
# labels, composite attributes, the owning extension's version; and whether it is a ``reg*``
# type (whose text follows other objects' names).
_TYPE_DESCRIPTIONS_SQL = """
SELECT t.oid::int8,
       concat_ws(':', t.oid, format_type(t.oid, NULL), t.typtype,
                 t.typbasetype, t.typtypmod, t.typnotnull, t.typcollation,
                 (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = t.oid),
                 (SELECT string_agg(a3.attname || ' ' || a3.atttypid || ' ' || a3.atttypmod
                                    || ' ' || a3.attcollation, ',' ORDER BY a3.attnum)
                  FROM pg_attribute a3 WHERE t.typrelid <> 0 AND a3.attrelid = t.typrelid
                    AND a3.attnum > 0 AND NOT a3.attisdropped),
                 (SELECT string_agg(x.extname || ' ' || x.extversion, ',')
                  FROM pg_depend dp JOIN pg_extension x ON x.oid = dp.refobjid
                  WHERE dp.classid = 'pg_type'::regclass AND dp.objid = t.oid
                    AND dp.deptype = 'e')),
       t.typnamespace = 'pg_catalog'::regnamespace
         AND t.typname IN ('regclass', 'regtype', 'regproc', 'regprocedure', 'regoper',
                           'regoperator', 'regconfig', 'regdictionary', 'regnamespace',
                           'regrole', 'regcollation')
FROM pg_type t WHERE t.oid = ANY (%s::oid[])
"""


# Exact sizes open every relation (its table, indexes, TOAST): about a millisecond per table
# on a fresh connection. They are read while the rows stream (the coordinator is idle then);
# planning uses the heap size from the statistics, as pg_dump -j orders its tables by relpages.
_TABLE_SIZES_SQL = """
SELECT x.oid::int8, coalesce(pg_total_relation_size(x.oid), 0)
FROM unnest(%s::oid[]) AS x(oid)
"""

_SEQUENCES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""


# ------------------------------------------------------------------------------ the adapter
class PostgresAdapter(EngineAdapter):
    """Backs up one PostgreSQL cluster reachable through ``dsn`` (libpq DSN, no password).

    - ``dsn``: keyword or URI form; names the maintenance database the coordinator connects to
      (default ``postgres``). Every database that allows connections is backed up.
    - ``password`` / ``env``: secrets, never logged. ``env`` holds libpq variables
      (``PGPASSFILE``, ``PGSSLMODE``, ...): applied to psycopg connections and to the child
      tools' environment. Without them libpq's defaults apply (``~/.pgpass``, ``PGPASSWORD``).
    - ``parallelism``: tables read at once (connections per database, besides the one holding
      the snapshot); ``chunk_workers``: threads hashing/compressing/uploading chunks.
    - ``compression_level``: a fixed zstd level, or ``None`` (adaptive 1-or-3 per stream).
    - ``psql_min_bytes``: heap size from which a table streams through ``psql`` rather than the
      worker's psycopg connection.
    - ``lock_timeout_ms``: how long to wait for the ``ACCESS SHARE`` locks (0: forever).
    - ``max_held_snapshots``: databases whose snapshots are taken together up front.
    """

    engine = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        parallelism: int = 2,
        chunk_workers: int | None = None,
        compression_level: int | None = None,
        psql_min_bytes: int = 16 << 20,
        data_chunking: ChunkingParams = DATA_CHUNKING,
        key_chunking: ChunkingParams = KEY_CHUNKING,
        bindir: Path | None = None,
        connect_timeout: int = 15,
        lock_timeout_ms: int = 0,
        max_held_snapshots: int = 16,
    ) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid libpq DSN: {str(exc).splitlines()[0]}") from None
        if "password" in params:
            raise ValueError(
                "the DSN must not contain a password: pass password= or use PGPASSFILE"
            )
        self.dsn = dsn
        self.default_db = str(params.get("dbname") or "postgres")
        self._password = password
        self._env = dict(env or {})
        self.parallelism = max(1, parallelism)
        self.chunk_workers = chunk_workers or max(2, (os.cpu_count() or 2))
        self.compression_level = compression_level
        self.psql_min_bytes = psql_min_bytes
        self.data_chunking = data_chunking
        self.key_chunking = key_chunking
        self.bindir = bindir
        self.connect_timeout = connect_timeout
        self.lock_timeout_ms = lock_timeout_ms
        self.max_held_snapshots = max_held_snapshots

    def __repr__(self) -> str:
        return f"PostgresAdapter({self.dsn!r})"

    # ------------------------------------------------------------------ connections
    _LIBPQ_ENV = {
        "PGPASSWORD": "password",
        "PGPASSFILE": "passfile",
        "PGSSLMODE": "sslmode",
        "PGSSLCERT": "sslcert",
        "PGSSLKEY": "sslkey",
        "PGSSLROOTCERT": "sslrootcert",
        "PGSSLPASSWORD": "sslpassword",
        "PGUSER": "user",
        "PGHOST": "host",
        "PGPORT": "port",
        "PGREQUIREAUTH": "require_auth",  # only pass it where psycopg's libpq is 16 or newer
    }

    def _conn_kwargs(self, dbname: str, encoding: str = "UTF8") -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for var, param in self._LIBPQ_ENV.items():
            if var in self._env and param not in conninfo_to_dict(self.dsn):
                kwargs[param] = self._env[var]
        if self._password is not None:
            kwargs["password"] = self._password
        kwargs.update(
            dbname=dbname,
            connect_timeout=self.connect_timeout,
            application_name="managed-backups",
            client_encoding=encoding,
        )
        return kwargs

    def connect(
        self, dbname: str | None = None, *, step: str | None = None, encoding: str = "UTF8"
    ) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection to ``dbname`` (errors as ``BackupError``)."""
        db = dbname or self.default_db
        try:
            return psycopg.connect(self.dsn, autocommit=True, **self._conn_kwargs(db, encoding))
        except psycopg.Error as exc:
            err = pg_error(exc, step or f"connect to database {db}")
            if err.code == ErrorCode.DUMP_FAILED:
                err = BackupError(ErrorCode.CONNECTION_FAILED, err.message, err.step)
            raise err from None

    def _tool_conninfo(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname, application_name="managed-backups")

    def _child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)  # libpq's own mechanisms (PGPASSFILE, PGPASSWORD...) apply
        env.update(self._env)
        if self._password is not None:
            env["PGPASSWORD"] = self._password
        env.setdefault("PGCONNECT_TIMEOUT", str(self.connect_timeout))
        if extra:
            env.update(extra)
        return env

    def _settings_sql(self, encoding: str | None = None) -> str:
        sets = [f"SET {name} = {quote_literal(value)};" for name, value in SESSION_SETTINGS]
        sets.append(f"SET lock_timeout = {int(self.lock_timeout_ms)};")
        # The catalog queries are costed high (one row per table, correlated subqueries): the
        # JIT would compile them for seconds to run them for milliseconds. pg_dump's plain
        # COPY never reaches it; our COPY (SELECT ...) need not either.
        sets.append("SET jit = off;")
        if encoding:
            sets.append(f"SET client_encoding = {quote_literal(encoding)};")
        return "\n".join(sets)

    def _run_tool(
        self,
        cmd: list[str],
        *,
        step: str,
        stdin: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
        flag: _Flags | None = None,
    ) -> Iterator[bytes]:
        return run_tool(cmd, env=self._child_env(extra_env), step=step, stdin=stdin, cancel=flag)

    # ------------------------------------------------------------------ public API
    def full_backup(self, request: BackupRequest) -> Manifest:
        return self._backup(request, None)

    def incremental_backup(self, request: BackupRequest, previous: Manifest) -> Manifest:
        if previous.cluster_id != request.cluster_id:
            raise BackupError(
                ErrorCode.INVALID_CHAIN,
                f"previous backup {previous.backup_id} belongs to cluster {previous.cluster_id}",
                "check previous backup",
            )
        if previous.engine != self.engine:
            raise BackupError(
                ErrorCode.INVALID_CHAIN,
                "previous backup is of another engine",
                "check previous backup",
            )
        return self._backup(request, previous)

    def catalog(self) -> Catalog:
        """The live catalog (row counts are the planner's estimates)."""
        with self.connect(step="connect") as conn:
            dbs = conn.execute(_DATABASES_SQL).fetchall()
        out: list[CatalogDatabase] = []
        for name, _enc, _col, _ctype, size, *_rest in dbs:
            with self.connect(name, step=f"connect to database {name}") as conn:
                conn.execute("SET search_path = pg_catalog")
                conn.execute("SET jit = off")
                schemas = [r[0] for r in conn.execute(_SCHEMAS_SQL).fetchall()]
                rows = conn.execute(
                    "SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::int8,"
                    " pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relpersistence IN ('p','u')"
                    " AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"
                    " ORDER BY 1, 2"
                ).fetchall()
            tables: dict[str, list[CatalogTable]] = {s: [] for s in schemas}
            for schema, table, est, tsize in rows:
                tables.setdefault(schema, []).append(
                    CatalogTable(name=table, rows=int(est), size_bytes=int(tsize))
                )
            out.append(
                CatalogDatabase(
                    name=name,
                    table_count=len(rows),
                    size_bytes=int(size or 0),
                    schemas=[CatalogSchema(name=s, tables=t) for s, t in sorted(tables.items())],
                )
            )
        return Catalog(databases=out)

    def iter_table_rows(
        self,
        store: ObjectStore,
        chain: Sequence[Manifest],
        database: str,
        schema: str,
        table: str,
    ) -> Iterator[bytes]:
        return iter_table_rows(store, chain, database, schema, table)

    # ------------------------------------------------------------------ the backup
    def _backup(self, request: BackupRequest, previous: Manifest | None) -> Manifest:
        started = datetime.now(UTC)
        chain_id = request.backup_id if previous is None else previous.chain_id
        known: dict[str, int] = {}
        if previous is not None:
            known.update((ref.hash, ref.stored) for ref in previous.chunk_refs())
        if request.known_chunks:
            known.update(request.known_chunks)
        abort = threading.Event()
        flag = _Flags(request.cancel, abort)
        chunks = ChunkStore(
            request.store,
            request.cluster_id,
            chain_id,
            level=self.compression_level,
            known=known,
            workers=self.chunk_workers,
        )
        table_pool = ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="pg-table")
        dump_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-dump")
        try:
            return self._backup_inner(
                request, previous, chain_id, started, chunks, table_pool, dump_pool, flag, abort
            )
        except StreamCancelled:
            raise BackupError(ErrorCode.CANCELLED, "backup cancelled", "backup") from None
        except ObjectStoreError as exc:
            raise BackupError(ErrorCode.STORE_FAILED, str(exc), "write to object store") from None
        finally:
            abort.set()
            table_pool.shutdown(wait=True, cancel_futures=True)
            dump_pool.shutdown(wait=True, cancel_futures=True)
            chunks.close()

    def _backup_inner(
        self,
        request: BackupRequest,
        previous: Manifest | None,
        chain_id: str,
        started: datetime,
        chunks: ChunkStore,
        table_pool: ThreadPoolExecutor,
        dump_pool: ThreadPoolExecutor,
        flag: _Flags,
        abort: threading.Event,
    ) -> Manifest:
        coord = self.connect(step="connect")
        try:
            version_num = int(coord.info.server_version)
            if version_num < _MIN_SERVER_VERSION:
                raise BackupError(
                    ErrorCode.UNSUPPORTED,
                    f"PostgreSQL {version_num} is older than 13 (pg_current_snapshot is needed)",
                    "check server version",
                )
            system_id = self._optional_int(
                coord, "SELECT system_identifier FROM pg_control_system()"
            )
            timeline = self._optional_int(coord, "SELECT timeline_id FROM pg_control_checkpoint()")
            step = "list databases"
            try:
                version_row = coord.execute(
                    "SELECT current_setting('server_version'), statement_timestamp()"
                ).fetchone()
                databases = coord.execute(_DATABASES_SQL).fetchall()
                skipped = [
                    SkippedDatabase(
                        name=str(r[0]),
                        reason="does not allow connections (ALLOW_CONNECTIONS false; pg_dumpall"
                        " leaves it out too): not backed up",
                    )
                    for r in coord.execute(_SKIPPED_DATABASES_SQL).fetchall()
                ]
            except psycopg.Error as exc:
                raise pg_error(exc, step) from None
            assert version_row is not None
            version, listed_at = str(version_row[0]), version_row[1]
            for name, _e, _c, _t, size, *_rest in databases:
                if size is None:
                    raise BackupError(
                        ErrorCode.PERMISSION_DENIED,
                        f"no CONNECT privilege on database {name}",
                        f"connect to database {name}",
                    )
            global_reason = self._global_whole_reason(previous, system_id, timeline, version_num)
            globals_future = dump_pool.submit(self._dump_globals, chunks, flag)
            db_backups: list[DatabaseBackup] = []
            db_schemas: list[list[str]] = []
            logical = 0
            group_size = max(1, self.max_held_snapshots)
            for start in range(0, len(databases), group_size):
                group = databases[start : start + group_size]
                held: list[tuple[psycopg.Connection[Any], PgSnapshot]] = []
                try:
                    # Snapshots of a group of databases are taken back to back, before any
                    # data is read, so the databases are as close in time as possible.
                    for row in group:
                        conn = self.connect(row[0], step=f"connect to database {row[0]}")
                        held.append((conn, self._export_snapshot(conn, row[0])))
                    for row, (conn, snapshot) in zip(group, held, strict=True):
                        if flag.is_set():
                            raise StreamCancelled()
                        name, encoding, collate, ctype, size, db_oid, is_template = row
                        info = _DbInfo(
                            name,
                            encoding,
                            collate,
                            ctype,
                            int(size),
                            int(db_oid),
                            bool(is_template),
                        )
                        job = _DbJob(
                            info,
                            conn,
                            previous,
                            global_reason,
                            chunks,
                            table_pool,
                            dump_pool,
                            flag,
                            request,
                        )
                        db_backup, db_logical, schemas = self._backup_database(job, snapshot)
                        db_backups.append(db_backup)
                        db_schemas.append(schemas)
                        logical += db_logical
                finally:
                    for conn, _snap in held:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
            globals_refs, globals_size, no_passwords = globals_future.result()
            logical += globals_size
        finally:
            with contextlib.suppress(psycopg.Error):
                coord.close()
        data_from = min((db.snapshot.taken_at for db in db_backups), default=listed_at)
        catalog = Catalog(
            databases=[
                CatalogDatabase(
                    name=db.name,
                    table_count=len(db.tables),
                    size_bytes=db.size_bytes,
                    schemas=self._catalog_schemas(db, schemas),
                )
                for db, schemas in zip(db_backups, db_schemas, strict=True)
            ],
            skipped_databases=skipped,
        )
        unique: dict[str, ChunkRef] = {}
        for ref in globals_refs:
            unique[ref.hash] = ref
        for db in db_backups:
            for ref in db.schema_archive:
                unique[ref.hash] = ref
            for t in db.tables:
                for ref in t.data:
                    unique[ref.hash] = ref
                if t.key_set is not None:
                    for ref in t.key_set.chunks:
                        unique[ref.hash] = ref
        manifest = Manifest(
            backup_id=request.backup_id,
            cluster_id=request.cluster_id,
            type=BackupType.FULL if previous is None else BackupType.INCREMENTAL,
            chain_id=chain_id,
            parent_id=None if previous is None else previous.backup_id,
            data_from=data_from,
            started_at=started,
            completed_at=datetime.now(UTC),
            server_version=version,
            server_version_num=version_num,
            system_identifier=system_id,
            timeline_id=timeline,
            globals_dump=globals_refs,
            globals_without_passwords=no_passwords,
            databases=db_backups,
            catalog=catalog,
            totals=Totals(
                logical_bytes=logical,
                stored_bytes=sum(r.stored for r in unique.values()),
                new_stored_bytes=chunks.new_stored_bytes,
                chunks=len(unique),
                new_chunks=chunks.new_chunks,
            ),
        )
        if flag.is_set():
            raise StreamCancelled()
        try:
            save_manifest(request.store, manifest)
        except ObjectExists:
            raise BackupError(
                ErrorCode.DUPLICATE_BACKUP,
                f"a manifest for backup {request.backup_id} already exists",
                "write manifest",
            ) from None
        except ObjectStoreError as exc:
            raise BackupError(ErrorCode.STORE_FAILED, str(exc), "write manifest") from None
        if request.on_progress is not None:
            request.on_progress(1.0)
        return manifest

    @staticmethod
    def _catalog_schemas(db: DatabaseBackup, schemas: list[str]) -> list[CatalogSchema]:
        by_schema: dict[str, list[CatalogTable]] = {s: [] for s in schemas}
        for t in db.tables:
            by_schema.setdefault(t.schema_name, []).append(
                CatalogTable(name=t.name, rows=t.live_rows, size_bytes=t.size_bytes)
            )
        return [CatalogSchema(name=s, tables=ts) for s, ts in sorted(by_schema.items())]

    @staticmethod
    def _optional_int(conn: psycopg.Connection[Any], sql: str) -> int | None:
        try:
            row = conn.execute(sql).fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row and row[0] is not None else None

    def _export_snapshot(self, conn: psycopg.Connection[Any], db: str) -> PgSnapshot:
        """Open the database's repeatable-read transaction and export its snapshot."""
        step = (
            f"in database {db}: BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
            " SELECT pg_export_snapshot()"
        )
        try:
            for stmt in self._settings_sql().splitlines():
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
                err = BackupError(
                    ErrorCode.SNAPSHOT_FAILED, err.message, step, sqlstate=err.sqlstate
                )
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

    @staticmethod
    def _global_whole_reason(
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

    @staticmethod
    def _database_whole_reason(prev_db: DatabaseBackup, snap: PgSnapshot, oid: int) -> str | None:
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

    # ------------------------------------------------------------------ globals
    def _dump_globals(self, chunks: ChunkStore, flag: _Flags) -> tuple[list[ChunkRef], int, bool]:
        tool = find_pg_tool("pg_dumpall", self.bindir)
        base = [tool, "--globals-only", "-w", "-d", self._tool_conninfo(self.default_db)]
        try:
            res = chunks.write_stream(
                self._run_tool(base, step="pg_dumpall --globals-only", flag=flag),
                self.data_chunking,
                cancel=flag,
            )
            return res.chunks, res.size, False
        except BackupError as exc:
            if exc.code != ErrorCode.PERMISSION_DENIED:
                raise
        res = chunks.write_stream(
            self._run_tool(
                [*base, "--no-role-passwords"],
                step="pg_dumpall --globals-only --no-role-passwords",
                flag=flag,
            ),
            self.data_chunking,
            cancel=flag,
        )
        return res.chunks, res.size, True

    # ------------------------------------------------------------------ one database
    def _backup_database(
        self, job: _DbJob, snapshot: PgSnapshot
    ) -> tuple[DatabaseBackup, int, list[str]]:
        """Back up one database; retake its snapshot when concurrent DDL got in the way.

        Between the snapshot and the moment its tables are locked, a table may have been
        dropped, replaced under the same name, truncated or rewritten (none of which is
        MVCC-safe): the snapshot would read it as missing or empty. After locking, the table
        identities and storage (oid by name, ``pg_relation_filenode``) are checked against the
        snapshot's catalog; on any difference, or when a DDL statement already waits behind our
        locks (our own readers would queue behind it), the transaction is released and the
        database's snapshot retaken, at most ``_MAX_RETAKES`` times.
        """
        last: _Retake | None = None
        for _attempt in range(_MAX_RETAKES):
            attempt_abort = threading.Event()
            try:
                return self._backup_database_once(job, snapshot, attempt_abort)
            except _Retake as exc:
                last = exc
                attempt_abort.set()
                with contextlib.suppress(psycopg.Error):
                    job.conn.execute("ROLLBACK")
                snapshot = self._export_snapshot(job.conn, job.info.name)
        raise BackupError(
            ErrorCode.SNAPSHOT_FAILED,
            f"concurrent DDL kept changing database {job.info.name} while its snapshot was"
            f" taken ({_MAX_RETAKES} attempts; last: {last})",
            f"lock tables of database {job.info.name}",
        )

    def _backup_database_once(
        self, job: _DbJob, snapshot: PgSnapshot, abort: threading.Event
    ) -> tuple[DatabaseBackup, int, list[str]]:
        info, conn, previous, request = job.info, job.conn, job.previous, job.request
        chunks, table_pool, dump_pool = job.chunks, job.table_pool, job.dump_pool
        global_reason, flag = job.global_reason, job.flag.with_event(abort)
        name = info.name
        ctx = _DbContext(self, name, info.encoding, snapshot.snapshot_id)
        db_reason = global_reason
        if previous is not None and db_reason is None:
            prev_db = next((d for d in previous.databases if d.name == name), None)
            if prev_db is not None:
                db_reason = self._database_whole_reason(prev_db, snapshot, info.oid)
        try:
            step = f"read catalog of database {name}"
            try:
                schemas = [r[0] for r in conn.execute(_SCHEMAS_SQL).fetchall()]
                table_rows, tables = self._read_tables(conn)
            except psycopg.Error as exc:
                raise pg_error(exc, step) from None
            self._lock_tables(conn, tables, name)
            self._check_identities(conn, tables, [int(r[11]) for r in table_rows], name)
            # The snapshot holds: the schema dump (the longest step on a schema of thousands
            # of tables) starts now, while the rest of the database's state is read.
            schema_future = dump_pool.submit(
                self._dump_schema, name, snapshot.snapshot_id, chunks, flag
            )
            try:
                ctx.open_workers(self.parallelism, tables)
                try:
                    sequences = self._read_sequences(conn)
                    matviews = [
                        MatView(schema_name=str(a), name=str(b), populated=bool(c))
                        for a, b, c in conn.execute(_MATVIEWS_SQL).fetchall()
                    ]
                    properties = self._read_properties(conn)
                    lo_row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
                    large_objects = int(lo_row[0]) if lo_row else 0
                except psycopg.Error as exc:
                    raise pg_error(exc, step) from None
                if request.on_snapshots is not None:
                    request.on_snapshots({name: snapshot.snapshot_id})
            except BaseException:
                abort.set()  # this attempt's schema dump stops
                raise
            plans = [self._plan_table(t, previous, name, snapshot, db_reason) for t in tables]
            small = [
                p
                for p in plans
                if p.mode == TableMode.DELTA
                and not p.data.psql
                and p.table.heap_bytes <= _SMALL_TABLE_BYTES
            ]
            batched = {id(p) for p in small}
            work: list[_Stream | _SmallDeltas] = [
                _SmallDeltas(small[i : i + _BATCH_TABLES])
                for i in range(0, len(small), _BATCH_TABLES)
            ]
            for p in plans:
                if id(p) not in batched:
                    work += [p.data] if p.keys is None else [p.data, p.keys]
            work.sort(key=lambda w: w.estimate, reverse=True)
            total_estimate = sum(w.estimate for w in work) or 1
            done = [0]
            progress_lock = threading.Lock()

            def run(item: _Stream | _SmallDeltas) -> list[tuple[_Stream, _StreamOutcome]]:
                try:
                    if isinstance(item, _SmallDeltas):
                        outcome = self._run_small_deltas(ctx, item, chunks, flag)
                    else:
                        outcome = [(item, self._run_stream(ctx, item, chunks, flag))]
                except BaseException:
                    abort.set()
                    raise
                if request.on_progress is not None:
                    with progress_lock:
                        done[0] += item.estimate
                        request.on_progress(min(0.99, done[0] / total_estimate))
                return outcome

            futures = [table_pool.submit(run, w) for w in work]
            outcomes: dict[int, _StreamOutcome] = {}
            first_error: BaseException | None = None
            sizes: dict[int, int] = {}
            try:
                sizes = self._read_sizes(conn, tables, name)
            except BaseException as exc:
                abort.set()
                first_error = exc
            for future in futures:
                try:
                    outcomes.update((id(s), o) for s, o in future.result())
                except BaseException as exc:
                    abort.set()
                    if first_error is None or isinstance(first_error, StreamCancelled):
                        first_error = exc
            try:
                archive = schema_future.result()
            except BaseException as exc:
                abort.set()
                if first_error is None or isinstance(first_error, StreamCancelled):
                    first_error = exc
            if first_error is not None:
                raise first_error
            table_backups = [self._table_backup(p, outcomes, sizes) for p in plans]
            with contextlib.suppress(psycopg.Error):
                conn.execute("COMMIT")
        finally:
            ctx.close()
        logical = archive.size + sum(o.result.size for o in outcomes.values())
        return (
            DatabaseBackup(
                name=name,
                encoding=info.encoding,
                collate=info.collate,
                ctype=info.ctype,
                size_bytes=info.size,
                snapshot=snapshot,
                schema_archive=archive.chunks,
                schema_archive_size=archive.size,
                tables=table_backups,
                sequences=sequences,
                oid=info.oid,
                is_template=info.is_template,
                properties=properties,
                matviews=matviews,
                large_objects=large_objects,
            ),
            logical,
            schemas,
        )

    @classmethod
    def _read_tables(
        cls, conn: psycopg.Connection[Any]
    ) -> tuple[list[tuple[Any, ...]], list[_Table]]:
        """The tables to back up (catalog rows and :class:`_Table`), in three set-based
        queries whatever the table count: the tables, the type closures of their column
        types, and what each type of those closures contributes to the fingerprints."""
        rows = conn.execute(_TABLES_SQL).fetchall()
        oids = [int(r[0]) for r in rows]
        closures = {
            int(root): [int(t) for t in types]
            for root, types in conn.execute(_TYPE_CLOSURES_SQL, (oids,)).fetchall()
        }
        all_types = sorted({t for types in closures.values() for t in types})
        described = {
            int(oid): (str(text), bool(is_reg))
            for oid, text, is_reg in conn.execute(_TYPE_DESCRIPTIONS_SQL, (all_types,)).fetchall()
        }
        tables = []
        for row in rows:
            types = sorted({t for root in row[12] for t in closures.get(int(root), ())})
            parts = [described[t] for t in types if t in described]
            closure = ";".join(text for text, _reg in parts)
            if parts and any(reg for _text, reg in parts):
                closure += ";reg"
            tables.append(cls._table_from_row(row, closure))
        return rows, tables

    @staticmethod
    def _table_from_row(row: Sequence[Any], closure: str) -> _Table:
        """``closure``: the columns' type closure, one description per type in oid order
        (``;reg`` appended when a ``reg*`` type is in it)."""
        oid, schema, name, heap, _total, cols, pk_cols, pk_types, coldef, am, relkind = row[:11]
        material = (
            f"{oid}|{relkind}|{am}|{coldef}|pk:{','.join(pk_cols)}:{','.join(pk_types)}"
            f"|types:{closure}"
        )
        return _Table(
            oid=int(oid),
            schema=str(schema),
            name=str(name),
            heap_bytes=int(heap),
            columns=[str(c) for c in cols],
            key_columns=[
                KeyColumn(name=str(c), type=str(t)) for c, t in zip(pk_cols, pk_types, strict=True)
            ],
            fingerprint=hashlib.sha256(material.encode()).hexdigest(),
            access_method=str(am),
            text_follows_names=closure.endswith(";reg"),
            extension_condition=None if row[13] is None else str(row[13]),
        )

    @staticmethod
    def _read_sequences(conn: psycopg.Connection[Any]) -> list[SequenceValue]:
        """``last_value`` and ``is_called`` of every sequence, read from the sequence itself
        (``pg_sequences`` hides the value when ``is_called`` is false: after ``RESTART`` or
        ``setval(..., false)``). Sequences are not transactional: this is their state now,
        as ``pg_dump`` reads it."""
        names = [(str(a), str(b)) for a, b in conn.execute(_SEQUENCES_SQL).fetchall()]
        out: list[SequenceValue] = []
        for start in range(0, len(names), 200):
            batch = names[start : start + 200]
            sql = " UNION ALL ".join(
                f"SELECT {i}, last_value, is_called FROM {quote_ident(a)}.{quote_ident(b)}"
                for i, (a, b) in enumerate(batch)
            )
            try:
                values = conn.execute(sql).fetchall()
            except psycopg.errors.UndefinedTable as exc:  # dropped since the snapshot
                raise _Retake(f"a sequence was dropped: {str(exc).splitlines()[0]}") from None
            for i, value, called in sorted(values):
                a, b = batch[int(i)]
                out.append(
                    SequenceValue(
                        schema_name=a, name=b, last_value=int(value), is_called=bool(called)
                    )
                )
        return out

    @staticmethod
    def _read_properties(conn: psycopg.Connection[Any]) -> DatabaseProperties:
        row = conn.execute(_PROPERTIES_SQL).fetchone()
        assert row is not None
        owner, acl, limit, comment, settings = row
        role_settings = []
        for item in settings:
            role, _sep, config = str(item).partition("\x01")
            role_settings.append(
                RoleSettings(role=role or None, settings=config.split("\x02") if config else [])
            )
        return DatabaseProperties(
            owner=str(owner),
            acl=None if acl is None else str(acl),
            connection_limit=int(limit),
            comment=None if comment is None else str(comment),
            settings=role_settings,
        )

    @staticmethod
    def _lock_tables(
        conn: psycopg.Connection[Any], tables: Sequence[_Table], db: str, *, nowait: bool = False
    ) -> None:
        """``ACCESS SHARE`` on every table (``ONLY``), in batches; a table dropped since the
        snapshot, or (``nowait``) a conflicting lock already queued, raises :class:`_Retake`."""
        for start in range(0, len(tables), 500):
            batch = tables[start : start + 500]
            sql = (
                f"LOCK TABLE {', '.join('ONLY ' + t.qualified for t in batch)} IN ACCESS SHARE MODE"
                + (" NOWAIT" if nowait else "")
            )
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                if sqlstate == _UNDEFINED_TABLE:
                    raise _Retake(f"a table was dropped: {str(exc).splitlines()[0]}") from None
                if nowait and sqlstate == _LOCK_NOT_AVAILABLE:
                    raise _Retake("a DDL statement waits for a lock on one of the tables") from None
                raise pg_error(exc, f"in database {db}: {sql}") from None

    @staticmethod
    def _check_identities(
        conn: psycopg.Connection[Any], tables: Sequence[_Table], filenodes: Sequence[int], db: str
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
            raise _Retake(f"replaced, truncated or rewritten since the snapshot: {names}")

    def _dump_schema(
        self, db: str, snapshot_id: str, chunks: ChunkStore, flag: _Flags
    ) -> StreamResult:
        tool = find_pg_tool("pg_dump", self.bindir)
        # Everything but table data: the schema and the large objects (with owners, ACLs and
        # comments), as pg_dump itself would restore them.
        cmd = [
            tool,
            "--blobs",
            "--exclude-table-data=*.*",
            "-Fc",
            "--compress=0",
            "-w",
            f"--snapshot={snapshot_id}",
            f"--lock-wait-timeout={_DUMP_LOCK_WAIT_MS}",
            "-d",
            self._tool_conninfo(db),
        ]
        try:
            return chunks.write_stream(
                self._run_tool(cmd, step=f"pg_dump -Fc --exclude-table-data {db}", flag=flag),
                self.data_chunking,
                cancel=flag,
            )
        except BackupError as exc:
            # Our locks are held: pg_dump can only wait behind a DDL statement that itself
            # waits for us. Release everything and retake the snapshot.
            # (pg_dump's --lock-wait-timeout is a statement timeout on its LOCK statements.)
            text = exc.message
            if "could not obtain lock" in text or "due to statement timeout" in text:
                raise _Retake(f"pg_dump: {exc.message}") from None
            # pg_dump reads the catalog in the snapshot but some definitions (views, functions,
            # types) through the server's current catalog: an object dropped since the snapshot
            # fails it. A new snapshot no longer holds that object.
            if _DROPPED_SINCE_SNAPSHOT.search(text):
                raise _Retake(f"pg_dump: {exc.message}") from None
            raise

    # ------------------------------------------------------------------ per table
    def _plan_table(
        self,
        table: _Table,
        previous: Manifest | None,
        db: str,
        snapshot: PgSnapshot,
        global_reason: str | None,
    ) -> _TablePlan:
        unsupported = table.unsupported_key()
        ordered = unsupported is None
        use_psql = table.heap_bytes >= self.psql_min_bytes
        condition = table.extension_condition
        # pg_extension_config_dump's condition: "WHERE <expression>" (or empty: every row).
        where = re.sub(r"(?is)^\s*where\s", "", condition or "").strip()
        full_sql = copy_select_sql(
            table.qualified, table.columns, table.key_columns, f"({where})" if where else ""
        )
        data = _Stream(
            table, "data", full_sql, self.data_chunking, psql=use_psql, estimate=table.heap_bytes
        )
        if previous is None:
            return _TablePlan(table, TableMode.FULL, None, ordered, data)
        if condition is not None:
            # Restored by appending to what CREATE EXTENSION creates, as pg_restore does.
            return _TablePlan(
                table, TableMode.WHOLE, "extension configuration table", ordered, data
            )
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
            return _TablePlan(table, TableMode.WHOLE, reason, ordered, data)
        prev_db = previous.database(db)
        distance = snapshot.xmax - prev_db.snapshot.xmin
        reference = snapshot.xmax % (1 << 32)
        where = (
            f"((age(_t.xmin)::int8 - (SELECT age({quote_literal(str(reference))}::xid))::int8)"
            f" & 4294967295) BETWEEN 1 AND {distance}"
        )
        data = _Stream(
            table,
            "data",
            copy_select_sql(table.qualified, table.columns, table.key_columns, where),
            self.data_chunking,
            psql=use_psql,
            estimate=max(1, table.heap_bytes // 20),
            where=where,
        )
        keys = self._key_stream(table, use_psql)
        return _TablePlan(table, TableMode.DELTA, None, True, data, keys)

    def _key_stream(self, table: _Table, use_psql: bool, force_list: bool = False) -> _Stream:
        kcs = table.key_columns
        estimate = max(1, table.heap_bytes // 10)
        if len(kcs) == 1 and kcs[0].type in INT_KEY_TYPES and not force_list:
            k = f"_t.{quote_ident(kcs[0].name)}"
            sql = (
                "SELECT min(k), max(k) FROM (SELECT "
                f"{k} AS k, {k}::int8 - row_number() OVER (ORDER BY {k}) AS g"
                f" FROM ONLY {table.qualified} AS _t) AS s GROUP BY g ORDER BY 1"
            )
            return _Stream(
                table, "keys", sql, self.key_chunking, KeySetFormat.RANGES, use_psql, estimate
            )
        cols = ", ".join(f"_t.{quote_ident(kc.name)}" for kc in kcs)
        sql = f"SELECT {cols} FROM ONLY {table.qualified} AS _t ORDER BY {order_by(kcs)}"
        return _Stream(table, "keys", sql, self.key_chunking, KeySetFormat.KEYS, use_psql, estimate)

    def _run_stream(
        self, ctx: _DbContext, stream: _Stream, chunks: ChunkStore, flag: _Flags
    ) -> _StreamOutcome:
        try:
            return self._run_stream_once(ctx, stream, chunks, flag)
        except BackupError as exc:
            if stream.psql and exc.sqlstate == _LOCK_NOT_AVAILABLE:
                # A DDL statement queued behind our locks: a new session would wait behind it,
                # the worker's connection already holds the lock.
                return self._run_stream(ctx, replace(stream, psql=False), chunks, flag)
            if stream.key_format == KeySetFormat.RANGES and exc.sqlstate == _NUMERIC_OUT_OF_RANGE:
                # int8 keys near -2^63 overflow k - row_number(): fall back to a key list.
                return self._run_stream_once(
                    ctx, self._key_stream(stream.table, stream.psql, True), chunks, flag
                )
            raise

    def _run_small_deltas(
        self, ctx: _DbContext, batch: _SmallDeltas, chunks: ChunkStore, flag: _Flags
    ) -> list[tuple[_Stream, _StreamOutcome]]:
        """The data and key streams of a batch of small DELTA tables (see :class:`_SmallDeltas`)."""
        plans = batch.plans
        probe = " UNION ALL ".join(
            f"SELECT {i} WHERE EXISTS (SELECT 1 FROM ONLY {p.table.qualified} AS _t"
            f" WHERE {p.data.where})"
            for i, p in enumerate(plans)
        )
        changed = {int(r[0]) for r in ctx.rows(probe, f"in database {ctx.name}: {probe[:500]}")}
        out: list[tuple[_Stream, _StreamOutcome]] = []
        for i, p in enumerate(plans):
            if flag.is_set():
                raise StreamCancelled()
            if i in changed:
                out.append((p.data, self._run_stream(ctx, p.data, chunks, flag)))
            else:  # what the COPY of no row stores
                out.append((p.data, _StreamOutcome(StreamResult(chunks=[], size=0), rows=0)))
        keys = [p.keys for p in plans if p.keys is not None]
        ranges = [k for k in keys if k.key_format == KeySetFormat.RANGES]
        try:
            out += self._run_key_ranges(ctx, ranges, chunks, flag)
        except BackupError as exc:
            if exc.sqlstate != _NUMERIC_OUT_OF_RANGE:
                raise
            # int8 keys near -2^63: each table on its own (a key list where it overflows).
            out += [(k, self._run_stream(ctx, k, chunks, flag)) for k in ranges]
        out += [
            (k, self._run_stream(ctx, k, chunks, flag))
            for k in keys
            if k.key_format != KeySetFormat.RANGES
        ]
        return out

    def _run_key_ranges(
        self, ctx: _DbContext, streams: Sequence[_Stream], chunks: ChunkStore, flag: _Flags
    ) -> list[tuple[_Stream, _StreamOutcome]]:
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
        blocks = ctx.psycopg_blocks(sql, f"in database {ctx.name}: {sql[:500]}", flag)
        demux = _Demux(blocks)
        out = []
        try:
            for i, stream in enumerate(streams):
                counter = _RangeCounter()
                try:
                    result = chunks.write_stream(
                        counter.wrap(demux.take(i)), stream.params, cancel=flag
                    )
                except ObjectStoreError as exc:
                    raise BackupError(
                        ErrorCode.STORE_FAILED,
                        str(exc),
                        f"store chunks of {ctx.name}.{stream.table.label}",
                    ) from None
                out.append((stream, _StreamOutcome(result, counter.count, KeySetFormat.RANGES)))
            demux.finish()
        finally:
            blocks.close()
        return out

    def _run_stream_once(
        self, ctx: _DbContext, stream: _Stream, chunks: ChunkStore, flag: _Flags
    ) -> _StreamOutcome:
        sql = f"COPY ({stream.sql}) TO STDOUT"
        step = f"in database {ctx.name}: {sql}"
        blocks = (
            ctx.psql_blocks(sql, step, flag, "ONLY " + stream.table.qualified)
            if stream.psql
            else ctx.psycopg_blocks(sql, step, flag)
        )
        counter: _LineCounter | _RangeCounter
        counter = _RangeCounter() if stream.key_format == KeySetFormat.RANGES else _LineCounter()
        try:
            result = chunks.write_stream(counter.wrap(blocks), stream.params, cancel=flag)
        except ObjectStoreError as exc:
            raise BackupError(
                ErrorCode.STORE_FAILED, str(exc), f"store chunks of {ctx.name}.{stream.table.label}"
            ) from None
        return _StreamOutcome(result=result, rows=counter.count, key_format=stream.key_format)

    @staticmethod
    def _read_sizes(
        conn: psycopg.Connection[Any], tables: Sequence[_Table], db: str
    ) -> dict[int, int]:
        """``pg_total_relation_size`` of every table, by oid (the tables are locked)."""
        try:
            rows = conn.execute(_TABLE_SIZES_SQL, ([t.oid for t in tables],)).fetchall()
        except psycopg.Error as exc:
            raise pg_error(exc, f"in database {db}: read table sizes") from None
        return {int(oid): int(size) for oid, size in rows}

    @staticmethod
    def _table_backup(
        plan: _TablePlan, outcomes: Mapping[int, _StreamOutcome], sizes: Mapping[int, int]
    ) -> TableBackup:
        data = outcomes[id(plan.data)]
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
            key_set=key_set,
            size_bytes=sizes.get(t.oid, 0),
            extension_condition=t.extension_condition,
        )


# ------------------------------------------------------------------------------ per-db context
@dataclass
class _DbContext:
    """One database during a backup: its snapshot and the workers' connections."""

    adapter: PostgresAdapter
    name: str
    encoding: str
    snapshot_id: str
    _conns: dict[int, psycopg.Connection[Any]] = field(default_factory=dict)
    _idle: list[psycopg.Connection[Any]] = field(default_factory=list)
    _tables: Sequence[_Table] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_workers(self, count: int, tables: Sequence[_Table]) -> None:
        """Open the workers' connections now, each importing the snapshot and locking every
        table ``NOWAIT``: a reader that asked for its lock later would queue behind any DDL
        statement waiting for the coordinator's locks, and wait for ever."""
        self._tables = tables
        for _ in range(count):
            self._idle.append(self._new_conn())

    def _new_conn(self) -> psycopg.Connection[Any]:
        conn = self.adapter.connect(
            self.name, step=f"connect to database {self.name}", encoding=self.encoding
        )
        try:
            self.begin(conn, f"import snapshot in database {self.name}")
            self.adapter._lock_tables(conn, self._tables, self.name, nowait=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def begin(self, conn: psycopg.Connection[Any], step: str) -> None:
        try:
            for stmt in self.adapter._settings_sql().splitlines():
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
        ident = threading.get_ident()
        with self._lock:
            conn = self._conns.get(ident)
        if conn is not None:
            return conn
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._new_conn()
        with self._lock:
            self._conns[ident] = conn
        return conn

    def _drop_conn(self) -> None:
        with self._lock:
            conn = self._conns.pop(threading.get_ident(), None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def rows(self, sql: str, step: str) -> list[tuple[Any, ...]]:
        """A query's rows on this thread's worker connection (in the snapshot)."""
        conn = self._worker_conn()
        try:
            return conn.execute(sql).fetchall()
        except psycopg.Error as exc:
            self._drop_conn()
            raise pg_error(exc, step) from None

    def psycopg_blocks(self, sql: str, step: str, flag: _Flags) -> Generator[bytes, None, None]:
        conn = self._worker_conn()
        ok = False
        try:
            buf = bytearray()
            with conn.cursor() as cur, cur.copy(sql) as copy:
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

    def psql_blocks(self, sql: str, step: str, flag: _Flags, table: str) -> Iterator[bytes]:
        adapter = self.adapter
        script = "\n".join(
            [
                adapter._settings_sql(),
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;",
                f"SET TRANSACTION SNAPSHOT {quote_literal(self.snapshot_id)};",
                f"LOCK TABLE {table} IN ACCESS SHARE MODE NOWAIT;",
                sql + ";",
                "COMMIT;",
                "",
            ]
        )
        cmd = [
            find_pg_tool("psql", adapter.bindir),
            "-X",
            "-q",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-d",
            adapter._tool_conninfo(self.name),
            "-f",
            "-",
        ]
        return adapter._run_tool(
            cmd,
            step=step,
            # psql sends the script as is and the server reads it in the client encoding: the
            # identifiers in it must be in the database's encoding, not UTF-8.
            stdin=script.encode(python_codec(self.encoding)),
            extra_env={"PGCLIENTENCODING": self.encoding},
            flag=flag,
        )

    def close(self) -> None:
        with self._lock:
            conns = [*self._conns.values(), *self._idle]
            self._conns.clear()
            self._idle.clear()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()
