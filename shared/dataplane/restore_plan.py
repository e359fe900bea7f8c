"""Restore kinds on PostgreSQL: what a DATABASE or TABLE restore writes, and how a failure
leaves the destination as it was.

Built on :mod:`.restore_rows` (rows rebuilt from a chain, every chunk's hash checked before its
rows reach the destination). Guarantees, per kind:

- **DATABASE**: the backup's database is restored into a new database under a temporary name
  (``mb_restore_<job>``, created from ``template0`` as the backup's was: encoding, collation,
  locale provider and locale, for the destination's version, see :func:`create_database_sql`),
  then renamed to its final name in one statement. Until the rename nothing with the final
  name exists; a failure at any step drops the temporary database (and the lease reaper drops
  it if the worker died), so the destination holds exactly what it held before.
- **TABLE**: the source database's schema is restored into a scratch database; there the
  dependencies of the chosen tables are checked (a foreign key to a table not restored, a
  default using a sequence not restored), refused by name or removed under the
  ``skip_missing_*`` options, then ``pg_dump -t`` renders exactly the chosen tables with their
  owned sequences, defaults, indexes, constraints and triggers. Into an existing database
  (``into_db``) that DDL, the rows and the sequences' values are applied in **one
  transaction**: PostgreSQL rolls it all back on any failure, including a killed worker (its
  connection closes). Into a new database, the same transaction runs in a temporary database
  that is renamed at the end, as for DATABASE. The scratch database is always dropped.

Every database named after a job is dropped whatever it holds (:func:`drop_database`: its
subscriptions detached from their slots first, which ``DROP DATABASE ... WITH (FORCE)``
refuses otherwise), each on its own, and reported dropped only once the catalog no longer
lists it (:func:`drop_temporary_databases`).

Connections are libpq DSNs without password (``passfile`` or ``env`` carry the secret).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .archive_toc import ArchiveError, TocEntry, read_toc, read_toc_from
from .engine import RestoreError
from .manifest import DatabaseBackup, DatabaseLocale, Manifest
from .restore_rows import (
    destination_tools,
    fetch_to_file,
    iter_stream,
    restore_database,
    restore_table,
    table_history,
)
from .sql import connect, quote_ident
from .table_restore import (
    RELATIONS,
    TableRestoreRefused,
    TableRestoreRequest,
    plan_table_restore,
)
from .tools import find_pg_tool, tool_environment

__all__ = [
    "NOT_DROPPED",
    "ClusterAccess",
    "DropReport",
    "PlanError",
    "RestoreOutcome",
    "RestorePlan",
    "TableObjects",
    "TableRef",
    "create_database_sql",
    "drop_database",
    "drop_temporary_databases",
    "execute_plan",
    "missing_objects",
    "plan_bytes",
    "table_restore_objects",
    "temporary_database_names",
    "temporary_databases",
]

TEMP_PREFIX = "mb_restore_"
NOT_KEPT = (
    "owners and privileges: not kept (a role of the backup does not exist on the destination; "
    "the objects belong to the role the restore connected as)"
)
NOT_DROPPED = "not dropped: "
"""How a restore's result names a temporary database it could not drop (:class:`DropReport`)."""
RESTORE_JOBS = 2
"""Tables copied at once, and ``pg_restore -j`` for indexes and constraints, when a database is
restored under a temporary name (nobody sees it before the rename, so per-table transactions
are safe)."""


