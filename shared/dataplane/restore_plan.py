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
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .engine import RestoreError
from .manifest import DatabaseBackup, DatabaseLocale, Manifest
from .restore_rows import (
    fetch_to_file,
    iter_stream,
    restore_database,
    restore_table,
    table_history,
)
from .sql import connect, quote_ident
from .tools import find_pg_tool

__all__ = [
    "NOT_DROPPED",
    "ClusterAccess",
    "DropReport",
    "PlanError",
    "RestorePlan",
    "TableRef",
    "create_database_sql",
    "drop_database",
    "drop_temporary_databases",
    "execute_plan",
    "missing_objects",
    "plan_bytes",
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
    password: str | None = field(default=None, repr=False)

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
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env.update(self.env)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


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
            for t in (*plan.tables, *plan.views)
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
    def __init__(self, report: Callable[[int], None], cancel: threading.Event | None) -> None:
        self.report = report
        self.cancel = cancel

    def __call__(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise PlanError("CANCELLED", "the restore service is stopping", "copy rows")
        self.report(n)


def execute_plan(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: Callable[[int], None],
    cancel: threading.Event | None = None,
) -> list[str]:
    """Run the restore; returns what the destination now holds from the backup. On failure
    raises :class:`PlanError` after dropping the temporary databases."""
    tick = _Progress(progress, cancel)
    try:
        check_destination(access, plan)
        if plan.kind == "CLUSTER":
            return _restore_cluster(store, chain, plan, access, tick)
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
            _rename_database(access, plan.temporary_database, plan.target_database)
            if chain[-1].database(plan.source_database).is_template:
                with access.connect() as conn:
                    target = quote_ident(plan.target_database)
                    conn.execute(f"ALTER DATABASE {target} IS_TEMPLATE true")
            return [
                f"database {plan.target_database}",
                *([] if keep else [NOT_KEPT]),
                *notes,
                *(f"not restored: {what}" for what in report.skipped),
            ]
        script = _table_scripts(store, chain, plan, access)
        if plan.into_existing:
            _apply_tables(store, chain, plan, access, plan.target_database, script, tick)
        else:
            _create_database(access, plan.temporary_database, chain[-1], plan.source_database)
            _apply_tables(store, chain, plan, access, plan.temporary_database, script, tick)
            _rename_database(access, plan.temporary_database, plan.target_database)
        return [f"table {plan.target_database}.{t}" for t in plan.tables] + [
            f"view {plan.target_database}.{v}" for v in script.views
        ]
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


def _resolve_views(
    conn: psycopg.Connection[Any], table_oids: list[int], plan: RestorePlan
) -> list[TableRef]:
    """The named views whose every relation is restored too. A view reading a relation left
    out is refused by name, or skipped (and the views reading it in turn) under
    ``skip_missing_views``."""
    kept = dict(zip(plan.views, _table_oids(conn, plan.views), strict=True))
    changed = True
    while changed:
        changed = False
        restored = set(table_oids) | set(kept.values())
        for view, oid in list(kept.items()):
            missing = [
                f"{schema}.{name}"
                for schema, name, ref in conn.execute(
                    "SELECT DISTINCT rn.nspname, r.relname, r.oid FROM pg_rewrite w "
                    "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid "
                    "AND d.refclassid = 'pg_class'::regclass "
                    "JOIN pg_class r ON r.oid = d.refobjid "
                    "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
                    "WHERE w.ev_class = %s AND d.refobjid <> w.ev_class ORDER BY 1, 2",
                    (oid,),
                ).fetchall()
                if ref not in restored
            ]
            if not missing:
                continue
            if not plan.skip_missing_views:
                raise PlanError(
                    "MISSING_DEPENDENCY",
                    f"view {view} reads relations not restored: {', '.join(missing)} "
                    "(restore them too, or set skip_missing_views)",
                    "check dependencies",
                )
            del kept[view]
            changed = True
    return list(kept)


def schema_views(
    store: Any, head: Manifest, database: str, candidates: Sequence[TableRef], access: ClusterAccess
) -> set[TableRef]:
    """Which of ``candidates`` are views in the backup's schema of ``database`` (read from the
    schema archive's table of contents)."""
    if not candidates:
        return set()
    db = head.database(database)
    with tempfile.TemporaryDirectory(prefix="mb-restore-") as tmp:
        archive = fetch_to_file(store, head, db.schema_archive, Path(tmp) / "schema.dump")
        listing = _run_tool(
            [find_pg_tool("pg_restore", access.bindir), "-l", str(archive)],
            access,
            "pg_restore -l",
        ).decode()
    found = set()
    for line in listing.splitlines():
        if line.startswith(";") or " VIEW " not in line or " MATERIALIZED VIEW " in line:
            continue
        rest = line.split(" VIEW ", 1)[1]
        found |= {c for c in candidates if rest.startswith(f"{c.schema} {c.name} ")}
    return found


@dataclass
class _TableScript:
    pre_data: str
    post_data: str
    schemas: list[str]
    sequences: list[TableRef]
    """Sequences owned by the restored tables (their values come from the backup)."""
    views: list[TableRef]
    """The named views that are restored (the others were skipped by skip_missing_views)."""


def _run_tool(args: list[str], access: ClusterAccess, step: str) -> bytes:
    proc = subprocess.run(args, capture_output=True, env=access.tool_env(), check=False)
    if proc.returncode != 0:
        text = proc.stderr.decode("utf-8", "replace").strip()
        raise PlanError("RESTORE_FAILED", text.splitlines()[0] if text else f"{step} failed", step)
    return proc.stdout


def _table_scripts(
    store: Any, chain: Sequence[Manifest], plan: RestorePlan, access: ClusterAccess
) -> _TableScript:
    """Restore the source schema into the scratch database, resolve dependencies there, and
    render the chosen tables' DDL with ``pg_dump -t``."""
    head = chain[-1]
    db = head.database(plan.source_database)
    _create_database(access, plan.scratch_database, head, plan.source_database)
    scratch = access.database(plan.scratch_database)
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
                scratch,
                str(archive),
            ],
            access,
            "pg_restore the source schema into a scratch database",
        )
    with access.connect(plan.scratch_database) as conn:
        oids = _table_oids(conn, plan.tables)
        _resolve_dependencies(conn, oids, plan)
        views = _resolve_views(conn, oids, plan)
        if not plan.tables and not views:
            raise PlanError(
                "MISSING_DEPENDENCY",
                "every view named was skipped (skip_missing_views): nothing left to restore",
                "check dependencies",
            )
        sequences = [
            TableRef(s, n)
            for s, n in conn.execute(
                "SELECT DISTINCT sn.nspname, s.relname FROM pg_depend d "
                "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
                "JOIN pg_namespace sn ON sn.oid = s.relnamespace "
                "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
                "AND d.deptype IN ('a', 'i') AND d.refobjid = ANY(%s)",
                (oids,),
            ).fetchall()
        ]
    patterns: list[str] = []
    for t in (*plan.tables, *views):
        patterns += ["-t", f"{_pattern(t.schema)}.{_pattern(t.name)}"]
    dump = [
        find_pg_tool("pg_dump", access.bindir),
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--strict-names",
        *patterns,
        "-d",
        scratch,
    ]
    pre = _run_tool([*dump, "--section=pre-data"], access, "pg_dump -t (pre-data)")
    post = _run_tool([*dump, "--section=post-data"], access, "pg_dump -t (post-data)")
    return _TableScript(
        pre_data=_sql_only(pre.decode()),
        post_data=_sql_only(post.decode()),
        schemas=sorted({t.schema for t in (*plan.tables, *views)}),
        sequences=sequences,
        views=views,
    )


