"""Rebuilding tables from a chain of manifests, streamed, and restoring them into PostgreSQL.

A table at backup ``B_k`` of a chain is rebuilt from its *history*: the newest backup in
``B_0..B_k`` that stored it in full (``FULL`` or ``WHOLE``), then every later ``DELTA``,
merged once (:mod:`.merge`): for each key the newest backup's row, in the key order the backup
read them in (:func:`~.sql.order_by`, reproduced by :func:`~.sql.key_parser`), only the keys
present in ``B_k``'s key set; rows no delta touched pass through a block at a time.

Every stream is read chunk by chunk with each chunk's hash verified before use
(:meth:`~.chunks.ChunkStore.iter_chunks`), so memory is bounded by the number of streams in
the history times a few chunks, whatever the table size. A history with no delta is streamed
as is, without parsing.

:func:`restore_table` COPYs a rebuilt table into a destination table inside one transaction,
so a missing or corrupt chunk found half-way leaves the destination untouched.
:func:`restore_database` restores a whole database the way ``pg_restore`` sections work:
pre-data schema with large objects, table rows, sequence states, post-data (indexes,
constraints, triggers, ACLs), then what ``pg_dump --create`` and ``pg_restore`` would add:
populated materialized views refreshed (dependencies first), and the database's own settings,
role-in-database settings, comment, security labels, connection limit, owner and ACL applied
to the destination database. Its fixed costs are those of ``pg_restore``'s run, not one per
table (see :func:`restore_database`). Rows are copied in the database's own bytes
(:func:`~.sql.copy_encoding`), whatever its encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .chunks import ChunkError, ChunkMissing, ChunkStore
from .engine import BackupError, ErrorCode, RestoreError
from .manifest import (
    ChunkRef,
    DatabaseBackup,
    KeyColumn,
    KeySetFormat,
    Manifest,
    ManifestError,
    MatView,
    TableBackup,
    TableMode,
    check_chain,
)
from .merge import CorruptStream, Key, KeyList, LiveKeys, RangeSet, lines_of, merge_history
from .objectstore import ObjectStore
from .sql import (
    SESSION_SETTINGS,
    connect,
    copy_encoding,
    encoded,
    key_parser,
    quote_ident,
    quote_literal,
)
from .tools import ClientTools, client_tools_for, find_pg_tool, tool_environment

__all__ = [
    "RestoreReport",
    "fetch_to_file",
    "iter_stream",
    "iter_table_rows",
    "restore_database",
    "restore_table",
    "rows_digest",
    "table_history",
]

_OUT_BLOCK = 256 << 10


def table_history(
    chain: Sequence[Manifest], database: str, schema: str, table: str
) -> list[tuple[Manifest, TableBackup]]:
    """The (manifest, table entry) pairs needed to rebuild the table at ``chain[-1]``.

    ``UNCHANGED`` entries store nothing: the table is as the entries before them hold it, so
    the history starts at the newest entry that stores something (whose key set, for a delta,
    is the table's at ``chain[-1]``) and skips the unchanged ones below it too."""
    try:
        check_chain(chain)
    except ManifestError as exc:
        raise RestoreError(ErrorCode.INVALID_CHAIN, str(exc), "check chain") from None
    last = chain[-1].table(database, schema, table)
    if last is None:
        raise RestoreError(
            ErrorCode.NOT_FOUND,
            f"table {database}.{schema}.{table} is not in backup {chain[-1].backup_id}",
            "find table",
        )
    history: list[tuple[Manifest, TableBackup]] = []
    entry = last
    index = len(chain) - 1
    while True:
        if entry.mode != TableMode.UNCHANGED:
            history.append((chain[index], entry))
        if entry.mode not in (TableMode.DELTA, TableMode.UNCHANGED):
            break
        index -= 1
        prev = chain[index].table(database, schema, table) if index >= 0 else None
        if prev is None or prev.fingerprint != entry.fingerprint or not prev.ordered:
            raise RestoreError(
                ErrorCode.INVALID_CHAIN,
                f"{entry.mode.lower()} entry of {schema}.{table} in {chain[index + 1].backup_id}"
                " has no base",
                "rebuild table history",
            )
        entry = prev
    history.reverse()
    return history


# ------------------------------------------------------------------------------ line parsing
def _key_function(
    columns: Sequence[str], key_columns: Sequence[KeyColumn]
) -> Callable[[bytes], Key]:
    positions = [columns.index(kc.name) for kc in key_columns]
    converters = [key_parser(kc.type) for kc in key_columns]
    last = max(positions) + 1

    if len(positions) == 1:
        pos = positions[0]
        conv = converters[0]

        def single(line: bytes) -> Key:
            return (conv(line.split(b"\t", pos + 1)[pos]),)

        return single

    def composite(line: bytes) -> Key:
        fields = line.split(b"\t", last)
        return tuple(conv(fields[p]) for p, conv in zip(positions, converters, strict=True))

    return composite


# ------------------------------------------------------------------------------ rebuilding
def _chunk_errors(step: str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def wrap() -> Iterator[None]:
        try:
            yield
        except ChunkError as exc:
            code = (
                ErrorCode.CHUNK_MISSING
                if isinstance(exc, ChunkMissing)
                else ErrorCode.CHUNK_CORRUPT
            )
            raise RestoreError(code, str(exc), step) from None

    return wrap()


def iter_stream(
    store: ObjectStore, manifest: Manifest, refs: Sequence[ChunkRef], *, prefetch: int = 4
) -> Iterator[bytes]:
    """The raw bytes of a chunk list of ``manifest``'s chain (globals, a schema archive...)."""
    with (
        ChunkStore(store, manifest.cluster_id, manifest.chain_id, workers=prefetch) as chunks,
        _chunk_errors("read chunks"),
    ):
        yield from chunks.iter_chunks(refs, prefetch=prefetch)


def table_stream(chunks: ChunkStore, entry: TableBackup, *, prefetch: int = 2) -> Iterator[bytes]:
    """The raw bytes of one entry's data stream: ``data_size`` bytes from ``data_offset`` of
    its chunks (a table packed with others shares its first and last chunks with them)."""
    skip, left = entry.data_offset, entry.data_size
    if left == 0:
        return
    for block in chunks.iter_chunks(entry.data, prefetch=prefetch):
        if skip >= len(block):
            skip -= len(block)
            continue
        piece = block[skip : skip + left] if skip or left < len(block) else block
        skip = 0
        left -= len(piece)
        yield piece
        if left <= 0:
            return


def iter_table_rows(
    store: ObjectStore,
    chain: Sequence[Manifest],
    database: str,
    schema: str,
    table: str,
    *,
    prefetch: int = 2,
    chunks: ChunkStore | None = None,
) -> Iterator[bytes]:
    """The table's rows at ``chain[-1]`` as COPY text blocks (whole lines), in key order.

    ``chain`` is the full backup followed by its incrementals up to the wanted backup (see
    :func:`~.manifest.load_chain`); the table is merged from its history once, the newest
    version of each key, with the rows nothing touched passed through a block at a time
    (:func:`~.merge.merge_history`). ``chunks``: a chunk store of the chain to read with
    (shared by the tables of a database restore), else one of its own. Raises
    :class:`~.engine.RestoreError` (``NOT_FOUND``, ``INVALID_CHAIN``, ``CHUNK_MISSING``,
    ``CHUNK_CORRUPT``).
    """
    history = table_history(chain, database, schema, table)
    head = chain[-1]
    step = f"rebuild {database}.{schema}.{table}"
    with contextlib.ExitStack() as stack:
        if chunks is None:
            workers = max(2, prefetch * len(history))
            chunks = stack.enter_context(
                ChunkStore(store, head.cluster_id, head.chain_id, workers=workers)
            )
        stack.enter_context(_chunk_errors(step))
        if len(history) == 1:
            yield from table_stream(chunks, history[0][1], prefetch=prefetch)
            return
        last = history[-1][1]
        assert last.key_set is not None
        key_fn = _key_function(last.columns, last.key_columns)
        key_lines = lines_of(chunks.iter_chunks(last.key_set.chunks, prefetch=prefetch))
        live: LiveKeys
        if last.key_set.format == KeySetFormat.RANGES:
            live = RangeSet(key_lines)
        else:
            key_only = _key_function([kc.name for kc in last.key_columns], last.key_columns)
            live = KeyList(key_only(line) for line in key_lines)
        streams = [table_stream(chunks, entry, prefetch=prefetch) for _, entry in history]
        try:
            yield from merge_history(streams[0], streams[1:], live, key_fn)
        except CorruptStream as exc:
            raise RestoreError(ErrorCode.CHUNK_CORRUPT, str(exc), step) from None
        except ValueError as exc:  # a key that does not parse as its type
            raise RestoreError(ErrorCode.CHUNK_CORRUPT, f"unreadable key: {exc}", step) from None


def rows_digest(blocks: Iterable[bytes], *, sort: bool = False) -> tuple[int, str]:
    """``(row count, md5 of the COPY text)``; ``sort=True`` hashes the lines sorted (for
    tables without a key, whose order is physical). Sorting holds the lines in memory."""
    md5 = hashlib.md5(usedforsecurity=False)
    rows = 0
    if sort:
        try:
            lines = sorted(lines_of(blocks))
        except CorruptStream as exc:
            raise RestoreError(ErrorCode.CHUNK_CORRUPT, str(exc), "parse rows") from None
        for line in lines:
            md5.update(line + b"\n")
        return len(lines), md5.hexdigest()
    for block in blocks:
        rows += block.count(b"\n")
        md5.update(block)
    return rows, md5.hexdigest()


# ------------------------------------------------------------------------------ restoring
def _settings(conn: psycopg.Connection[Any], **extra: str) -> None:
    """The session settings of every COPY (:data:`~.sql.SESSION_SETTINGS`) and ``extra``, in
    one round trip."""
    pairs = [*SESSION_SETTINGS, *extra.items()]
    conn.execute("; ".join(f"SET {name} = {quote_literal(value)}" for name, value in pairs))


@contextlib.contextmanager
def _copy_encoding(conn: psycopg.Connection[Any], encoding: str) -> Iterator[None]:
    """The session in the client encoding rows of a database in ``encoding`` are copied in
    (:func:`~.sql.copy_encoding`), then back in its own (a caller's session goes on with
    statements in it)."""
    before = conn.info.parameter_status("client_encoding") or "UTF8"
    wanted = copy_encoding(encoding)
    if wanted != before:
        conn.execute(f"SET client_encoding = {quote_literal(wanted)}")
    yield
    if wanted != before:
        conn.execute(f"SET client_encoding = {quote_literal(before)}")


def _connect(conninfo: str, password: str | None, *, autocommit: bool) -> psycopg.Connection[Any]:
    try:
        return connect(conninfo, password=password, autocommit=autocommit)
    except psycopg.Error as exc:
        raise RestoreError(
            ErrorCode.CONNECTION_FAILED, str(exc).splitlines()[0], "connect to destination"
        ) from None


def destination_tools(
    conninfo: str, password: str | None, client_bindirs: Sequence[Path] = ()
) -> ClientTools:
    """The client tools for the destination's server (:func:`~.tools.client_tools_for`)."""
    with _connect(conninfo, password, autocommit=True) as conn:
        version = int(conn.info.server_version)
    try:
        return client_tools_for(version, client_bindirs, step="choose client tools")
    except BackupError as exc:
        raise RestoreError(exc.code, exc.message, exc.step) from None


def restore_table(
    store: ObjectStore,
    chain: Sequence[Manifest],
    database: str,
    schema: str,
    table: str,
    conninfo: str,
    *,
    password: str | None = None,
    target_schema: str | None = None,
    target_table: str | None = None,
    conn: psycopg.Connection[Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """COPY the table as of ``chain[-1]`` into an existing table (one transaction).

    The destination is ``target_schema.target_table`` (default: the same names) in the
    database ``conninfo`` names, or on ``conn`` (then the caller commits). Returns the rows.
    ``progress`` receives the byte count of every block written (it may raise to abort).
    """
    entry = chain[-1].table(database, schema, table)
    if entry is None:
        raise RestoreError(
            ErrorCode.NOT_FOUND, f"{database}.{schema}.{table} not in backup", "find table"
        )
    own = conn is None
    if conn is None:
        conn = _connect(conninfo, password, autocommit=False)
    try:
        with contextlib.ExitStack() as stack:
            head = chain[-1]
            chunks = stack.enter_context(ChunkStore(store, head.cluster_id, head.chain_id))
            copy = _TableCopy(store, chain, database, chunks, progress)
            try:
                _settings(conn)
                with _copy_encoding(conn, head.database(database).encoding):
                    rows = copy.run(conn, entry, target_schema, target_table)
                if own:
                    conn.commit()
            except psycopg.Error as exc:
                raise RestoreError(
                    ErrorCode.RESTORE_FAILED, str(exc).splitlines()[0], copy.statement
                ) from None
    finally:
        if own:
            conn.close()
    return rows


@dataclass
class _TableCopy:
    """COPYs tables of one database of a chain, each rebuilt from its history
    (:func:`iter_table_rows`) with one shared chunk store."""

    store: ObjectStore
    chain: Sequence[Manifest]
    database: str
    chunks: ChunkStore
    progress: Callable[[int], None] | None = None
    statement: str = ""
    """The last statement run (what a failure names)."""

    def run(
        self,
        conn: psycopg.Connection[Any],
        entry: TableBackup,
        target_schema: str | None = None,
        target_table: str | None = None,
        *,
        freeze: bool = False,
    ) -> int:
        """The rows of ``entry`` into its table on ``conn`` (in the copy encoding, in the
        caller's transaction). ``freeze``: the table is emptied in the same transaction and
        filled with ``COPY ... FREEZE`` (rows written frozen and visible to all, so the index
        builds and the first reads after the restore do not rewrite every page to set hint
        bits); only for a table nobody else sees yet, and never an extension configuration
        table, whose rows ``CREATE EXTENSION`` made."""
        schema, table = entry.schema_name, entry.name
        target = f"{quote_ident(target_schema or schema)}.{quote_ident(target_table or table)}"
        cols = f" ({', '.join(quote_ident(c) for c in entry.columns)})" if entry.columns else ""
        if freeze and entry.extension_condition is None:
            self.statement = f"TRUNCATE ONLY {target}"
            conn.execute(encoded(conn, self.statement))
            self.statement = f"COPY {target}{cols} FROM STDIN (FREEZE)"
        else:
            self.statement = f"COPY {target}{cols} FROM STDIN"
        rows = 0
        blocks = iter_table_rows(
            self.store, self.chain, self.database, schema, table, chunks=self.chunks
        )
        with conn.cursor() as cur, cur.copy(encoded(conn, self.statement)) as copy:
            for block in blocks:
                copy.write(block)
                rows += block.count(b"\n")
                if self.progress is not None:
                    self.progress(len(block))
        return rows


def fetch_to_file(
    store: ObjectStore, manifest: Manifest, refs: Sequence[ChunkRef], path: Path
) -> Path:
    """Write a chunk list (e.g. a schema archive) to ``path``, verifying every chunk."""
    with path.open("wb") as f:
        for block in iter_stream(store, manifest, refs):
            f.write(block)
    return path


@dataclass
class RestoreReport:
    database: str
    tables: dict[str, int] = field(default_factory=dict)
    """``schema.table`` → rows restored."""
    sequences: int = 0
    matviews_refreshed: int = 0
    settings: int = 0
    """Database and role-in-database settings applied."""
    skipped: list[str] = field(default_factory=list)
    """What could not be applied and why (e.g. a role-in-database setting whose role does
    not exist in the destination cluster)."""


def _pg_restore(
    args: list[str],
    archive: Path,
    conninfo: str,
    env: Mapping[str, str],
    step: str,
    bindir: Path | None,
) -> None:
    cmd = [find_pg_tool("pg_restore", bindir), *args, "-d", conninfo, str(archive)]
    proc = subprocess.run(cmd, capture_output=True, env=dict(env), check=False)
    if proc.returncode != 0:
        raise RestoreError(
            ErrorCode.RESTORE_FAILED,
            _pg_restore_error(proc.stderr.decode("utf-8", "replace")),
            step,
        )


def _pg_restore_error(stderr: str) -> str:
    """The error line of ``pg_restore``'s standard error and the archive entry it was
    restoring (its first line, "while PROCESSING TOC:", says neither)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    entries = [
        line.split("from TOC entry", 1)[1].strip() for line in lines if "from TOC entry" in line
    ]
    if not errors:
        return lines[0] if lines else "pg_restore failed"
    return errors[0] + (f" (archive entry {entries[0]})" if entries else "")


def restore_database(
    store: ObjectStore,
    chain: Sequence[Manifest],
    database: str,
    conninfo: str,
    *,
    password: str | None = None,
    env: Mapping[str, str] | None = None,
    no_owner: bool = True,
    no_privileges: bool = True,
    bindir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    client_bindirs: Sequence[Path] = (),
) -> RestoreReport:
    """Restore database ``database`` of ``chain[-1]`` into the (existing, empty) database
    ``conninfo`` names: schema pre-data and large objects, rows, sequence values, post-data.

    ``bindir``: the client tools to run; without it, those chosen among ``client_bindirs``
    (default: what the installation provides) for the destination's server
    (:func:`~.tools.client_tools_for`).

    ``jobs`` = 1: the rows and the sequences' values in one transaction. ``jobs`` > 1 (for a
    database nobody uses yet, e.g. one restored under a temporary name): that many sessions
    copy tables at once (largest first, each session taking the next table when it is done,
    its tables in few transactions with ``COPY FREEZE``), and the post-data (indexes,
    constraints) is built with ``pg_restore -j jobs``.

    The fixed costs are those of ``pg_restore``'s own run, not one per table: two
    ``pg_restore`` runs (pre-data with the large objects, post-data), one session per job
    (its settings sent once), one chunk reader for every table (a pack of small tables shares
    chunks, read once), and the sequences set in batches."""
    head = chain[-1]
    db = head.database(database)
    params = conninfo_to_dict(conninfo)
    if "password" in params:
        raise ValueError("conninfo must not contain a password")
    child_env = tool_environment(env, password)
    flags = ["--exit-on-error", "-w"]
    if no_owner:
        flags.append("--no-owner")
    if no_privileges:
        flags.append("--no-privileges")
    if bindir is None:
        bindir = destination_tools(conninfo, password, client_bindirs).bindir
    report = RestoreReport(database=database)
    with (
        tempfile.TemporaryDirectory(prefix="mb-restore-") as tmp,
        ChunkStore(store, head.cluster_id, head.chain_id, workers=2 + 2 * max(1, jobs)) as chunks,
    ):
        archive = fetch_to_file(store, head, db.schema_archive, Path(tmp) / "schema.dump")
        # The schema, then the archive's only data: large objects' contents (version 2).
        _pg_restore(
            [*flags, "--section=pre-data", "--section=data"],
            archive,
            conninfo,
            child_env,
            "pg_restore --section=pre-data --section=data",
            bindir,
        )
        copy = _TableCopy(store, chain, database, chunks, progress)
        conn = _connect(conninfo, password, autocommit=False)
        try:
            try:
                if jobs > 1:
                    report.tables.update(_copy_in_lanes(copy, db, conninfo, password, jobs))
                else:
                    _settings(conn)
                    with _copy_encoding(conn, db.encoding):
                        for t in db.tables:
                            report.tables[f"{t.schema_name}.{t.name}"] = copy.run(conn, t)
                copy.statement = "set the sequences' values"
                report.sequences = _set_sequences(conn, db)
                conn.commit()
            except psycopg.Error as exc:
                raise RestoreError(
                    ErrorCode.RESTORE_FAILED, str(exc).splitlines()[0], copy.statement
                ) from None
        finally:
            conn.close()
        _pg_restore(
            [*flags, "--section=post-data", *(["-j", str(jobs)] if jobs > 1 else [])],
            archive,
            conninfo,
            child_env,
            "pg_restore --section=post-data",
            bindir,
        )
    _finish_database(db, conninfo, password, report, no_owner, no_privileges)
    return report


def _set_sequences(conn: psycopg.Connection[Any], db: DatabaseBackup) -> int:
    """Every sequence's state as the backup read it, 200 to a statement."""
    values = [s for s in db.sequences if s.last_value is not None]  # version 1: never used
    for start in range(0, len(values), 200):
        batch = values[start : start + 200]
        calls = ", ".join("pg_catalog.setval(%s::regclass, %s, %s)" for _ in batch)
        args: list[Any] = []
        for seq in batch:
            target = f"{quote_ident(seq.schema_name)}.{quote_ident(seq.name)}"
            args += [target, seq.last_value, True if seq.is_called is None else seq.is_called]
        conn.execute(f"SELECT {calls}", args)
    return len(values)


def _copy_in_lanes(
    copy: _TableCopy,
    db: DatabaseBackup,
    conninfo: str,
    password: str | None,
    jobs: int,
) -> dict[str, int]:
    """Every table of ``db`` copied by ``jobs`` sessions, each taking the largest table left
    when it is free (as ``pg_restore -j`` does). A session sends its settings once, writes
    with ``synchronous_commit = off`` (the database is renamed into place by a later,
    synchronous commit, which makes everything before it durable) and commits every
    :data:`_COMMIT_BYTES` of rows rather than per table. The first failure stops the others."""
    from concurrent.futures import ThreadPoolExecutor

    chain = copy.chain
    pending = deque(
        sorted(
            db.tables,
            key=lambda t: (
                -sum(e.data_size for _, e in table_history(chain, db.name, t.schema_name, t.name))
            ),
        )
    )
    lock = threading.Lock()
    failed = threading.Event()
    done: dict[str, int] = {}
    with _connect(conninfo, password, autocommit=True) as conn:
        # TRUNCATE (for COPY FREEZE) needs its own privilege: the tables the role may empty.
        freezable = {
            (str(a), str(b))
            for a, b in conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'r' AND has_table_privilege(c.oid, 'TRUNCATE')"
            ).fetchall()
        }

    def lane() -> None:
        conn = connect(
            conninfo,
            password=password,
            autocommit=False,
            client_encoding=copy_encoding(db.encoding),
        )
        mine = _TableCopy(copy.store, chain, copy.database, copy.chunks, copy.progress)
        try:
            _settings(conn, synchronous_commit="off")
            since_commit = 0
            while not failed.is_set():
                with lock:
                    if not pending:
                        break
                    entry = pending.popleft()
                freeze = (
                    entry.schema_name,
                    entry.name,
                ) in freezable and entry.data_size >= _FREEZE_BYTES
                rows = mine.run(conn, entry, freeze=freeze)
                done[f"{entry.schema_name}.{entry.name}"] = rows
                since_commit += entry.data_size
                if since_commit >= _COMMIT_BYTES:
                    conn.commit()
                    since_commit = 0
            conn.commit()
        except psycopg.Error as exc:
            failed.set()
            raise RestoreError(
                ErrorCode.RESTORE_FAILED, str(exc).splitlines()[0], mine.statement
            ) from None
        except BaseException:
            failed.set()
            raise
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mb-restore") as pool:
        lanes = [pool.submit(lane) for _ in range(min(jobs, max(1, len(pending))))]
        errors = []
        for future in lanes:
            try:
                future.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
    return {f"{t.schema_name}.{t.name}": done[f"{t.schema_name}.{t.name}"] for t in db.tables}


_FREEZE_BYTES = 1 << 20
"""Tables from this size are emptied and copied ``FREEZE`` (see :meth:`_TableCopy.run`); a
smaller one is not worth its ``TRUNCATE`` (a new file for it and its TOAST table)."""
_COMMIT_BYTES = 256 << 20
"""Rows a restore session copies between two commits (see :func:`_copy_in_lanes`)."""


#: Settings whose value is a list of (quoted) identifiers, stored as SQL list syntax.
_LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "shared_preload_libraries",
        "local_preload_libraries",
    }
)