class PlanError(Exception):
    """A restore step refused or failed: a stable ``code``, a message naming what is at fault,
    and the ``step``. Codes: ``NAME_CLASH``, ``TABLE_EXISTS``, ``DATABASE_MISSING``,
    ``MISSING_DEPENDENCY``, ``CANCELLED``, and every :class:`~.engine.ErrorCode`."""

    def __init__(self, code: str, message: str, step: str) -> None:
        super().__init__(f"{code}: {message} (step: {step})")
        self.code = code
        self.message = message
        self.step = step

    @classmethod
    def from_restore_error(cls, exc: RestoreError) -> PlanError:
        return cls(exc.code.value, exc.message, exc.step)


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach a cluster: a DSN without password naming its maintenance database, the
    cluster's own password (passed explicitly, never looked up by connection parameters), and the
    environment for the PostgreSQL client tools (libpq's own lookups closed)."""

    dsn: str
    env: Mapping[str, str] = field(default_factory=dict)
    bindir: Path | None = None
    """The client tools the restore runs (:meth:`with_client_tools` chooses them)."""
    password: str | None = field(default=None, repr=False)
    client_bindirs: tuple[Path, ...] = ()
    """The client tools to choose from (empty: what the installation provides)."""

    def server_version_num(self) -> int:
        """The destination server's ``server_version_num``."""
        with self.connect() as conn:
            return int(conn.info.server_version)

    def with_client_tools(self) -> ClusterAccess:
        """This access with ``bindir`` set to the client tools chosen for the destination's
        server (:func:`~.tools.client_tools_for`; an explicit ``bindir`` is kept);
        ``UNSUPPORTED`` when the server is newer than every one."""
        if self.bindir is not None:
            return self
        try:
            tools = destination_tools(self.dsn, self.password, self.client_bindirs)
        except RestoreError as exc:
            raise PlanError.from_restore_error(exc) from None
        return replace(self, bindir=tools.bindir)

    def database(self, name: str) -> str:
        params: dict[str, Any] = dict(conninfo_to_dict(self.dsn))
        params["dbname"] = name
        return make_conninfo(**params)

    def connect(self, name: str = "postgres", autocommit: bool = True) -> psycopg.Connection[Any]:
        try:
            return connect(
                self.database(name),
                password=self.password,
                autocommit=autocommit,
                connect_timeout=15,
            )
        except psycopg.Error as exc:
            raise PlanError(
                "CONNECTION_FAILED", str(exc).splitlines()[0], f"connect to database {name}"
            ) from None

    def tool_env(self) -> dict[str, str]:
        return tool_environment(self.env, self.password)


@dataclass(frozen=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class RestorePlan:
    """One DATABASE or TABLE restore of ``source_database`` into ``target_database``."""

    kind: str
    source_database: str
    target_database: str
    job_id: UUID
    tables: tuple[TableRef, ...] = ()
    views: tuple[TableRef, ...] = ()
    """TABLE: views named in the objects (restored when what they read is restored too)."""
    sequences: tuple[TableRef, ...] = ()
    """TABLE: sequences named in the objects (created with their values)."""
    into_existing: bool = False
    skip_missing_foreign_keys: bool = False
    skip_missing_sequences: bool = False
    skip_missing_views: bool = False

    @property
    def temporary_database(self) -> str:
        return temporary_database_names(self.job_id)[0]

    @property
    def scratch_database(self) -> str:
        return temporary_database_names(self.job_id)[1]


@dataclass(frozen=True)
class RestoreOutcome:
    """What a restore wrote, and what of the backup it left out (each with the reason)."""

    restored: list[str]
    left_out: list[str] = field(default_factory=list)


def temporary_database_names(job_id: UUID) -> tuple[str, str]:
    """(temporary target, scratch) database names of a job: derived from its id, so the lease
    reaper can drop them without asking the dead worker."""
    return f"{TEMP_PREFIX}{job_id.hex}", f"{TEMP_PREFIX}{job_id.hex}_scratch"


def missing_objects(head: Manifest, database: str, tables: Sequence[TableRef] = ()) -> list[str]:
    """Names of the requested objects that the backup does not hold (empty: all there)."""
    if not any(db.name == database for db in head.databases):
        return [f"database {database}"]
    return [
        f"table {database}.{t}" for t in tables if head.table(database, t.schema, t.name) is None
    ]


def plan_bytes(chain: Sequence[Manifest], plan: RestorePlan) -> int:
    """Bytes the restore will read: every table's stream along its history (an estimate of
    what it writes; progress is reported against it)."""
    head = chain[-1]
    names = cluster_databases(head) if plan.kind == "CLUSTER" else [plan.source_database]
    wanted = set(plan.tables)
    total = 0
    for name in names:
        for t in head.database(name).tables:
            if plan.kind == "TABLE" and TableRef(t.schema_name, t.name) not in wanted:
                continue
            history = table_history(chain, name, t.schema_name, t.name)
            total += sum(entry.data_size for _, entry in history)
    return total


def cluster_databases(head: Manifest) -> list[str]:
    """The databases a CLUSTER restore of ``head`` restores: every database the backup holds
    (``postgres`` and ``template1`` included, as pg_dumpall keeps them)."""
    return [db.name for db in head.databases]


# ------------------------------------------------------------------------------ destination


def _database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def check_destination(access: ClusterAccess, plan: RestorePlan) -> None:
    """Refuse before any data moves: a database that already exists, a missing ``into_db``,
    a table that already exists there. A CLUSTER restore replaces what exists."""
    if plan.kind == "CLUSTER":
        return
    with access.connect() as conn:
        exists = _database_exists(conn, plan.target_database)
    if not plan.into_existing:
        if exists:
            raise PlanError(
                "NAME_CLASH",
                f"database {plan.target_database} already exists on the destination; "
                "choose another with new_db_name",
                "check destination",
            )
        return
    if not exists:
        raise PlanError(
            "DATABASE_MISSING",
            f"database {plan.target_database} (into_db) does not exist on the destination",
            "check destination",
        )
    with access.connect(plan.target_database) as conn:
        present = [
            str(t)
            for t in (*plan.tables, *plan.views, *plan.sequences)
            if conn.execute(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (t.schema, t.name),
            ).fetchone()
            is not None
        ]
    if present:
        raise PlanError(
            "TABLE_EXISTS",
            f"{', '.join(present)} already exist(s) in database {plan.target_database}",
            "check destination",
        )


@dataclass(frozen=True)
class DropReport:
    """What :func:`drop_temporary_databases` did: the databases it dropped (checked: the
    catalog no longer lists them) and those left, each with the reason."""

    dropped: list[str]
    left: list[tuple[str, str]]

    def describe(self) -> list[str]:
        """One line per database left (none when everything was dropped)."""
        return [f"{NOT_DROPPED}temporary database {name} ({why})" for name, why in self.left]


def temporary_databases(access: ClusterAccess, job_id: UUID) -> list[str]:
    """The databases named after the job that exist on the destination now."""
    prefix = f"{TEMP_PREFIX}{job_id.hex}"
    with access.connect() as conn:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
                (prefix,),
            ).fetchall()
        ]