_PSQL_GUARD = re.compile(r"^\\(un)?restrict [A-Za-z0-9]+$", re.MULTILINE)


def _sql_only(script: str) -> str:
    """The script without the ``\\restrict``/``\\unrestrict`` psql guards recent ``pg_dump``
    versions write (its only meta-commands for one database): what the server executes."""
    return _PSQL_GUARD.sub("", script)


def _pattern(name: str) -> str:
    """A psql pattern matching exactly ``name`` (inside double quotes nothing is special)."""
    return '"' + name.replace('"', '""') + '"'


def _table_oids(conn: psycopg.Connection[Any], tables: Sequence[TableRef]) -> list[int]:
    oids = []
    for t in tables:
        row = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (t.schema, t.name),
        ).fetchone()
        if row is None:
            raise PlanError("NOT_FOUND", f"table {t} is not in the backup's schema", "plan")
        oids.append(int(row[0]))
    return oids


@dataclass(frozen=True)
class _Dependency:
    """One kind of dependency on objects a TABLE restore leaves out: the query finding them
    among the chosen tables (``%s`` twice: their oids), how to name one, the option that
    removes them, and the statement removing one from the scratch schema."""

    what: str
    option: str
    query: str
    describe: Callable[[tuple[Any, ...]], str]
    remove: Callable[[tuple[Any, ...]], str]


