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
  retakes the database's snapshot (at most five times, then ``SNAPSHOT_FAILED``). The tables
  are split into lanes, one worker connection each, planned before any row is read; each
  worker imports the snapshot and locks every table of its lane ``NOWAIT`` right away: a DDL statement
  already queued behind the coordinator's locks would make any later lock request (a reader's,
  ``pg_dump``'s) wait for ever, so it retakes the snapshot too (after the DDL ran); ``psql``
  streams lock ``NOWAIT`` and fall back to the worker's connection, and ``pg_dump`` gets
  ``--lock-wait-timeout`` and a retake. ``pg_dump`` also reads some definitions (views,
  functions, types) in the current catalog, not the snapshot: one dropped meanwhile fails it,
  and that too retakes the snapshot. A sequence dropped before its value is read does too.
  The schema dump starts as soon as the snapshot is taken (it reads the snapshot and takes
  its own locks) while the tables are listed, locked and checked and the workers lock; the
  schema fingerprint, then the sequences and the database's own state and size, are read
  meanwhile on a connection of its own that imports the snapshot. An incremental whose schema
  fingerprint equals the previous backup's reuses its schema archive and runs no dump (see
  :func:`~.postgres_catalog.read_schema_fingerprint`), and takes the table definitions from
  the previous manifest instead of reading them again (see
  :class:`~.postgres_catalog.TableStates`). A retake stops that attempt's dump. Tables are
  then read in parallel (``parallelism`` lanes, default 2, balanced and largest first by the
  statistics' ``relpages``, as ``pg_dump -j`` orders them): no DDL can rewrite them under the
  snapshot.
- **Thousands of tables**: every catalog read is one set-based query per database whatever the
  table count (tables, their columns' type closures, sequences in one query, locks in batches
  of 500, identities in one ``unnest``); the catalog queries run with ``jit = off``. Each table
  costs one ``COPY`` in a full, small ones packed into shared chunks (a few objects per
  megabyte for thousands of tables, large packs read through one ``psql``, see
  :class:`~.postgres_streams.SmallTables`); in an incremental, small
  tables are asked about in batches and those without changes are recorded ``UNCHANGED``,
  costing nothing stored (see :class:`~.postgres_streams.SmallDeltas`). The server's lock table must hold
  about three locks per table (the coordinator's, the worker's that reads it, ``pg_dump``'s;
  ``pg_dump -j2`` takes two): ``max_locks_per_transaction x max_connections`` sized for the
  table count, as ``pg_dump``'s documentation asks; when it is too small the backup fails
  with the server's hint to raise ``max_locks_per_transaction``.
- **Text COPY, not binary**: text is what ``pg_dump`` uses; it works for every type (extension
  types without binary send/receive functions break binary COPY), restores into other
  PostgreSQL major versions and architectures, compresses as well, and lets a restore parse the
  key columns without type-specific binary decoders. Session settings are pinned
  (``DateStyle=ISO``, ``extra_float_digits=3``, ``TimeZone=UTC``, ``bytea_output=hex``,
  client encoding = the database's encoding) and replayed on restore.
- **Key order that Python can merge**: text/varchar keys are ordered ``COLLATE "C"`` (byte
  order in the database encoding), so a restore merges incrementals with plain byte
  comparisons whatever the database's collation; ``date``, ``timestamp`` and ``timestamptz``
  keys in their own order, which the restore reproduces from their ISO text in UTC
  (infinities, BC dates, years past 9999, fractional seconds: :func:`~.sql.time_key`);
  ``citext`` keys by their text's bytes (see :data:`~.sql.TEXT_ORDER_KEY_TYPES`). Keys of
  other types than those, ``int2``, ``int4``, ``int8``, ``oid``, ``uuid``, ``bytea`` and
  ``bool`` are still dumped in key order but such tables are stored whole in incrementals.
- Large tables stream through a ``psql`` child (C speed, 1 MiB pipe reads); small ones through
  the worker's psycopg connection (no process start per table). Both import the snapshot.
  Every stream is cut into content-defined chunks, hashed and zstd-compressed in a thread pool
  (:mod:`.chunks`), so memory stays bounded whatever the table size.

Incrementals store, for each table with a supported key and an unchanged definition, its
changed rows and its key set; :mod:`.postgres_snapshots` explains which rows changed and why
the test is correct, and when a table is stored whole instead.

Where things are
================
- :mod:`.postgres` (this module): the adapter's configuration and connections, and
  :class:`_BackupRun`, one backup: the globals, each database's snapshot, locks, schema dump
  and streams, the manifest;
- :mod:`.postgres_catalog`: what is read of the catalog (set-based), table fingerprints;
- :mod:`.postgres_snapshots`: snapshots, locks and identity checks, the xmin argument;
- :mod:`.postgres_streams`: table plans, worker connections, COPY into chunks.

Errors are :class:`~.engine.BackupError` with codes ``CONNECTION_FAILED``,
``AUTHENTICATION_FAILED``, ``PERMISSION_DENIED``, ``SNAPSHOT_FAILED``, ``DUMP_FAILED``,
``STORE_FAILED``, ``UNSUPPORTED``, ``TOOL_MISSING``, ``CANCELLED`` and the failing step or
statement. Connection parameters are a libpq DSN *without* password; secrets come from
``password=`` or libpq's own mechanisms (``env={"PGPASSFILE": ...}``, ``~/.pgpass``) and are
passed to child processes through their environment only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
from .keys import KeyUnavailable
from .manifest import (
    BackupType,
    Catalog,
    CatalogDatabase,
    ChunkRef,
    DatabaseBackup,
    DatabaseLocale,
    DatabaseProperties,
    Manifest,
    MatView,
    PgSnapshot,
    SequenceValue,
    SkippedDatabase,
    TableMode,
    Totals,
    WalMark,
    save_manifest,
)
from .objectstore import ObjectExists, ObjectStore, ObjectStoreError
from .postgres_catalog import (
    DATABASES_SQL,
    SKIPPED_DATABASES_SQL,
    DbInfo,
    Table,
    catalog_schemas,
    live_catalog,
    read_database_size,
    read_large_object_count,
    read_locale,
    read_matviews,
    read_properties,
    read_schema_fingerprint,
    read_schemas,
    read_sequences,
    read_sizes,
    read_table_states,
    read_tables,
)
from .postgres_snapshots import (
    MAX_RETAKES,
    Retake,
    check_identities,
    database_whole_reason,
    export_snapshot,
    global_whole_reason,
    lock_tables,
)
from .postgres_streams import (
    DbReader,
    Flags,
    SmallDeltas,
    SmallTables,
    Stream,
    StreamOutcome,
    StreamSettings,
    TablePlan,
    WorkItem,
    assign_lanes,
    lane_tables,
    plan_table,
    table_backup,
    work_items,
)
from .postgres_walsummary import (
    Summarized,
    WalWrites,
    end_lsn,
    read_wal_writes,
    summarize_through,
    summarizing,
    take_mark,
)
from .restore_rows import iter_table_rows
from .sql import (
    BYTES_KEY_TYPES,
    INT_KEY_TYPES,
    SESSION_SETTINGS,
    connect,
    copy_encoding,
    copy_select_sql,
    quote_ident,
    quote_literal,
)
from .tools import ClientTools, client_tools_for, find_pg_tool, run_tool, tool_environment

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

_T = TypeVar("_T")
_MIN_SERVER_VERSION = 130000  # pg_current_snapshot() / xid8
_DUMP_LOCK_WAIT_MS = 5_000

_DROPPED_SINCE_SNAPSHOT = re.compile(
    r"could not open relation with OID|cache lookup failed|with OID \d+ does not exist"
)


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
    - ``client_bindirs``: the client tools' bin directories to choose from (default: what the
      installation provides); ``bindir``: exactly this one. Each backup runs the set of the
      oldest major that is at least the server's, and at least 15 when there is one
      (:func:`~.tools.client_tools_for`).
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
        client_bindirs: Sequence[Path] = (),
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
        self.client_bindirs: tuple[Path, ...] = (
            (bindir,) if bindir is not None else tuple(client_bindirs)
        )
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

    def _conn_kwargs(self, dbname: str) -> dict[str, Any]:
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
        )
        return kwargs

    def connect(
        self, dbname: str | None = None, *, step: str | None = None, encoding: str | None = None
    ) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection to ``dbname`` (errors as ``BackupError``): its text
        Unicode (:func:`~.sql.connect`), or, with ``encoding`` (a session copying rows of a
        database in that encoding), in the client encoding :func:`~.sql.copy_encoding` gives."""
        db = dbname or self.default_db
        kwargs = self._conn_kwargs(db)
        if encoding is not None:
            kwargs["client_encoding"] = copy_encoding(encoding)
        try:
            return connect(self.dsn, autocommit=True, **kwargs)
        except psycopg.Error as exc:
            err = pg_error(exc, step or f"connect to database {db}")
            if err.code == ErrorCode.DUMP_FAILED:
                err = BackupError(ErrorCode.CONNECTION_FAILED, err.message, err.step)
            raise err from None

    def tool_conninfo(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname, application_name="managed-backups")

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = tool_environment(self._env, self._password)
        env.setdefault("PGCONNECT_TIMEOUT", str(self.connect_timeout))
        if extra:
            env.update(extra)
        return env

    def settings_sql(self, encoding: str | None = None) -> str:
        sets = [f"SET {name} = {quote_literal(value)};" for name, value in SESSION_SETTINGS]
        sets.append(f"SET lock_timeout = {int(self.lock_timeout_ms)};")
        # The catalog queries are costed high (one row per table, correlated subqueries): the
        # JIT would compile them for seconds to run them for milliseconds. pg_dump's plain
        # COPY never reaches it; our COPY (SELECT ...) need not either.
        sets.append("SET jit = off;")
        if encoding:
            sets.append(f"SET client_encoding = {quote_literal(encoding)};")
        return "\n".join(sets)

    def run_tool(
        self,
        cmd: list[str],
        *,
        step: str,
        stdin: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
        flag: Flags | None = None,
    ) -> Iterator[bytes]:
        return run_tool(cmd, env=self.child_env(extra_env), step=step, stdin=stdin, cancel=flag)

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
        return live_catalog(self.connect)

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
        run = _BackupRun(self, request, previous)
        try:
            run.chunks.open_for_writing()  # fails closed (no key) before anything is read
            return run.take()
        except KeyUnavailable as exc:
            raise BackupError(ErrorCode.KEY_UNAVAILABLE, str(exc), "open the chain's key") from None
        except StreamCancelled:
            raise BackupError(ErrorCode.CANCELLED, "backup cancelled", "backup") from None
        except ObjectStoreError as exc:
            raise BackupError(ErrorCode.STORE_FAILED, str(exc), "write to object store") from None
        finally:
            run.close()

    def _export_snapshot(self, conn: psycopg.Connection[Any], db: str) -> PgSnapshot:
        """Open the database's repeatable-read transaction and export its snapshot."""
        return export_snapshot(conn, db, self.settings_sql())


