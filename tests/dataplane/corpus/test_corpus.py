"""Public schemas (``corpus.py``), each loaded, backed up (full), changed, backed up again
(incremental) and restored by every kind, compared with the source beside ``pg_dump -Fc |
pg_restore`` of the same source: no difference may go beyond what ``pg_restore`` itself shows.

- DATABASE: the whole state (every table's rows, sequences, materialized views, large objects,
  database properties) and the normalised ``pg_dump --schema-only``;
- TABLE, every table into a new database: its ``pg_dump -t`` entries (owner, grants,
  indexes, triggers...), rows and sequences; the foreign keys to tables not restored are left
  out (and must be listed in the result); the sequences its defaults use are named with it; a
  partition alone is refused (its parent brings it);
- TABLE, every table into a copy of the database after ``DROP TABLE ... CASCADE``: the same,
  with nothing left out (a partition attaches to the parent there);
- CLUSTER, last: the database restored in place, compared as for DATABASE.

The default run takes the ``fast`` corpora and their listed tables (a couple of minutes);
``MANAGED_BACKUPS_CORPUS=all`` takes every corpus and every table (about an hour here);
``MANAGED_BACKUPS_CORPUS=zabbix,pagila`` the corpora named, with their listed tables.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_plan import (
    ClusterAccess,
    PlanError,
    RestoreOutcome,
    RestorePlan,
    TableRef,
    execute_plan,
)
from tests.infra.postgres import LocalPostgres

from ..conftest import PgServer
from ..differential.harness import database_state, schema_dump
from .corpus import CORPORA, CORPUS_DIR, Corpus

pytestmark = pytest.mark.integration

_CHOSEN = os.environ.get("MANAGED_BACKUPS_CORPUS", "")
ALL = _CHOSEN == "all"
"""Every corpus, every table."""
_NAMED = set(_CHOSEN.split(",")) - {"", "all"}
"""Corpora named (comma-separated): their listed tables only."""
SELECTED = [
    c
    for c in CORPORA
    if (c.name in _NAMED if _NAMED else (c.fast or ALL) and (not c.optional or c.available()))
]
SLOW = pytest.mark.timeout(7200 if ALL else 900)
"""Every table of a corpus, one restore each: 3-4 s a table on a loaded 2-core machine."""


def differences(expected: dict[str, Any], got: dict[str, Any]) -> set[str]:
    """Items of :func:`database_state` (and schema lines) that differ."""
    out: set[str] = set()
    for item in set(expected) | set(got):
        if item == "schema":
            out |= {f"schema - {line}" for line in set(expected[item]) - set(got[item])}
            out |= {f"schema + {line}" for line in set(got[item]) - set(expected[item])}
        elif expected.get(item) != got.get(item):
            out.add(item)
    return out


Entries = dict[tuple[str, str], tuple[str, ...]]


def table_entries(pg: PgServer, db: str, table: str) -> Entries:
    """``pg_dump --schema-only -t public.table``, entry by entry: (type, name) → owner and
    normalised SQL (grants and comments are entries too)."""
    proc = subprocess.run(
        [pg.tool("pg_dump"), "--schema-only", "-t", f'public."{table}"', "-d",
         pg.dsn_for(db)],
        capture_output=True, check=True, env={**os.environ, "PGPASSWORD": pg.password},
    )  # fmt: skip
    entries: Entries = {}
    key: tuple[str, str] | None = None
    for line in proc.stdout.decode().splitlines():
        if line.startswith("-- Name: "):
            fields = dict(part.split(": ", 1) for part in line[3:].split("; ") if ": " in part)
            key = (fields.get("Type", ""), fields.get("Name", ""))
            entries[key] = (fields.get("Owner", ""),)
        elif (
            key is not None
            and line.strip()
            and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\"))
        ):
            entries[key] += (line,)
    return entries


def entry_differences(expected: Entries, got: Entries) -> set[tuple[str, str]]:
    return {k for k in set(expected) | set(got) if expected.get(k) != got.get(k)}


@dataclass
class CorpusRun:
    corpus: Corpus
    pg: PgServer
    store: ObjectStore
    db: str
    role: str
    chain: list[Manifest] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    baseline_db: str = ""
    baseline: set[str] = field(default_factory=set)
    tables: list[str] = field(default_factory=list)
    partitions: dict[str, str] = field(default_factory=dict)
    """Partition → its parent."""
    children: dict[str, str] = field(default_factory=dict)
    """Inheritance child → its parent."""

    @property
    def access(self) -> ClusterAccess:
        return ClusterAccess(self.pg.dsn_for(), password=self.pg.password)

    def restore(self, kind: str, target: str, **kwargs: Any) -> RestoreOutcome:
        plan = RestorePlan(
            kind=kind,
            source_database=self.db,
            target_database=target,
            job_id=uuid.uuid4(),
            **kwargs,
        )
        return execute_plan(self.store, self.chain, plan, self.access, lambda n: None)

    def state(self, db: str) -> dict[str, Any]:
        with self.pg.connect(db) as conn:
            state = database_state(conn)
        state["schema"] = schema_dump(self.pg, db)
        return state

    def sequences_used(self, table: str) -> tuple[TableRef, ...]:
        """Sequences the table's defaults use that it does not own (named with it)."""
        with self.pg.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT DISTINCT sn.nspname, s.relname FROM pg_attrdef ad"
                " JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid"
                " AND d.refclassid = 'pg_class'::regclass"
                " JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'"
                " JOIN pg_namespace sn ON sn.oid = s.relnamespace"
                " WHERE ad.adrelid = to_regclass(%s) AND NOT EXISTS (SELECT 1 FROM pg_depend o"
                "  WHERE o.objid = s.oid AND o.refobjid = ad.adrelid AND o.deptype IN ('a', 'i'))",
                (f'public."{table}"',),
            ).fetchall()
        return tuple(TableRef(str(s), str(n)) for s, n in rows)

    def pg_restore_baseline(self) -> None:
        """``pg_dump -Fc | pg_restore`` of the source, and what it differs in."""
        self.baseline_db = f"corpus_baseline_{uuid.uuid4().hex[:6]}"
        with self.pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{self.baseline_db}" TEMPLATE template0')
        env = {**os.environ, "PGPASSWORD": self.pg.password}
        dump = subprocess.run(
            [self.pg.tool("pg_dump"), "-Fc", "-d", self.pg.dsn_for(self.db)],
            capture_output=True, check=True, env=env,
        )  # fmt: skip
        subprocess.run(
            [self.pg.tool("pg_restore"), "--exit-on-error", "-d",
             self.pg.dsn_for(self.baseline_db)],
            input=dump.stdout, capture_output=True, check=True, env=env,
        )  # fmt: skip
        self.baseline = differences(self.source, self.state(self.baseline_db))