def _set_clause(item: str) -> str:
    name, _sep, value = item.partition("=")
    if name.lower() in _LIST_SETTINGS:
        return f"SET {quote_ident(name)} TO {value}"
    return f"SET {quote_ident(name)} TO {_literal(value)}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_DB_PRIVILEGES = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def _acl_items(acl: str) -> list[tuple[str, str, bool]]:
    """``{grantee=privs/grantor,...}`` as (grantee or ``""`` for PUBLIC, privileges, grant
    option) triples, one per privilege."""
    body = acl.strip()[1:-1]
    items: list[str] = []
    current = ""
    quoted = False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append(current)
            current = ""
        else:
            current += ch
    if current:
        items.append(current)
    out: list[tuple[str, str, bool]] = []
    for item in items:
        item = item.strip('"') if item.startswith('"') and item.endswith('"') else item
        grantee_part, _sep, rest = item.rpartition("=")
        privs = rest.split("/", 1)[0]
        grantee = grantee_part.strip('"').replace('""', '"')
        i = 0
        while i < len(privs):
            letter = privs[i]
            grant = i + 1 < len(privs) and privs[i + 1] == "*"
            if letter in _DB_PRIVILEGES:
                out.append((grantee, _DB_PRIVILEGES[letter], grant))
            i += 2 if grant else 1
    return out


