"""The differential harness: back up a scenario, restore every step, compare with the source.

A :class:`Scenario` is data: databases and roles to create, setup SQL, then steps. Step 0 is a
full backup, every later step an incremental on top of the previous one. Each step runs its
``before`` statements, then takes the backup; its ``during`` statements run concurrently, from
their own connections, once the backup's snapshots are taken (the adapter's ``on_snapshots``
hook), and the harness waits until each has finished or is blocked on a lock before letting the
backup read any row.

**As of that backup, honestly.** In the same hook, before any ``during`` statement runs, the
harness imports each database's exported snapshot (``SET TRANSACTION SNAPSHOT``, ``pg_dump
--snapshot``) and records the source's state as the backup's own snapshot sees it: every
table's rows (count and an order-independent digest), sequences (``last_value``, ``is_called``),
materialized views (populated or not, contents), large objects (owner, ACL, contents), database
properties (settings, role-in-database settings, comment, owner, ACL, connection limit) and a
normalised ``pg_dump --schema-only``. Sequences are not transactional: their state is read at
the hook, which is what ``pg_dump`` does too.

Then every step's chain (full .. that incremental) is restored with
:func:`~managed_backups.shared.dataplane.restore_rows.restore_database` (owners and privileges
kept) into a fresh database of the same encoding and locale, and the restored state must equal
the recorded one. The restores go into the source's server, or into another one
(``restore_into``: a newer major, to prove a restore to upgrade; the scenario's roles are
created there too). Every database of the cluster must be either in the manifest or in its list of
skipped databases (nothing left out silently), and each manifest must verify.

Statements name databases and roles by key: ``<<db:app>>`` and ``<<role:alice>>`` become the
scenario's unique names (so scenarios never collide with other tests' objects).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest, SkippedDatabase, TableMode
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.sql import SESSION_SETTINGS
from managed_backups.shared.dataplane.tools import find_pg_tool
from managed_backups.shared.dataplane.verify import verify_backup

from ..conftest import PgServer

# ------------------------------------------------------------------------------ the catalogue's vocabulary


@dataclass(frozen=True)
class Sql:
    """A statement run in database ``db`` (a key of the scenario), or the maintenance database
    (``None``). Autocommit: put ``BEGIN; ...; COMMIT`` in one text for a transaction."""

    db: str | None
    text: str


def on(db: str | None, *statements: str) -> tuple[Sql, ...]:
    return tuple(Sql(db, s) for s in statements)


@dataclass(frozen=True)
class Db:
    encoding: str = "UTF8"
    locale: str = "C"
    create: bool = True
    """Create at setup (``False``: a name only, for databases the statements create)."""


@dataclass(frozen=True)
class Step:
    before: tuple[Sql, ...] = ()
    during: tuple[Sql, ...] = ()
    """Run one after the other, each from its own connection, after the snapshots are taken."""
    whole: tuple[str, ...] = ()
    """``dbkey.schema.table`` entries this (incremental) backup must store WHOLE."""
    delta: tuple[str, ...] = ()
    """``dbkey.schema.table`` entries this (incremental) backup must store as a DELTA."""
    skipped: tuple[str, ...] = ()
    """Database keys the backup must list as skipped (with a reason)."""
    wal: tuple[tuple[str, str], ...] = ()
    """``(database key, text)``: on a server that summarizes its WAL (17 and later,
    ``summarize_wal``), the text this incremental's ``wal_summary`` of that database must hold
    (what the WAL summaries left unread, read by block, or why every table was probed)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    setup: tuple[Sql, ...] = ()
    databases: Mapping[str, Db] = field(default_factory=lambda: {"app": Db()})
    roles: tuple[str, ...] = ()
    fast: bool = False
    """In the default test run (the whole catalogue runs on demand)."""
    adapter: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``PostgresAdapter`` keyword arguments (e.g. ``psql_min_bytes=0``)."""
    needs_test_extension: bool = False
    """Installs ``mb_test_config`` (a table registered with ``pg_extension_config_dump``) into
    the server's extension directory first: the server must run on this machine."""
    known_failure: str = ""
    """Why the data plane fails this scenario today (an expected, strict failure)."""

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------------------ state capture
_IGNORED_DUMP_LINE = re.compile(r"^(--|SET |SELECT pg_catalog\.set_config|\\restrict|\\unrestrict)")