def drop_temporary_databases(access: ClusterAccess, job_id: UUID) -> DropReport:
    """Drop every database named after the job (temporary targets, the scratch database, the
    replaced databases a CLUSTER restore keeps until its swap committed, its swap database),
    whatever they hold, each on its own: one that cannot be dropped never keeps the others.
    A database is reported dropped only once the catalog no longer lists it."""
    names = temporary_databases(access, job_id)
    failed: dict[str, str] = {}
    for name in names:
        try:
            drop_database(access, name)
        except (PlanError, psycopg.Error) as exc:
            failed[name] = exc.message if isinstance(exc, PlanError) else _first_line(exc)
    remaining = temporary_databases(access, job_id)
    return DropReport(
        dropped=[n for n in names if n not in remaining],
        left=[(n, failed.get(n, "still there after DROP DATABASE")) for n in remaining],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def drop_database(access: ClusterAccess, name: str) -> None:
    """Drop ``name`` whatever it holds. ``DROP DATABASE ... WITH (FORCE)`` ends its sessions
    but refuses a database that holds a logical replication subscription, a template, and one
    with an active logical replication slot:

    - its subscriptions are disabled, detached from their slot (``slot_name = NONE``) and
      dropped: a restored database's subscription is a copy naming the source's slot on the
      publisher, which the source (or the restored database replacing it) still uses, so the
      drop must never reach the publisher;
    - a template stops being one, and a database closed to connections is opened, so its
      subscriptions can be reached;
    - the sessions streaming from its logical slots are ended (the slots go with it)."""
    with access.connect() as conn:
        row = conn.execute(
            "SELECT datallowconn, datistemplate FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is None:
            return
        target = quote_ident(name)
        if row[1]:
            conn.execute(f"ALTER DATABASE {target} IS_TEMPLATE false")
        if not row[0]:
            conn.execute(f"ALTER DATABASE {target} ALLOW_CONNECTIONS true")
    with access.connect(name) as conn:
        subscriptions = [
            str(r[0])
            for r in conn.execute(
                "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                " WHERE d.datname = current_database()"
            ).fetchall()
        ]
        for subscription in subscriptions:
            sub = quote_ident(subscription)
            conn.execute(f"ALTER SUBSCRIPTION {sub} DISABLE")
            conn.execute(f"ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")
            conn.execute(f"DROP SUBSCRIPTION {sub}")
    with access.connect() as conn:
        for _attempt in range(3):  # a walsender reconnecting between the two: again
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            try:
                conn.execute(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
                return
            except psycopg.errors.ObjectInUse:
                if _attempt == 2:
                    raise


def create_database_sql(
    name: str, db: DatabaseBackup, server_version_num: int, tablespaces: Collection[str]
) -> tuple[str, list[str]]:
    """``CREATE DATABASE name`` for a copy of the backup's database ``db`` on a destination of
    ``server_version_num`` with ``tablespaces``, and what it says of the copy (one line each).

    The copy gets what ``pg_dump --create`` keeps: the encoding, ``LC_COLLATE``, ``LC_CTYPE``,
    the locale provider (``libc`` for a backup that recorded none: version 3 and older), the
    ICU or builtin locale, the ICU rules, the tablespace. A property the destination cannot
    hold is refused (``UNSUPPORTED``: ICU before PostgreSQL 15, ICU rules before 16, the builtin
    provider before 17), never left out; a tablespace the destination lacks is said (the copy
    is created in the default one). The collation version is not given: the destination
    computes its own, as after ``pg_dump`` (:func:`_collation_version_note` says when they
    differ)."""
    locale = db.locale or DatabaseLocale(provider="libc")
    parts = [
        f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0",
        f"ENCODING {_literal(db.encoding)}",
        f"LC_COLLATE {_literal(db.collate)}",
        f"LC_CTYPE {_literal(db.ctype)}",
    ]
    major = server_version_num // 10000

    def refuse(what: str, since: int) -> PlanError:
        return PlanError(
            "UNSUPPORTED",
            f"database {db.name} uses {what}, which PostgreSQL {major} cannot hold (it needs"
            f" {since} or later): restore it into a cluster of PostgreSQL {since} or later",
            "create database",
        )

    if server_version_num >= 150000:
        parts.append(f"LOCALE_PROVIDER {_literal(locale.provider)}")
    if locale.provider == "icu":
        if server_version_num < 150000:
            raise refuse(f"the ICU locale provider (locale {locale.locale!r})", 15)
        parts.append(f"ICU_LOCALE {_literal(locale.locale or '')}")
    elif locale.provider == "builtin":
        if server_version_num < 170000:
            raise refuse(f"the builtin locale provider (locale {locale.locale!r})", 17)
        parts.append(f"BUILTIN_LOCALE {_literal(locale.locale or '')}")
    if locale.icu_rules is not None:
        if server_version_num < 160000:
            raise refuse(f"ICU rules ({locale.icu_rules!r})", 16)
        parts.append(f"ICU_RULES {_literal(locale.icu_rules)}")
    notes = []
    tablespace = db.properties.tablespace if db.properties is not None else None
    if tablespace is not None and tablespace != "pg_default":
        if tablespace in tablespaces:
            parts.append(f"TABLESPACE {quote_ident(tablespace)}")
        else:
            notes.append(
                f"database {db.name}: created in the default tablespace (tablespace"
                f" {tablespace} does not exist on the destination)"
            )
    return " ".join(parts), notes


def _collation_version_note(
    conn: psycopg.Connection[Any], name: str, db: DatabaseBackup
) -> list[str]:
    """The copy's collation version against the backup's: an index on text built under
    another version may order differently (``REINDEX`` it, then ``ALTER DATABASE ... REFRESH
    COLLATION VERSION``)."""
    recorded = db.locale.collation_version if db.locale is not None else None
    if recorded is None or conn.info.server_version < 150000:
        return []
    row = conn.execute(
        "SELECT datcollversion FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    here = None if row is None or row[0] is None else str(row[0])
    if here == recorded:
        return []
    return [
        f"database {db.name}: collation version {recorded} in the backup, {here} on the"
        " destination (indexes on text may need REINDEX)"
    ]


def _create_database(access: ClusterAccess, name: str, like: Manifest, source_db: str) -> list[str]:
    """Create ``name`` as a copy of the backup's database ``source_db`` would be
    (:func:`create_database_sql`); returns what is to be said of it."""
    db = like.database(source_db)
    with access.connect() as conn:
        tablespaces = {str(r[0]) for r in conn.execute("SELECT spcname FROM pg_tablespace")}
        sql, notes = create_database_sql(name, db, conn.info.server_version, tablespaces)
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            code = "UNSUPPORTED" if exc.sqlstate == "0A000" else "RESTORE_FAILED"
            raise PlanError(
                code, f"database {source_db}: {_first_line(exc)}", "create database"
            ) from None
        return notes + _collation_version_note(conn, name, db)


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);$', re.M)


def backup_roles(script: str) -> list[str]:
    """The roles a backup's globals script creates (``pg_dumpall --globals-only``)."""
    names = []
    for match in _CREATE_ROLE.finditer(_sql_only(script)):
        name = match.group(1)
        names.append(name[1:-1].replace('""', '"') if name.startswith('"') else name)
    return names


def _existing_roles(access: ClusterAccess) -> set[str]:
    with access.connect() as conn:
        return {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}


def _keeps_owners(store: Any, head: Manifest, access: ClusterAccess) -> bool:
    """Owners and privileges are restored as the backup has them when every role of the backup
    exists on the destination (always so after a CLUSTER restore created them, usually so into
    the cluster itself); otherwise the restored objects belong to the role the restore connects
    as and carry no grants, and the job says so."""
    script = b"".join(iter_stream(store, head, head.globals_dump)).decode()
    return set(backup_roles(script)) <= _existing_roles(access)


def _create_missing_roles(access: ClusterAccess, script: str) -> list[str]:
    """Create (bare) the backup's roles the destination lacks, so restored objects keep their
    owners and grants; returns them, for the failure path to drop. Their attributes and
    memberships are applied by the swap's transaction."""
    created = []
    existing = _existing_roles(access)
    with access.connect() as conn:
        for name in backup_roles(script):
            if name not in existing:
                conn.execute(f"CREATE ROLE {quote_ident(name)}")
                created.append(name)
    return created


def _drop_roles_quietly(access: ClusterAccess, roles: Sequence[str]) -> None:
    for name in roles:
        with contextlib.suppress(Exception), access.connect() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")


def _rename_database(access: ClusterAccess, old: str, new: str) -> None:
    with access.connect() as conn:
        try:
            conn.execute(f"ALTER DATABASE {quote_ident(old)} RENAME TO {quote_ident(new)}")
        except psycopg.errors.DuplicateDatabase:
            raise PlanError(
                "NAME_CLASH",
                f"database {new} was created on the destination while the restore ran",
                "rename into place",
            ) from None


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ------------------------------------------------------------------------------ execution


class _Progress:
    def __init__(
        self,
        report: Callable[[int], None],
        cancel: threading.Event | None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.report = report
        self.cancel = cancel
        self.before_commit = before_commit

    def __call__(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise PlanError("CANCELLED", "the restore service is stopping", "copy rows")
        self.report(n)

    def commit_point(self) -> None:
        """Right before the step that makes the restore visible on the destination (a rename,
        the CLUSTER swap, the TABLE restore's commit): a cancelled job, or one whose worker no
        longer holds its lease (``before_commit`` raises), goes no further."""
        if self.cancel is not None and self.cancel.is_set():
            raise PlanError("CANCELLED", "the restore was cancelled", "commit")
        if self.before_commit is not None:
            self.before_commit()


def execute_plan(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: Callable[[int], None],
    cancel: threading.Event | None = None,
    before_commit: Callable[[], None] | None = None,
) -> RestoreOutcome:
    """Run the restore; returns what the destination now holds from the backup and what of
    the backup it left out. On failure raises :class:`PlanError` after dropping the temporary
    databases. ``before_commit`` runs right before each step that makes the restore visible
    (the restore service checks there that its worker still holds the job's lease: fencing)."""
    tick = _Progress(progress, cancel, before_commit)
    try:
        access = access.with_client_tools()
        check_destination(access, plan)
        if plan.kind == "CLUSTER":
            return RestoreOutcome(_restore_cluster(store, chain, plan, access, tick))
        if plan.kind == "DATABASE":
            keep = _keeps_owners(store, chain[-1], access)
            notes = _create_database(
                access, plan.temporary_database, chain[-1], plan.source_database
            )
            report = restore_database(
                store,
                chain,
                plan.source_database,
                access.database(plan.temporary_database),
                password=access.password,
                env=access.env,
                bindir=access.bindir,
                progress=tick,
                jobs=RESTORE_JOBS,
                no_owner=not keep,
                no_privileges=not keep,
            )
            tick.commit_point()
            _rename_database(access, plan.temporary_database, plan.target_database)
            if chain[-1].database(plan.source_database).is_template:
                with access.connect() as conn:
                    target = quote_ident(plan.target_database)
                    conn.execute(f"ALTER DATABASE {target} IS_TEMPLATE true")
            return RestoreOutcome(
                [f"database {plan.target_database}"],
                [
                    *([] if keep else [NOT_KEPT]),
                    *notes,
                    *(f"not restored: {what}" for what in report.skipped),
                ],
            )
        notes = []
        if not plan.into_existing:
            notes = _create_database(
                access, plan.temporary_database, chain[-1], plan.source_database
            )
        outcome = _restore_tables(store, chain, plan, access, tick)
        if not plan.into_existing:
            tick.commit_point()
            _rename_database(access, plan.temporary_database, plan.target_database)
        return RestoreOutcome(outcome.restored, [*outcome.left_out, *notes])
    except RestoreError as exc:
        _cleanup_quietly(access, plan)
        raise PlanError.from_restore_error(exc) from None
    except BaseException:
        _cleanup_quietly(access, plan)
        raise
    finally:
        _drop_scratch_quietly(access, plan)


def _cleanup_quietly(access: ClusterAccess, plan: RestorePlan) -> None:
    """After a failure: the job's databases dropped (what cannot be is left to the restore
    service's own cleanup step, which checks and says what is left)."""
    with contextlib.suppress(Exception):
        drop_temporary_databases(access, plan.job_id)


def _drop_scratch_quietly(access: ClusterAccess, plan: RestorePlan) -> None:
    """The TABLE restore's scratch database (it holds the source's whole schema, its
    subscriptions included); what cannot be dropped is left to the cleanup step."""
    with contextlib.suppress(Exception):
        drop_database(access, plan.scratch_database)


@dataclass(frozen=True)
class TableObjects:
    """The objects a TABLE restore names, by kind in the backup's schema archive."""

    tables: tuple[TableRef, ...]
    """Named tables (partitioned ones included) and the partitions of partitioned ones."""
    views: tuple[TableRef, ...]
    sequences: tuple[TableRef, ...]
    missing: tuple[TableRef, ...]


def table_restore_objects(
    store: Any, head: Manifest, database: str, named: Sequence[TableRef], access: ClusterAccess
) -> TableObjects:
    """Sort the objects a TABLE restore names into tables, views and sequences (read from
    the schema archive's table of contents); a partitioned table brings its partitions, at
    every level."""
    db = head.database(database)
    blocks = cast(Generator[bytes, None, None], iter_stream(store, head, db.schema_archive))
    try:
        entries = read_toc_from(blocks)
    except ArchiveError as exc:
        raise PlanError("RESTORE_FAILED", str(exc), "read the schema archive") from None
    finally:
        blocks.close()  # the data after the TOC is never fetched
    kinds = {(e.namespace, e.tag): e for e in entries if e.desc in RELATIONS}
    parts: dict[int, list[TableRef]] = {}
    for e in entries:
        if e.desc == "TABLE ATTACH":
            for parent in e.dependencies:
                rel = next((r for r in kinds.values() if r.dump_id == parent), None)
                if rel is not None and (rel.namespace, rel.tag) != (e.namespace, e.tag):
                    parts.setdefault(parent, []).append(TableRef(e.namespace, e.tag))

    def tree(ref: TableRef) -> list[TableRef]:
        out = [ref]
        for child in parts.get(kinds[(ref.schema, ref.name)].dump_id, []):
            out += tree(child)
        return out

    tables: list[TableRef] = []
    views: list[TableRef] = []
    sequences: list[TableRef] = []
    missing: list[TableRef] = []
    for ref in named:
        entry = kinds.get((ref.schema, ref.name))
        if entry is None:
            missing.append(ref)
        elif entry.desc == "TABLE":
            tables += [t for t in tree(ref) if t not in tables]
        elif entry.desc == "VIEW":
            views.append(ref)
        elif entry.desc == "SEQUENCE":
            sequences.append(ref)
        else:
            missing.append(ref)  # materialized and foreign tables: restored with their database
    return TableObjects(tuple(tables), tuple(views), tuple(sequences), tuple(missing))


def _read_toc(archive: Path) -> list[TocEntry]:
    try:
        return read_toc(archive)
    except ArchiveError as exc:
        raise PlanError("RESTORE_FAILED", str(exc), "read the schema archive") from None


_PSQL_GUARD = re.compile(r"^\\(un)?restrict [A-Za-z0-9]+$", re.MULTILINE)


def _sql_only(script: str) -> str:
    """The script without the ``\\restrict``/``\\unrestrict`` psql guards recent ``pg_dump``
    versions write (its only meta-commands for one database): what the server executes."""
    return _PSQL_GUARD.sub("", script)


def _run_tool(args: list[str], access: ClusterAccess, step: str) -> bytes:
    proc = subprocess.run(args, capture_output=True, env=access.tool_env(), check=False)
    if proc.returncode != 0:
        text = proc.stderr.decode("utf-8", "replace").strip()
        raise PlanError("RESTORE_FAILED", text.splitlines()[0] if text else f"{step} failed", step)
    return proc.stdout


def _restore_tables(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: _Progress,
) -> RestoreOutcome:
    """The source schema restored into the scratch database (to compare definitions and
    read defaults), what to write chosen from the schema archive (:mod:`.table_restore`),
    then DDL, rows, sequence values, post-data, attachments and grants in **one transaction**
    of the target database."""
    head = chain[-1]
    db = head.database(plan.source_database)
    database = plan.target_database if plan.into_existing else plan.temporary_database
    _create_database(access, plan.scratch_database, head, plan.source_database)
    with tempfile.TemporaryDirectory(prefix="mb-restore-") as tmp:
        archive = fetch_to_file(store, head, db.schema_archive, Path(tmp) / "schema.dump")
        _run_tool(
            [
                find_pg_tool("pg_restore", access.bindir),
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                "--schema-only",
                "-d",
                access.database(plan.scratch_database),
                str(archive),
            ],
            access,
            "pg_restore the source schema into a scratch database",
        )
        entries = _read_toc(archive)
    request = TableRestoreRequest(
        tables=[(t.schema, t.name) for t in plan.tables],
        views=[(v.schema, v.name) for v in plan.views],
        sequences=[(q.schema, q.name) for q in plan.sequences],
        skip_missing_foreign_keys=plan.skip_missing_foreign_keys,
        skip_missing_sequences=plan.skip_missing_sequences,
        skip_missing_views=plan.skip_missing_views,
    )
    values = {(s.schema_name, s.name): s for s in db.sequences}
    conn = access.connect(database, autocommit=False)
    try:
        with access.connect(plan.scratch_database, autocommit=False) as scratch:
            try:
                work = plan_table_restore(entries, request, conn, scratch, plan.target_database)
            except TableRestoreRefused as refused:
                raise PlanError(refused.code, refused.message, "check dependencies") from None
        step = f"restore tables into {plan.target_database}"
        try:
            for sql in (*work.settings, *work.pre_data):
                conn.execute(sql)
            for schema, name in work.tables:
                if head.table(plan.source_database, schema, name) is not None:
                    restore_table(
                        store, chain, plan.source_database, schema, name, "",
                        conn=conn, progress=progress,
                    )  # fmt: skip
            for key in work.sequences:
                value = values.get(key)
                if value is not None and value.last_value is not None:
                    conn.execute(
                        "SELECT pg_catalog.setval(%s::regclass, %s, %s)",
                        (
                            f"{quote_ident(key[0])}.{quote_ident(key[1])}",
                            value.last_value,
                            True if value.is_called is None else value.is_called,
                        ),
                    )
            for sql in (*work.post_data, *work.attach, *work.acl):
                conn.execute(sql)
            if plan.into_existing:  # the commit makes the tables visible
                progress.commit_point()
            conn.commit()
        except psycopg.Error as exc:
            raise PlanError("RESTORE_FAILED", str(exc).splitlines()[0], step) from None
    finally:
        conn.close()
    restored = [_in_database(plan.target_database, item) for item in work.restored]
    return RestoreOutcome(restored, work.left_out)


def _in_database(database: str, label: str) -> str:
    """``table public.t`` → ``table db.public.t`` (how results name restored objects)."""
    kind, _, rest = label.partition(" ")
    for multi in ("materialized view", "foreign table"):
        if label.startswith(multi + " "):
            kind, rest = multi, label[len(multi) + 1 :]
    return f"{kind} {database}.{rest}"


# ------------------------------------------------------------------------------ CLUSTER


def _restore_cluster(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: _Progress,
) -> list[str]:
    """Every database of the backup into a temporary database, then one transaction renames
    the destination's user databases away and the restored ones into place, and creates or
    alters the backup's roles; the replaced databases are dropped after the commit. Before the
    commit every existing database is untouched (sessions connected to them are ended just
    before the swap, which needs them gone). The backup's roles missing on the destination are
    created first (bare), so restored objects keep their owners and grants; a failure drops
    them again (a killed worker leaves them: they own nothing once its databases are dropped)."""
    head = chain[-1]
    roles = b"".join(iter_stream(store, head, head.globals_dump)).decode()
    created = _create_missing_roles(access, roles)
    swap = f"{TEMP_PREFIX}{plan.job_id.hex}_swap"
    try:
        temps, notes = _restore_cluster_databases(store, chain, plan, access, progress)
        templates = {db.name for db in head.databases if db.is_template and db.name in temps}
        # The swap renames databases the restore could otherwise be connected to (``postgres``
        # included): it runs from a database of its own, dropped afterwards.
        with access.connect() as conn:
            conn.execute(f"CREATE DATABASE {quote_ident(swap)} TEMPLATE template0")
        progress.commit_point()
        replaced = _swap_cluster(access, plan, swap, temps, templates, roles)
    except BaseException:
        _cleanup_quietly(access, plan)  # the databases first: they hold the roles' objects
        _drop_roles_quietly(access, created)  # roles it created, not committed by a swap
        raise
    # The swap committed: the restore succeeded. Then, in a step of its own, the replaced
    # databases and the swap database are dropped, whatever they hold; what could not be
    # dropped is said (and the restore service's cleanup step tries again).
    del replaced
    left = drop_temporary_databases(access, plan.job_id).describe()
    return [f"database {name}" for name in temps] + ["roles", *notes, *left]


def _restore_cluster_databases(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: Callable[[int], None],
) -> tuple[dict[str, str], list[str]]:
    """Every database of the backup into a temporary database, owners and grants kept (every
    role of the backup exists by now); returns backup name → temporary name, and what is to
    be said of the copies (:func:`create_database_sql`)."""
    temps: dict[str, str] = {}
    notes: list[str] = []
    for i, name in enumerate(cluster_databases(chain[-1])):
        temp = f"{TEMP_PREFIX}{plan.job_id.hex}_{i}"
        notes += _create_database(access, temp, chain[-1], name)
        report = restore_database(
            store,
            chain,
            name,
            access.database(temp),
            password=access.password,
            env=access.env,
            bindir=access.bindir,
            progress=progress,
            jobs=RESTORE_JOBS,
            no_owner=False,
            no_privileges=False,
        )
        notes += [f"not restored: database {name}: {what}" for what in report.skipped]
        temps[name] = temp
    return temps, notes


def _swap_cluster(
    access: ClusterAccess,
    plan: RestorePlan,
    swap: str,
    temps: Mapping[str, str],
    templates: set[str],
    roles: str,
) -> list[str]:
    """Replace every user database (``postgres`` included), and every template database the
    backup holds one of (a
    template the backup does not hold, such as ``template1`` in a version 1 backup, stays), by
    the restored copies; ``templates`` are marked templates again, as in the backup."""
    last: psycopg.Error | None = None
    for _ in range(5):  # a session reconnecting between the terminate and the rename: retry
        conn = access.connect(swap, autocommit=False)
        try:
            existing = [
                str(r[0])
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE (NOT datistemplate OR datname = ANY(%s)) "
                    "AND NOT starts_with(datname, %s) ORDER BY 1",
                    (list(temps), TEMP_PREFIX),
                ).fetchall()
            ]
            _apply_roles(conn, roles)
            replaced = []
            for j, name in enumerate(existing):
                old = f"{TEMP_PREFIX}{plan.job_id.hex}_old_{j}"
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                # A template cannot be dropped: the replaced one stops being one first.
                conn.execute(f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE false")
                conn.execute(f"ALTER DATABASE {quote_ident(name)} RENAME TO {quote_ident(old)}")
                replaced.append(old)
            for name, temp in temps.items():
                conn.execute(f"ALTER DATABASE {quote_ident(temp)} RENAME TO {quote_ident(name)}")
                if name in templates:
                    conn.execute(f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE true")
            conn.commit()
            return replaced
        except psycopg.errors.ObjectInUse as exc:
            conn.rollback()
            last = exc
        except psycopg.Error as exc:
            conn.rollback()
            raise PlanError(
                "RESTORE_FAILED", str(exc).splitlines()[0], "swap the restored databases in"
            ) from None
        finally:
            conn.close()
    raise PlanError(
        "RESTORE_FAILED",
        f"sessions kept reconnecting to the databases being replaced: {last}",
        "swap the restored databases in",
    )


def _apply_roles(conn: psycopg.Connection[Any], script: str) -> None:
    """Create the backup's roles that do not exist and give every role the backup's attributes
    and memberships. The role the restore connects as keeps its own attributes (its password
    must keep working); tablespaces are not created (their paths belong to the old host)."""
    current = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    mine = (f"ALTER ROLE {current} ", f"ALTER ROLE {quote_ident(current)} ")
    for statement in _sql_only(script).split(";\n"):
        lines = [ln for ln in statement.splitlines() if ln.strip() and not ln.startswith("--")]
        sql = "\n".join(lines).strip()
        if not sql or sql.startswith(("SET ", "CREATE TABLESPACE", "ALTER TABLESPACE")):
            continue
        if sql.startswith(mine):
            continue
        conn.execute("SAVEPOINT mb_role")
        try:
            conn.execute(sql)
        except psycopg.errors.DuplicateObject:
            conn.execute("ROLLBACK TO SAVEPOINT mb_role")
        conn.execute("RELEASE SAVEPOINT mb_role")