@dataclass(frozen=True)
class _SideReads:
    """What a database's side connection reads while the coordinator lists and locks."""

    fingerprint: str | None
    large_objects: int
    sequences: list[SequenceValue]
    matviews: list[MatView]
    properties: DatabaseProperties
    locale: DatabaseLocale
    size: int
    """``pg_database_size`` (it walks the database's directory)."""


@dataclass(frozen=True)
class _Wal:
    """A database attempt's WAL points: the mark to record, the summaries to ask."""

    mark: WalMark | None
    summaries: Future[Summarized] | None
    retaken: bool = False


def _wal_note(writes: WalWrites, plans: Sequence[TablePlan]) -> str:
    """What the WAL summaries did for a database (its manifest's ``wal_summary``)."""
    unread = sum(1 for p in plans if p.mode == TableMode.UNCHANGED)
    by_block = sum(1 for p in plans if p.mode == TableMode.DELTA and p.data.blocks is not None)
    probed = sum(1 for p in plans if p.mode == TableMode.DELTA and p.data.blocks is None)
    return (
        f"WAL summaries {writes.range_text}: {unread} tables unwritten (not read),"
        f" {by_block} read in their written blocks, {probed} probed"
    )


class _BackupRun:
    """One backup: what every step of it shares, created once instead of threaded through.

    It owns the chunk store (seeded with the chain's known chunks), the table and dump thread
    pools, and the abort flag (the request's cancel event or the first failure): :meth:`close`
    stops and releases them whatever happened. :meth:`take` connects, checks the server, dumps
    the globals, backs up every database (snapshots taken in groups, up front) and writes the
    manifest last, once.
    """

    def __init__(
        self, adapter: PostgresAdapter, request: BackupRequest, previous: Manifest | None
    ) -> None:
        self.adapter = adapter
        self.request = request
        self.previous = previous
        self.started = datetime.now(UTC)
        self.chain_id = request.backup_id if previous is None else previous.chain_id
        known: dict[str, int] = {}
        if previous is not None:
            known.update((ref.hash, ref.stored) for ref in previous.chunk_refs())
        if request.known_chunks:
            known.update(request.known_chunks)
        self.abort = threading.Event()
        self.flag = Flags(request.cancel, self.abort)
        self.chunks = ChunkStore(
            request.store,
            request.cluster_id,
            self.chain_id,
            level=adapter.compression_level,
            known=known,
            workers=adapter.chunk_workers,
        )
        self.table_pool = ThreadPoolExecutor(
            max_workers=adapter.parallelism, thread_name_prefix="pg-table"
        )
        self.dump_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-dump")
        self.wal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-wal")
        """Runs the CHECKPOINT and the wait for the WAL summaries (see :meth:`_summarize`)."""
        self.summarizing = False
        """The server summarizes its WAL (17 and later, ``summarize_wal``): each database's
        snapshot gets a mark, and an incremental asks the summaries what was written."""
        self.version_num = 0
        self.tools: ClientTools | None = None
        """The client tools this backup runs (chosen for the server once connected)."""
        self.global_reason: str | None = None
        """Why no table of this incremental may be a delta (``None``: deltas allowed)."""
        self.stream_settings = StreamSettings(
            adapter.psql_min_bytes, adapter.data_chunking, adapter.key_chunking
        )

    def _tool(self, name: str) -> str:
        assert self.tools is not None, "the client tools are chosen once connected"
        return self.tools.path(name)

    def close(self) -> None:
        self.abort.set()
        self.table_pool.shutdown(wait=True, cancel_futures=True)
        self.dump_pool.shutdown(wait=True, cancel_futures=True)
        self.wal_pool.shutdown(wait=True, cancel_futures=True)
        self.chunks.close()

    # ------------------------------------------------------------------ the cluster
    def take(self) -> Manifest:
        adapter, request, previous, flag = self.adapter, self.request, self.previous, self.flag
        coord = adapter.connect(step="connect")
        try:
            version_num = int(coord.info.server_version)
            self.version_num = version_num
            if version_num < _MIN_SERVER_VERSION:
                raise BackupError(
                    ErrorCode.UNSUPPORTED,
                    f"PostgreSQL {version_num} is older than 13 (pg_current_snapshot is needed)",
                    "check server version",
                )
            # Before anything is read: a server newer than every client is refused here.
            self.tools = client_tools_for(
                version_num, adapter.client_bindirs, step="choose client tools"
            )
            system_id = _optional_int(coord, "SELECT system_identifier FROM pg_control_system()")
            timeline = _optional_int(coord, "SELECT timeline_id FROM pg_control_checkpoint()")
            step = "list databases"
            try:
                version_row = coord.execute(
                    "SELECT current_setting('server_version'), statement_timestamp()"
                ).fetchone()
                databases = coord.execute(DATABASES_SQL).fetchall()
                skipped = [
                    SkippedDatabase(
                        name=str(r[0]),
                        reason="does not allow connections (ALLOW_CONNECTIONS false; pg_dumpall"
                        " leaves it out too): not backed up",
                    )
                    for r in coord.execute(SKIPPED_DATABASES_SQL).fetchall()
                ]
            except psycopg.Error as exc:
                raise pg_error(exc, step) from None
            assert version_row is not None
            version, listed_at = str(version_row[0]), version_row[1]
            for name, _e, _c, _t, allowed, *_rest in databases:
                if not allowed:
                    raise BackupError(
                        ErrorCode.PERMISSION_DENIED,
                        f"no CONNECT privilege on database {name}",
                        f"connect to database {name}",
                    )
            self.global_reason = global_whole_reason(previous, system_id, timeline, version_num)
            self.summarizing = summarizing(coord, version_num)
            # The summaries are waited for only when some table could be judged by them.
            asks_summaries = (
                self.summarizing
                and previous is not None
                and self.global_reason is None
                and any(db.wal_mark is not None for db in previous.databases)
            )
            globals_future = self.dump_pool.submit(self.dump_globals)
            db_backups: list[DatabaseBackup] = []
            db_schemas: list[list[str]] = []
            logical = 0
            group_size = max(1, adapter.max_held_snapshots)
            for start in range(0, len(databases), group_size):
                group = databases[start : start + group_size]
                held: list[tuple[psycopg.Connection[Any], PgSnapshot]] = []
                # Where the next incremental's WAL summaries will start (before the snapshots).
                mark = take_mark(coord) if self.summarizing else None
                try:
                    # Snapshots of a group of databases are taken back to back, before any
                    # data is read, so the databases are as close in time as possible.
                    for row in group:
                        conn = adapter.connect(row[0], step=f"connect to database {row[0]}")
                        held.append((conn, adapter._export_snapshot(conn, row[0])))
                    # Where the summaries must reach (after the snapshots): a checkpoint and
                    # the summarizer's catching up run while the databases' catalogs are read.
                    summaries: Future[Summarized] | None = None
                    end = end_lsn(coord) if asks_summaries else None
                    if end is not None:
                        summaries = self.wal_pool.submit(self._summarize, end)
                    for row, (conn, snapshot) in zip(group, held, strict=True):
                        if flag.is_set():
                            raise StreamCancelled()
                        name, encoding, collate, ctype, _allowed, db_oid, is_template = row
                        info = DbInfo(
                            name, encoding, collate, ctype, int(db_oid), bool(is_template)
                        )
                        db_backup, db_logical, schemas = self.database(
                            info, conn, snapshot, mark, summaries
                        )
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
                    schemas=catalog_schemas(db, schemas),
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
            chain_id=self.chain_id,
            parent_id=None if previous is None else previous.backup_id,
            data_from=data_from,
            started_at=self.started,
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
                new_stored_bytes=self.chunks.new_stored_bytes,
                chunks=len(unique),
                new_chunks=self.chunks.new_chunks,
            ),
        )
        if flag.is_set():
            raise StreamCancelled()
        if request.before_commit is not None:
            request.before_commit()
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

    # ------------------------------------------------------------------ globals
    def dump_globals(self) -> tuple[list[ChunkRef], int, bool]:
        """``pg_dumpall --globals-only``; without ``pg_authid`` access, ``--no-role-passwords``
        (the third value says so)."""
        adapter = self.adapter
        tool = self._tool("pg_dumpall")
        base = [tool, "--globals-only", "-w", "-d", adapter.tool_conninfo(adapter.default_db)]
        try:
            res = self.chunks.write_stream(
                adapter.run_tool(base, step="pg_dumpall --globals-only", flag=self.flag),
                adapter.data_chunking,
                cancel=self.flag,
            )
            return res.chunks, res.size, False
        except BackupError as exc:
            if exc.code != ErrorCode.PERMISSION_DENIED:
                raise
        res = self.chunks.write_stream(
            adapter.run_tool(
                [*base, "--no-role-passwords"],
                step="pg_dumpall --globals-only --no-role-passwords",
                flag=self.flag,
            ),
            adapter.data_chunking,
            cancel=self.flag,
        )
        return res.chunks, res.size, True

    # ------------------------------------------------------------------ one database
    def database(
        self,
        info: DbInfo,
        conn: psycopg.Connection[Any],
        snapshot: PgSnapshot,
        mark: WalMark | None = None,
        summaries: Future[Summarized] | None = None,
    ) -> tuple[DatabaseBackup, int, list[str]]:
        """Back up one database; retake its snapshot when concurrent DDL got in the way.

        Between the snapshot and the moment its tables are locked, a table may have been
        dropped, replaced under the same name, truncated or rewritten (none of which is
        MVCC-safe): the snapshot would read it as missing or empty. After locking, the table
        identities and storage (oid by name, ``pg_relation_filenode``) are checked against the
        snapshot's catalog; on any difference, or when a DDL statement already waits behind our
        locks (our own readers would queue behind it), the transaction is released and the
        database's snapshot retaken, at most ``MAX_RETAKES`` times. ``conn`` (the coordinator)
        holds the snapshot's transaction and the locks.

        ``mark`` (taken before the snapshot) is recorded for the next incremental;
        ``summaries`` reach past the first snapshot only: a retaken one probes every table.
        """
        last: Retake | None = None
        for attempt in range(MAX_RETAKES):
            attempt_abort = threading.Event()
            wal = _Wal(mark, summaries if attempt == 0 else None, retaken=attempt > 0)
            try:
                return self._database_once(info, conn, snapshot, attempt_abort, wal)
            except Retake as exc:
                last = exc
                attempt_abort.set()
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                snapshot = self.adapter._export_snapshot(conn, info.name)
        raise BackupError(
            ErrorCode.SNAPSHOT_FAILED,
            f"concurrent DDL kept changing database {info.name} while its snapshot was"
            f" taken ({MAX_RETAKES} attempts; last: {last})",
            f"lock tables of database {info.name}",
        )

    def _database_once(
        self,
        info: DbInfo,
        conn: psycopg.Connection[Any],
        snapshot: PgSnapshot,
        abort: threading.Event,
        wal: _Wal,
    ) -> tuple[DatabaseBackup, int, list[str]]:
        adapter, request, previous = self.adapter, self.request, self.previous
        flag = self.flag.with_event(abort)
        name = info.name
        reader = DbReader(adapter, name, info.encoding, snapshot.snapshot_id, self._tool("psql"))
        db_reason = self.global_reason
        prev_db: DatabaseBackup | None = None
        if previous is not None and db_reason is None:
            prev_db = next((d for d in previous.databases if d.name == name), None)
            if prev_db is not None:
                db_reason = database_whole_reason(prev_db, snapshot, info.oid)
        step = f"read catalog of database {name}"
        schema_future: Future[StreamResult] | None = None
        # Reused when nothing pg_dump reads changed since the previous backup (see
        # read_schema_fingerprint): pg_dump does not run.
        reusable = prev_db if prev_db is not None and db_reason is None else None
        try:
            # The schema fingerprint, the sequences and the database's own state are read on
            # a connection of its own in the snapshot while the coordinator lists, locks and
            # checks the tables (on a schema of thousands of tables, each takes a while).
            fingerprint_ready: Future[str | None] = Future()
            side = self.table_pool.submit(
                self._in_snapshot,
                functools.partial(self._side_reads, fingerprint_ready),
                info,
                snapshot.snapshot_id,
                step,
            )
            if reusable is None or not reusable.schema_fingerprint:
                # The schema dump (the longest step on a schema of thousands of tables) reads
                # the snapshot and takes its own locks: it starts now, while the tables are
                # listed, locked and checked. Any retake stops it (its result is never used).
                schema_future = self.dump_pool.submit(
                    self.dump_schema, name, snapshot.snapshot_id, flag
                )
            try:
                try:
                    schemas = read_schemas(conn)
                    states = read_table_states(conn) if schema_future is None else None
                except psycopg.Error as exc:
                    raise pg_error(exc, step) from None
                found: tuple[list[int], list[Table]] | None = None
                reused = False
                if schema_future is None:
                    assert reusable is not None and states is not None
                    if self._fingerprint(side, fingerprint_ready) == reusable.schema_fingerprint:
                        # The catalogs hold the previous backup's row versions: its schema
                        # archive, and its table definitions, are this snapshot's.
                        schema_future = Future()
                        schema_future.set_result(
                            StreamResult(reusable.schema_archive, reusable.schema_archive_size)
                        )
                        reused = True
                        found = states.tables(reusable)
                    else:
                        schema_future = self.dump_pool.submit(
                            self.dump_schema, name, snapshot.snapshot_id, flag
                        )
                if found is None:
                    try:
                        found = read_tables(conn)
                    except psycopg.Error as exc:
                        raise pg_error(exc, step) from None
                filenodes, tables = found
                writes, wal_note = self._wal_writes(
                    info, conn, prev_db, db_reason, wal, list(zip(tables, filenodes, strict=True))
                )
                plans = [
                    plan_table(
                        t,
                        previous,
                        name,
                        snapshot,
                        db_reason,
                        self.stream_settings,
                        None if writes is None else writes.of(t.oid),
                    )
                    for t in tables
                ]
                if writes is not None:
                    wal_note = _wal_note(writes, plans)
                # Locked and checked: what is read, and everything while pg_dump runs (an
                # UNCHANGED table is not read: nothing done to it after the snapshot matters).
                checked = [
                    (p.table, node)
                    for p, node in zip(plans, filenodes, strict=True)
                    if not reused or p.mode != TableMode.UNCHANGED
                ]
                lock_tables(conn, [t for t, _ in checked], name)
                check_identities(conn, [t for t, _ in checked], [n for _, n in checked], name)
                lanes = assign_lanes(work_items(plans, adapter.parallelism), adapter.parallelism)
                reader.open_lanes([lane_tables(lane) for lane in lanes])
                state = side.result()
                if request.on_snapshots is not None:
                    request.on_snapshots({name: snapshot.snapshot_id})
            except BaseException:
                abort.set()  # this attempt's schema dump stops
                with contextlib.suppress(BaseException):  # its connection is closed
                    side.result()
                raise
            read = [p.table for p in plans if p.mode != TableMode.UNCHANGED]
            outcomes, sizes, archive = self._read_rows(
                reader, conn, lanes, read, schema_future, flag, abort
            )
            table_backups = [table_backup(p, outcomes, sizes) for p in plans]
            with contextlib.suppress(psycopg.Error):
                conn.execute("COMMIT")
        finally:
            reader.close()
        logical = archive.size + sum(o.result.size for o in outcomes.values())
        return (
            DatabaseBackup(
                name=name,
                encoding=info.encoding,
                collate=info.collate,
                ctype=info.ctype,
                size_bytes=state.size,
                snapshot=snapshot,
                schema_archive=archive.chunks,
                schema_archive_size=archive.size,
                schema_fingerprint=state.fingerprint,
                tables=table_backups,
                sequences=state.sequences,
                oid=info.oid,
                is_template=info.is_template,
                properties=state.properties,
                locale=state.locale,
                matviews=state.matviews,
                large_objects=state.large_objects,
                wal_mark=wal.mark,
                wal_summary=wal_note,
            ),
            logical,
            schemas,
        )

    def _summarize(self, end: int) -> Summarized:
        """A checkpoint, then the wait until the WAL summaries reach ``end`` (on a connection
        of its own, while the databases' catalogs are read)."""
        try:
            return summarize_through(
                functools.partial(self.adapter.connect, step="CHECKPOINT for the WAL summaries"),
                end,
            )
        except BackupError as exc:
            return Summarized(end, reason=f"no connection for the checkpoint: {exc.message}")

    def _wal_writes(
        self,
        info: DbInfo,
        conn: psycopg.Connection[Any],
        prev_db: DatabaseBackup | None,
        db_reason: str | None,
        wal: _Wal,
        tables: Sequence[tuple[Table, int]],
    ) -> tuple[WalWrites | None, str | None]:
        """What the WAL summaries say of the database's tables since the previous backup's
        mark (see :mod:`.postgres_walsummary`), or why they are not asked (``None`` and a
        note for the manifest; no note where they could not apply: before 17, a full, a new
        database, a database stored whole)."""
        if self.version_num < 170000 or prev_db is None or db_reason is not None:
            return None, None
        if not self.summarizing:
            return None, "summarize_wal is off: every table probed"
        if prev_db.wal_mark is None:
            return None, "the previous backup recorded no WAL mark: every table probed"
        if wal.retaken:
            return None, "snapshot retaken after concurrent DDL: every table probed"
        if wal.summaries is None:
            return None, "the WAL position could not be read: every table probed"
        summarized = wal.summaries.result()
        try:
            writes = read_wal_writes(
                conn,
                info.oid,
                prev_db.wal_mark,
                prev_db.snapshot,
                summarized,
                [(t.oid, node) for t, node in tables],
            )
        except psycopg.Error as exc:
            raise pg_error(exc, f"in database {info.name}: read the WAL summaries") from None
        if writes.reason is not None:
            return None, f"WAL summaries {writes.range_text}: {writes.reason}: every table probed"
        return writes, None

    def _in_snapshot(
        self,
        read: Callable[[psycopg.Connection[Any]], _T],
        info: DbInfo,
        snapshot_id: str,
        step: str,
    ) -> _T:
        """``read`` on a connection of its own that imports the database's snapshot."""
        conn = self.adapter.connect(info.name, step=step)
        try:
            DbReader(self.adapter, info.name, info.encoding, snapshot_id, self._tool("psql")).begin(
                conn, step
            )
            try:
                return read(conn)
            except psycopg.Error as exc:
                raise pg_error(exc, step) from None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _side_reads(
        self, fingerprint_ready: Future[str | None], conn: psycopg.Connection[Any]
    ) -> _SideReads:
        """The schema fingerprint (also given to ``fingerprint_ready`` as soon as it is read),
        then the sequences (not transactional: their state now, read before any row, as
        ``pg_dump`` reads it) and the rest of the database's state."""
        large_objects = read_large_object_count(conn)
        fingerprint = read_schema_fingerprint(conn, large_objects, self.version_num)
        fingerprint_ready.set_result(fingerprint)
        return _SideReads(
            fingerprint=fingerprint,
            large_objects=large_objects,
            sequences=read_sequences(conn),
            matviews=read_matviews(conn),
            properties=read_properties(conn),
            locale=read_locale(conn, self.version_num),
            size=read_database_size(conn),
        )

    @staticmethod
    def _fingerprint(side: Future[Any], ready: Future[str | None]) -> str | None:
        """The schema fingerprint as soon as the side connection has read it; what stopped
        the side reads before that is raised."""
        wait([ready, side], return_when=FIRST_COMPLETED)
        if ready.done():
            return ready.result()
        side.result()
        raise AssertionError("the side reads ended without a schema fingerprint")

    def _read_rows(
        self,
        reader: DbReader,
        conn: psycopg.Connection[Any],
        lanes: Sequence[Sequence[WorkItem]],
        tables: Sequence[Table],
        schema_future: Future[StreamResult],
        flag: Flags,
        abort: threading.Event,
    ) -> tuple[dict[int, StreamOutcome], dict[int, int], StreamResult]:
        """Every lane on the table pool (each on its own connection, its items largest first),
        the exact table sizes on the coordinator meanwhile, then the schema dump's result. The
        first failure sets ``abort`` (every other stream stops) and is raised once all have
        stopped.

        Sizes (``pg_total_relation_size`` opens every fork of the table, its indexes and its
        TOAST table: about a millisecond a table) are read meanwhile for the tables streamed
        on their own, by the lanes for the packed small tables (see
        :meth:`~.postgres_streams.DbReader.run_small_tables`), and afterwards for the small
        delta tables a batch found changed: an ``UNCHANGED`` table keeps the size its previous
        entry recorded."""
        request = self.request
        total_estimate = sum(w.estimate for lane in lanes for w in lane) or 1
        done = [0]
        progress_lock = threading.Lock()

        def run(lane: int) -> list[tuple[Stream, StreamOutcome]]:
            reader.enter_lane(lane)
            out: list[tuple[Stream, StreamOutcome]] = []
            try:
                for item in lanes[lane]:
                    if flag.is_set():
                        raise StreamCancelled()
                    if isinstance(item, SmallDeltas):
                        out += reader.run_small_deltas(item, self.chunks, flag)
                    elif isinstance(item, SmallTables):
                        out += reader.run_small_tables(item, self.chunks, flag)
                    else:
                        out.append((item, reader.run_stream(item, self.chunks, flag)))
                    if request.on_progress is not None:
                        with progress_lock:
                            done[0] += item.estimate
                            request.on_progress(min(0.99, done[0] / total_estimate))
            except BaseException:
                abort.set()
                raise
            return out

        futures = [self.table_pool.submit(run, lane) for lane in range(len(lanes)) if lanes[lane]]
        outcomes: dict[int, StreamOutcome] = {}
        first_error: BaseException | None = None
        sizes: dict[int, int] = {}
        batched = [
            p
            for lane in lanes
            for item in lane
            if isinstance(item, SmallDeltas)
            for p in item.plans
        ]
        packed = self._packed_streams(lanes)
        batched_oids = {p.table.oid for p in batched} | {s.table.oid for s in packed}
        try:
            sizes = read_sizes(conn, [t for t in tables if t.oid not in batched_oids], reader.name)
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
        if first_error is None:
            for stream in packed:
                size = outcomes[id(stream)].size_bytes
                if size is not None:
                    sizes[stream.table.oid] = size
            changed = [p.table for p in batched if not outcomes[id(p.data)].unchanged]
            try:
                sizes.update(read_sizes(conn, changed, reader.name) if changed else {})
            except BaseException as exc:
                abort.set()
                first_error = exc
        try:
            archive = schema_future.result()
        except BaseException as exc:
            abort.set()
            if first_error is None or isinstance(first_error, StreamCancelled):
                first_error = exc
        if first_error is not None:
            raise first_error
        return outcomes, sizes, archive

    @staticmethod
    def _packed_streams(lanes: Sequence[Sequence[WorkItem]]) -> list[Stream]:
        """The data streams of the small tables packed into shared chunks."""
        return [
            p.data
            for lane in lanes
            for item in lane
            if isinstance(item, SmallTables)
            for p in item.plans
        ]

    def dump_schema(self, db: str, snapshot_id: str, flag: Flags) -> StreamResult:
        """``pg_dump -Fc -b --exclude-table-data='*.*'`` in the database's snapshot; a lock it
        cannot get, or a definition dropped since the snapshot, raises :class:`Retake`."""
        adapter = self.adapter
        tool = self._tool("pg_dump")
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
            adapter.tool_conninfo(db),
        ]
        try:
            return self.chunks.write_stream(
                adapter.run_tool(cmd, step=f"pg_dump -Fc --exclude-table-data {db}", flag=flag),
                adapter.data_chunking,
                cancel=flag,
            )
        except BackupError as exc:
            # Our locks are held: pg_dump can only wait behind a DDL statement that itself
            # waits for us. Release everything and retake the snapshot.
            # (pg_dump's --lock-wait-timeout is a statement timeout on its LOCK statements.)
            text = exc.message
            if "could not obtain lock" in text or "due to statement timeout" in text:
                raise Retake(f"pg_dump: {exc.message}") from None
            # pg_dump reads the catalog in the snapshot but some definitions (views, functions,
            # types) through the server's current catalog: an object dropped since the snapshot
            # fails it. A new snapshot no longer holds that object.
            if _DROPPED_SINCE_SNAPSHOT.search(text):
                raise Retake(f"pg_dump: {exc.message}") from None
            raise


def _optional_int(conn: psycopg.Connection[Any], sql: str) -> int | None:
    """A single integer, or ``None`` when the role may not read it (``pg_control_*``)."""
    try:
        row = conn.execute(sql).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row and row[0] is not None else None