def normalised_schema(dump: str) -> list[str]:
    return [
        line for line in dump.splitlines() if line.strip() and not _IGNORED_DUMP_LINE.match(line)
    ]


def _copy_digest(conn: psycopg.Connection[Any], query: str) -> tuple[int, str]:
    out = bytearray()
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
        for block in copy:
            out += block
    lines = sorted(bytes(out).splitlines())
    md5 = hashlib.md5(usedforsecurity=False)
    for line in lines:
        md5.update(line + b"\n")
    return len(lines), md5.hexdigest()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_USER_NS = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"


def database_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything a restore must bring back, read on ``conn`` (in its current transaction)."""
    state: dict[str, Any] = {}
    for name, value in SESSION_SETTINGS:
        conn.execute(f"SET {name} = '{value}'")
    rels = conn.execute(
        f"SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated FROM pg_class c"
        f" JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS}"
        " AND c.relkind IN ('r', 'm', 'S') ORDER BY 1, 2"
    ).fetchall()
    for schema, name, kind, populated in rels:
        qualified = f"{_q(schema)}.{_q(name)}"
        label = f"{schema}.{name}"
        if kind == "r":
            state[f"table {label}"] = _copy_digest(conn, f"SELECT * FROM ONLY {qualified}")
        elif kind == "m":
            state[f"matview {label}"] = (
                _copy_digest(conn, f"SELECT * FROM {qualified}") if populated else "not populated"
            )
        else:
            row = conn.execute(f"SELECT last_value, is_called FROM {qualified}").fetchone()
            state[f"sequence {label}"] = tuple(row) if row else None
    state["large objects"] = [
        tuple(r)
        for r in conn.execute(
            "SELECT oid::int8, lomowner::regrole::text, lomacl::text, md5(lo_get(oid))"
            " FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
    ]
    row = conn.execute(
        "SELECT datdba::regrole::text, datacl::text, datconnlimit,"
        " shobj_description(oid, 'pg_database')"
        " FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    state["database owner, acl, connection limit, comment"] = tuple(row)
    state["database settings"] = sorted(
        (str(role or ""), tuple(config))
        for role, config in conn.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
            " LEFT JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE s.setdatabase = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        ).fetchall()
    )
    return state


def schema_dump(pg: PgServer, db: str, snapshot: str | None = None) -> list[str]:
    return normalised_schema(schema_dump_text(pg, db, snapshot))


def schema_dump_text(pg: PgServer, db: str, snapshot: str | None = None) -> str:
    """``pg_dump --schema-only`` of ``db`` (in ``snapshot``), by the newest client tools."""
    cmd = [
        find_pg_tool("pg_dump"),
        "--schema-only",
        "-w",
        "--lock-wait-timeout=60000",
        "-d",
        pg.dsn_for(db),
    ]
    if snapshot is not None:
        cmd.append(f"--snapshot={snapshot}")
    proc = subprocess.run(
        cmd, capture_output=True, check=False, env={"PGPASSWORD": pg.password, "PATH": "/usr/bin"}
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode("utf-8", "replace")


def schema_as_rendered_by(target: PgServer, dump: str, spec: Db) -> list[str]:
    """The schema of ``dump`` as ``target``'s server renders it: loaded into a scratch database
    there (``psql``), dumped again. A newer major prints some definitions differently (a
    view's text is the server's own deparse), so a restore into it is compared with this:
    the source's schema carried by the newest ``pg_dump``, the PostgreSQL project's upgrade
    route."""
    scratch = f"df_render_{uuid.uuid4().hex[:8]}"
    with target.connect() as conn:
        conn.execute(
            f"CREATE DATABASE {_q(scratch)} TEMPLATE template0 ENCODING {_q(spec.encoding)}"
            f" LC_COLLATE {_q(spec.locale)} LC_CTYPE {_q(spec.locale)}"
        )
    try:
        proc = subprocess.run(
            [
                find_pg_tool("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                target.dsn_for(scratch),
            ],
            input=dump.encode(),
            capture_output=True,
            check=False,
            env={"PGPASSWORD": target.password, "PATH": "/usr/bin"},
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return schema_dump(target, scratch)
    finally:
        target.drop_database(scratch)


# ------------------------------------------------------------------------------ running
class _During:
    """Runs the ``during`` statements in a thread; :meth:`settle` waits until each is done
    or blocked on a lock (asking ``pg_stat_activity``, no fixed sleeps)."""

    def __init__(self, run: Run, statements: Sequence[Sql]) -> None:
        self.pg = run.pg
        self.run = run
        self.statements = statements
        self.errors: list[BaseException] = []
        self.pids: list[int] = []
        self.done = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for stmt in self.statements:
                with self.pg.connect(self.run.db_name(stmt)) as conn:
                    self.pids.append(conn.info.backend_pid)
                    self.started.set()
                    conn.execute(self.run.resolve(stmt))  # type: ignore[call-overload]
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)
        finally:
            self.started.set()
            self.done.set()

    def start_and_settle(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        with self.pg.connect() as probe:
            while not self.done.is_set():
                self.started.wait(timeout)
                if self.pids:
                    row = probe.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (self.pids[-1],),
                    ).fetchone()
                    if row is not None and row[0] == "Lock":
                        return  # blocked by the backup's locks: it will run after the backup
                if time.monotonic() > deadline:
                    raise AssertionError("concurrent statements neither finished nor blocked")
                time.sleep(0.02)

    def join(self) -> None:
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "concurrent statements never finished"
        if self.errors:
            raise self.errors[0]


@dataclass
class StepResult:
    manifest: Manifest
    expected: dict[str, dict[str, Any]]
    """Database key → state at the backup's snapshot (with ``schema`` its pg_dump lines)."""
    names: dict[str, str]
    """Database key → the name it had at the backup."""