@pytest.fixture(scope="module", params=SELECTED, ids=[c.name for c in SELECTED])
def run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CorpusRun]:
    corpus: Corpus = request.param
    assert corpus.available(), (
        f"corpus {corpus.name} is not in {CORPUS_DIR}: run scripts/fetch-corpus"
    )
    tmp = tmp_path_factory.mktemp(f"corpus-{corpus.name}")
    # A server of its own: the CLUSTER restore replaces every database of it.
    with LocalPostgres() as server:
        pg = PgServer(server.url)
        run = CorpusRun(
            corpus, pg, ObjectStore((tmp / "store").as_uri()), f"corpus_{corpus.name}",
            f"corpus_reader_{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        with pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{run.db}" TEMPLATE template0')
            conn.execute(f'CREATE ROLE "{run.role}"')
        corpus.load(pg.dsn_for(run.db), pg.password)
        adapter = pg.adapter()
        run.chain.append(adapter.full_backup(BackupRequest(run.store, "corpus", "full")))
        with pg.connect(run.db) as conn:
            conn.execute(corpus.changes.format(role=f'"{run.role}"'))  # type: ignore[arg-type]
        run.chain.append(
            adapter.incremental_backup(BackupRequest(run.store, "corpus", "incr"), run.chain[0])
        )
        # Nothing writes after the incremental: the source as it is now is the backup's.
        run.source = run.state(run.db)
        run.pg_restore_baseline()
        with pg.connect(run.db) as conn:
            relations = conn.execute(
                "SELECT c.relname, c.relispartition, p.relname, c.relkind::text FROM pg_class c"
                " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
                " LEFT JOIN pg_class p ON p.oid = i.inhparent"
                " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
                " ORDER BY 1"
            ).fetchall()
        for name, is_partition, parent, _kind in relations:
            if ALL or name in corpus.tables:
                run.tables.append(str(name))
            if parent is not None:
                (run.partitions if is_partition else run.children)[str(name)] = str(parent)
        missing = set(corpus.tables) - {str(r[0]) for r in relations}
        assert not missing, f"{corpus.name}: no tables {sorted(missing)}"
        yield run


def test_database_restore_differs_only_where_pg_restore_does(run: CorpusRun) -> None:
    target = f"corpus_copy_{uuid.uuid4().hex[:6]}"
    outcome = run.restore("DATABASE", target)
    assert outcome.left_out == []
    beyond = differences(run.source, run.state(target)) - run.baseline
    assert not beyond, sorted(beyond)[:20]


@SLOW
def test_every_table_alone_into_a_new_database(run: CorpusRun) -> None:
    problems: list[str] = []
    for table in run.tables:
        target = f"corpus_t_{uuid.uuid4().hex[:8]}"
        tables = [TableRef("public", table)]
        if table in run.children:
            tables.insert(0, TableRef("public", run.children[table]))
        try:
            outcome = run.restore(
                "TABLE",
                target,
                tables=tuple(tables),
                sequences=run.sequences_used(table),
                skip_missing_foreign_keys=True,
            )
        except PlanError as exc:
            parent = run.partitions.get(table)
            if parent and f"is a partition of public.{parent}, which is neither" in exc.message:
                continue  # as documented: its parent brings it
            problems.append(f"{table}: {exc}")
            continue
        problems += compare_table(run, table, target, outcome)
        run.pg.drop_database(target)
    assert not problems, "\n".join(problems[:30])


@SLOW
def test_every_table_into_the_database_after_dropping_it(run: CorpusRun) -> None:
    copy = f"corpus_drop_{uuid.uuid4().hex[:6]}"
    run.restore("DATABASE", copy)
    problems: list[str] = []
    for table in run.tables:
        with run.pg.connect(copy) as conn:
            conn.execute(f'DROP TABLE public."{table}" CASCADE')
        try:
            outcome = run.restore(
                "TABLE", copy, tables=(TableRef("public", table),), into_existing=True
            )
        except PlanError as exc:
            problems.append(f"{table}: {exc}")
            continue
        problems += compare_table(run, table, copy, outcome)
    assert not problems, "\n".join(problems[:30])


def compare_table(run: CorpusRun, table: str, target: str, outcome: RestoreOutcome) -> list[str]:
    """The table's entries, rows and sequences as the source's, but for what pg_restore
    changes too and the foreign keys the result lists as left out."""
    problems: list[str] = []
    source = table_entries(run.pg, run.db, table)
    baseline = entry_differences(source, table_entries(run.pg, run.baseline_db, table))
    for kind, name in sorted(
        entry_differences(source, table_entries(run.pg, target, table)) - baseline
    ):
        fk = name.split(" ", 1)[-1]
        if kind == "FK CONSTRAINT" and any(
            f"public.{table}.{fk} references" in item for item in outcome.left_out
        ):
            continue
        problems.append(f"{table}: entry {kind} {name} differs")
    got = run.state(target)
    for item, value in got.items():
        if item.startswith(("table ", "sequence ")) and value != run.source.get(item):
            problems.append(f"{table}: {item}: source {run.source.get(item)!r}, restored {value!r}")
    return problems


def test_cluster_restore_differs_only_where_pg_restore_does(run: CorpusRun) -> None:
    """Last: it replaces every database of the corpus's server."""
    run.restore("CLUSTER", "")
    beyond = differences(run.source, run.state(run.db)) - run.baseline
    assert not beyond, sorted(beyond)[:20]


def test_the_corpus_folder_says_where_each_corpus_comes_from(run: CorpusRun) -> None:
    folder: Path = run.corpus.folder
    assert (folder / "copyright").is_file() or (folder / "LICENSE.txt").is_file()