_DEPENDENCIES = (
    _Dependency(
        what="foreign key(s) to tables not restored",
        option="skip_missing_foreign_keys",
        query=(
            "SELECT cn.nspname, c.relname, con.conname, fn.nspname, f.relname "
            "FROM pg_constraint con "
            "JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace cn ON cn.oid = c.relnamespace "
            "JOIN pg_class f ON f.oid = con.confrelid "
            "JOIN pg_namespace fn ON fn.oid = f.relnamespace "
            "WHERE con.contype = 'f' AND con.conrelid = ANY(%s) "
            "AND NOT con.confrelid = ANY(%s) ORDER BY 1, 2, 3"
        ),
        describe=lambda r: f"{r[0]}.{r[1]}.{r[2]} references {r[3]}.{r[4]}",
        remove=lambda r: (
            f"ALTER TABLE {quote_ident(r[0])}.{quote_ident(r[1])} "
            f"DROP CONSTRAINT {quote_ident(r[2])}"
        ),
    ),
    _Dependency(
        what="default(s) using sequences not restored",
        option="skip_missing_sequences",
        query=(
            "SELECT DISTINCT n.nspname, c.relname, a.attname, sn.nspname, s.relname "
            "FROM pg_attrdef ad "
            "JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum "
            "JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
            "AND d.refclassid = 'pg_class'::regclass "
            "JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' "
            "JOIN pg_namespace sn ON sn.oid = s.relnamespace "
            "WHERE ad.adrelid = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_depend o "
            "WHERE o.classid = 'pg_class'::regclass AND o.objid = s.oid "
            "AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i') "
            "AND o.refobjid = ANY(%s)) ORDER BY 1, 2, 3"
        ),
        describe=lambda r: f"{r[0]}.{r[1]}.{r[2]} uses {r[3]}.{r[4]}",
        remove=lambda r: (
            f"ALTER TABLE {quote_ident(r[0])}.{quote_ident(r[1])} "
            f"ALTER COLUMN {quote_ident(r[2])} DROP DEFAULT"
        ),
    ),
)


def _resolve_dependencies(
    conn: psycopg.Connection[Any], oids: list[int], plan: RestorePlan
) -> None:
    """Refuse, naming them, the dependencies on objects left out, unless the plan's option for
    their kind is set: then remove them from the scratch schema before it is rendered."""
    for dependency in _DEPENDENCIES:
        rows = conn.execute(dependency.query, (oids, oids)).fetchall()
        if rows and not getattr(plan, dependency.option):
            names = ", ".join(dependency.describe(r) for r in rows)
            raise PlanError(
                "MISSING_DEPENDENCY",
                f"{dependency.what}: {names} (restore them too, or set {dependency.option})",
                "check dependencies",
            )
        for row in rows:
            conn.execute(dependency.remove(row))


def _apply_tables(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    database: str,
    script: _TableScript,
    progress: Callable[[int], None],
) -> None:
    """DDL, rows and sequence values in one transaction of ``database``."""
    head = chain[-1]
    values = {
        TableRef(s.schema_name, s.name): s.last_value
        for s in head.database(plan.source_database).sequences
    }
    conn = access.connect(database, autocommit=False)
    try:
        try:
            for schema in script.schemas:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            conn.execute(script.pre_data)
            for t in plan.tables:
                restore_table(
                    store,
                    chain,
                    plan.source_database,
                    t.schema,
                    t.name,
                    "",
                    conn=conn,
                    progress=progress,
                )
            for seq in script.sequences:
                value = values.get(seq)
                if value is not None:
                    conn.execute(
                        "SELECT pg_catalog.setval(%s::regclass, %s, true)",
                        (f"{quote_ident(seq.schema)}.{quote_ident(seq.name)}", value),
                    )
            conn.execute(script.post_data)
            conn.commit()
        except psycopg.Error as exc:
            raise PlanError(
                "RESTORE_FAILED", str(exc).splitlines()[0], f"restore tables into {database}"
            ) from None
    finally:
        conn.close()


# ------------------------------------------------------------------------------ CLUSTER


def _restore_cluster(
    store: Any,
    chain: Sequence[Manifest],
    plan: RestorePlan,
    access: ClusterAccess,
    progress: Callable[[int], None],
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