class Run:
    """One scenario against the test cluster."""

    def __init__(
        self,
        pg: PgServer,
        scenario: Scenario,
        store: ObjectStore,
        restore_into: PgServer | None = None,
    ) -> None:
        self.pg = pg
        self.target = restore_into or pg
        """The server the steps are restored into."""
        self.scenario = scenario
        self.store = store
        suffix = uuid.uuid4().hex[:6]
        self.db_names = {key: f"df_{key}_{suffix}" for key in scenario.databases}
        self.role_names = {key: f"df_{key}_{suffix}" for key in scenario.roles}
        self.created_targets: list[str] = []

    def resolve(self, stmt: Sql) -> str:
        """The statement's text with ``<<db:key>>`` / ``<<role:key>>`` replaced."""

        def sub(match: re.Match[str]) -> str:
            kind, key = match.group(1), match.group(2)
            return _q((self.db_names if kind == "db" else self.role_names)[key])

        return re.sub(r"<<(db|role):([^>]+)>>", sub, stmt.text)

    def db_name(self, stmt: Sql) -> str:
        return "postgres" if stmt.db is None else self.db_names[stmt.db]

    def execute(self, statements: Sequence[Sql]) -> None:
        for stmt in statements:
            with self.pg.connect(self.db_name(stmt)) as conn:
                conn.execute(self.resolve(stmt))  # type: ignore[call-overload]

    def existing(self) -> dict[str, str]:
        with self.pg.connect() as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        return {k: v for k, v in self.db_names.items() if v in names}

    def setup(self) -> None:
        if self.target is not self.pg:
            with self.target.connect() as conn:
                for role in self.role_names.values():
                    conn.execute(f"CREATE ROLE {_q(role)}")
        with self.pg.connect() as conn:
            for role in self.role_names.values():
                conn.execute(f"CREATE ROLE {_q(role)}")
            for key, spec in self.scenario.databases.items():
                if spec.create:
                    conn.execute(
                        f"CREATE DATABASE {_q(self.db_names[key])} TEMPLATE template0"
                        f" ENCODING {_q(spec.encoding)} LC_COLLATE {_q(spec.locale)}"
                        f" LC_CTYPE {_q(spec.locale)}"
                    )
        self.execute(self.scenario.setup)

    def teardown(self) -> None:
        if self.target is not self.pg:
            with self.target.connect() as conn:
                for name in self.created_targets:
                    conn.execute(f"DROP DATABASE IF EXISTS {_q(name)} WITH (FORCE)")
                for role in self.role_names.values():
                    conn.execute(f"DROP ROLE IF EXISTS {_q(role)}")
            self.created_targets = []
        with self.pg.connect() as conn:
            for name in [*self.db_names.values(), *self.created_targets]:
                if conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (name,)
                ).fetchone():
                    conn.execute(f"ALTER DATABASE {_q(name)} IS_TEMPLATE false")
                conn.execute(f"DROP DATABASE IF EXISTS {_q(name)} WITH (FORCE)")
            for role in self.role_names.values():
                conn.execute(f"DROP ROLE IF EXISTS {_q(role)}")

    def backup(self, step: Step, previous: Manifest | None, index: int) -> StepResult:
        self.execute(step.before)
        names = self.existing()
        expected: dict[str, dict[str, Any]] = {}
        during = _During(self, step.during)
        started = False

        def on_snapshots(snapshots: Mapping[str, str]) -> None:
            nonlocal started
            for key, name in names.items():
                if name in snapshots:  # a retaken snapshot replaces the first one
                    expected[key] = self._state_in_snapshot(key, name, snapshots[name])
            if not started and step.during:
                started = True
                during.start_and_settle()

        adapter = self.pg.adapter(max_held_snapshots=64, **self.scenario.adapter)
        request = BackupRequest(
            self.store, "differential", f"step-{index}", on_snapshots=on_snapshots
        )
        try:
            manifest = (
                adapter.full_backup(request)
                if previous is None
                else adapter.incremental_backup(request, previous)
            )
        finally:
            if started:
                during.join()
        assert verify_backup(self.store, manifest).ok
        return StepResult(manifest, expected, names)

    def _state_in_snapshot(self, key: str, db: str, snapshot: str) -> dict[str, Any]:
        with psycopg.connect(self.pg.url_for(db)) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            state = database_state(conn)
            conn.rollback()
        dump = schema_dump_text(self.pg, db, snapshot)
        if self.target is self.pg:
            state["schema"] = normalised_schema(dump)
        else:
            state["schema"] = schema_as_rendered_by(self.target, dump, self.scenario.databases[key])
        return state

    def restore_and_compare(self, chain: Sequence[Manifest], result: StepResult) -> list[str]:
        """Differences between each database restored at ``chain[-1]`` and its recorded state."""
        problems: list[str] = []
        head = chain[-1]
        for key, expected in result.expected.items():
            name = result.names[key]
            spec = self.scenario.databases[key]
            if not any(db.name == name for db in head.databases):
                problems.append(f"{key}: database {name} missing from backup {head.backup_id}")
                continue
            target = f"df_restore_{uuid.uuid4().hex[:8]}"
            self.created_targets.append(target)
            with self.target.connect() as conn:
                conn.execute(
                    f"CREATE DATABASE {_q(target)} TEMPLATE template0 ENCODING"
                    f" {_q(spec.encoding)} LC_COLLATE {_q(spec.locale)} LC_CTYPE {_q(spec.locale)}"
                )
            restore_database(
                self.store,
                chain,
                name,
                self.target.dsn_for(target),
                password=self.target.password,
                no_owner=False,
                no_privileges=False,
            )
            with self.target.connect(target) as conn:
                got = database_state(conn)
            got["schema"] = schema_dump(self.target, target)
            for item in sorted(set(expected) | set(got)):
                if expected.get(item) != got.get(item):
                    if item == "schema":
                        diff = sorted(set(expected[item]) ^ set(got.get(item, [])))[:6]
                        problems.append(f"{key} at {head.backup_id}: schema differs: {diff}")
                    else:
                        problems.append(
                            f"{key} at {head.backup_id}: {item}: source {expected.get(item)!r},"
                            f" restored {got.get(item)!r}"
                        )
            self.target.drop_database(target)
            self.created_targets.remove(target)
        return problems

    def summarizes(self) -> bool:
        with self.pg.connect() as conn:
            row = conn.execute("SELECT current_setting('summarize_wal', true)").fetchone()
        return row is not None and row[0] == "on"

    def checksums(self) -> bool:
        with self.pg.connect() as conn:
            row = conn.execute("SHOW data_checksums").fetchone()
        return row is not None and row[0] == "on"

    def check_manifest(self, step: Step, result: StepResult) -> list[str]:
        problems: list[str] = []
        m = result.manifest
        if step.wal and self.summarizes():
            # With data checksums (18's initdb default) the first hint-bit write to a block after
            # a checkpoint is WAL-logged, so a table the previous backup only read may show as
            # written and be probed: only the counts of a server without checksums are exact.
            exact = not self.checksums()
            for key, text in step.wal:
                note = m.database(result.names[key]).wal_summary or ""
                expected = text if exact else "WAL summaries "
                if expected not in note:
                    problems.append(f"{key}: wal_summary {note!r} does not say {expected!r}")
        listed = {db.name for db in m.databases} | {s.name for s in skipped_databases(m)}
        for key, name in result.names.items():
            if name not in listed:
                problems.append(f"{key}: database {name} neither backed up nor listed as skipped")
        for key in step.skipped:
            if result.names[key] not in {s.name for s in skipped_databases(m)}:
                problems.append(f"{key}: not listed as skipped")
        for items, wanted in ((step.whole, TableMode.WHOLE), (step.delta, TableMode.DELTA)):
            for item in items:
                key, schema, table = item.split(".", 2)
                entry = m.table(result.names[key], schema, table)
                if entry is None or entry.mode != wanted:
                    mode = None if entry is None else entry.mode
                    reason = "" if entry is None or not entry.reason else f" ({entry.reason})"
                    problems.append(f"{item}: stored {mode}{reason}, expected {wanted}")
        return problems