def _finish_database(
    db: DatabaseBackup,
    conninfo: str,
    password: str | None,
    report: RestoreReport,
    no_owner: bool,
    no_privileges: bool,
) -> None:
    """Refresh populated materialized views, then give the destination database the source
    database's own properties (version 2 manifests; version 1 recorded none)."""
    conn = _connect(conninfo, password, autocommit=True)
    step = "refresh materialized views"
    try:
        pending = [m for m in db.matviews if m.populated]
        while pending:
            # A view over an unpopulated view fails: refresh in passes, dependencies first.
            failed: list[tuple[MatView, str]] = []
            for mv in pending:
                sql = f"REFRESH MATERIALIZED VIEW {quote_ident(mv.schema_name)}.{quote_ident(mv.name)}"
                try:
                    conn.execute(sql)
                    report.matviews_refreshed += 1
                except psycopg.Error as exc:
                    failed.append((mv, str(exc).splitlines()[0]))
            if len(failed) == len(pending):
                raise RestoreError(ErrorCode.RESTORE_FAILED, failed[0][1], step)
            pending = [mv for mv, _ in failed]
        props = db.properties
        if props is None:
            return
        step = "apply database properties"
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        target = quote_ident(str(row[0]))
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        for entry in props.settings:
            if entry.role is not None and entry.role not in roles:
                report.skipped.append(
                    f"settings of role {entry.role} in the database: role does not exist"
                )
                continue
            prefix = (
                f"ALTER DATABASE {target}"
                if entry.role is None
                else f"ALTER ROLE {quote_ident(entry.role)} IN DATABASE {target}"
            )
            for item in entry.settings:
                conn.execute(f"{prefix} {_set_clause(item)}")
                report.settings += 1
        conn.execute(f"ALTER DATABASE {target} CONNECTION LIMIT {int(props.connection_limit)}")
        if props.comment is not None:
            conn.execute(f"COMMENT ON DATABASE {target} IS {_literal(props.comment)}")
        for label in props.security_labels:
            try:
                conn.execute(
                    f"SECURITY LABEL FOR {quote_ident(label.provider)} ON DATABASE {target}"
                    f" IS {_literal(label.label)}"
                )
            except psycopg.Error as exc:  # its provider is not loaded on the destination
                report.skipped.append(
                    f"security label {label.label!r} of provider {label.provider} on the"
                    f" database: {str(exc).strip().splitlines()[0]}"
                )
        if not no_owner:
            if props.owner in roles:
                conn.execute(f"ALTER DATABASE {target} OWNER TO {quote_ident(props.owner)}")
            else:
                report.skipped.append(f"database owner {props.owner}: role does not exist")
        if not no_privileges and props.acl is not None:
            owner = props.owner if not no_owner and props.owner in roles else None
            revoke_from = "PUBLIC" + (f", {quote_ident(owner)}" if owner else "")
            conn.execute(f"REVOKE ALL ON DATABASE {target} FROM {revoke_from}")
            for grantee, privilege, grant in _acl_items(props.acl):
                if grantee and grantee not in roles:
                    report.skipped.append(f"{privilege} on the database for {grantee}: no role")
                    continue
                to = quote_ident(grantee) if grantee else "PUBLIC"
                option = " WITH GRANT OPTION" if grant else ""
                conn.execute(f"GRANT {privilege} ON DATABASE {target} TO {to}{option}")
    except psycopg.Error as exc:
        raise RestoreError(ErrorCode.RESTORE_FAILED, str(exc).splitlines()[0], step) from None
    finally:
        conn.close()