def skipped_databases(manifest: Manifest) -> list[SkippedDatabase]:
    return list(manifest.catalog.skipped_databases)


_TEST_EXTENSION_SQL = """
CREATE TABLE mbt_config (id int PRIMARY KEY, v text, user_added bool NOT NULL DEFAULT true);
INSERT INTO mbt_config VALUES (1, 'shipped with the extension', false);
SELECT pg_catalog.pg_extension_config_dump('mbt_config', 'WHERE user_added');
"""


def install_test_extension(pg: PgServer) -> None:
    """Write the ``mb_test_config`` extension into the (local) server's share directory."""
    with pg.connect() as conn:
        row = conn.execute("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'").fetchone()
    assert row is not None
    directory = Path(str(row[0])) / "extension"
    (directory / "mb_test_config.control").write_text(
        "default_version = '1.0'\nrelocatable = false\nschema = public\n"
    )
    (directory / "mb_test_config--1.0.sql").write_text(_TEST_EXTENSION_SQL)


def run_scenario(
    pg: PgServer, scenario: Scenario, tmp_path: Path, restore_into: PgServer | None = None
) -> None:
    """Run every step; fail with every difference found (all steps are checked).
    ``restore_into``: the server to restore into (default: ``pg``)."""
    if scenario.needs_test_extension:
        install_test_extension(pg)
        if restore_into is not None:
            install_test_extension(restore_into)
    store = ObjectStore((tmp_path / "store").as_uri())
    run = Run(pg, scenario, store, restore_into)
    problems: list[str] = []
    try:
        run.setup()
        chain: list[Manifest] = []
        for index, step in enumerate(scenario.steps):
            result = run.backup(step, chain[-1] if chain else None, index)
            chain.append(result.manifest)
            problems += run.check_manifest(step, result)
            problems += run.restore_and_compare(chain, result)
    finally:
        run.teardown()
    assert not problems, "\n".join(problems)
