"""Incrementals from WAL summaries (PostgreSQL 17 and later, ``summarize_wal = on``).

What an incremental leaves unread, what it reads block by block, and every case where it must
fall back to the probe, each restored and compared with its source. These tests start a server
of their own (17, or the matrix's major when newer) with ``summarize_wal = on`` and autovacuum
off (so that what reads a table is the backup alone), whatever server the other tests use; the
differential suite runs two of its scenarios on it too (the version matrix runs the whole
suite on 17 and 18 with summaries on, see ``tests/dataplane/conftest.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from managed_backups.shared.dataplane import postgres_walsummary
from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import (
    KeyColumn,
    Manifest,
    TableBackup,
    TableMode,
    load_chain,
    load_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.postgres_walsummary import tid_ranges_sql
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.sql import quote_ident
from tests.infra.postgres import LocalPostgres
from tests.infra.postgres import test_pg_major as matrix_major
from tests.restore_checks import table_digest

from .conftest import PgServer
from .differential.catalogue import BASICS, WAL_SUMMARIES
from .differential.harness import Scenario, run_scenario

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg17() -> Iterator[PgServer]:
    major = max(17, matrix_major() or 17)
    # summarize_wal through ALTER SYSTEM, not the command line: the tests turn it off and on.
    with LocalPostgres(major=major, settings={"autovacuum": "off"}) as server:
        pg = PgServer(server.url)
        _summarize_wal(pg, True)
        yield pg


@pytest.fixture
def db(pg17: PgServer) -> Iterator[str]:
    """A fresh database (dropped afterwards: every backup covers the whole cluster)."""
    name = pg17.create_database("walsum")
    yield name
    pg17.drop_database(name)


def _backup(
    pg: PgServer,
    store: ObjectStore,
    bid: str,
    previous: Manifest | None = None,
    adapter: PostgresAdapter | None = None,
) -> Manifest:
    request = BackupRequest(store, "c", bid)
    a = adapter or pg.adapter()
    return a.full_backup(request) if previous is None else a.incremental_backup(request, previous)


def _run(pg: PgServer, db: str, *statements: str) -> None:
    with pg.connect(db) as conn:
        for sql in statements:
            conn.execute(sql)  # type: ignore[call-overload]


def _entry(manifest: Manifest, db: str, table: str) -> TableBackup:
    entry = manifest.table(db, "public", table)
    assert entry is not None
    return entry


def _tables(pg: PgServer, db: str) -> list[str]:
    with pg.connect(db) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            " ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _restores_to_source(pg: PgServer, store: ObjectStore, head: Manifest, db: str) -> None:
    """``head``'s chain restored into a new database equals the source (unchanged since)."""
    target = pg.create_database("walsum_restored")
    try:
        restore_database(
            store, load_chain(store, head), db, pg.dsn_for(target), password=pg.password
        )
        for table in _tables(pg, db):
            assert table_digest(pg.url_for(target), "public", table) == table_digest(
                pg.url_for(db), "public", table
            ), table
    finally:
        pg.drop_database(target)


def _blocks_read(pg: PgServer, db: str) -> dict[str, int]:
    """Heap and index blocks each table of ``db`` was read in so far, once every backend of
    the backups has ended (a backend reports its reads when it exits)."""
    with pg.connect(db) as conn:
        deadline = time.monotonic() + 60
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'managed-backups'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backup's sessions never ended"
            time.sleep(0.02)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT relname, coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0)"
            " + coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0)"
            " FROM pg_statio_user_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {str(name): int(n) for name, n in rows}


def test_unwritten_tables_are_unchanged_and_not_read(
    pg17: PgServer, db: str, tmp_path: Path
) -> None:
    statements = [
        f"CREATE TABLE t{i:02d} (id int PRIMARY KEY, v text);"
        f" INSERT INTO t{i:02d} SELECT g, 'v' || g FROM generate_series(1, 20) g"
        for i in range(30)
    ]
    _run(
        pg17,
        db,
        *statements,
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        "INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 30000) g",
        "VACUUM (FREEZE, ANALYZE)",
    )
    store = ObjectStore((tmp_path / "store").as_uri())
    full = _backup(pg17, store, "full")
    assert full.database(db).wal_mark is not None and full.database(db).wal_summary is None
    _run(
        pg17,
        db,
        "UPDATE t03 SET v = 'changed' WHERE id = 4",
        "DELETE FROM t07 WHERE id = 1",
        "INSERT INTO t11 VALUES (21, 'new')",
        "UPDATE big SET v = 'changed' WHERE id IN (5, 20000)",
        "DELETE FROM big WHERE id = 100",
        "INSERT INTO big VALUES (30001, 'appended')",
    )
    before = _blocks_read(pg17, db)
    inc = _backup(pg17, store, "inc", full)
    after = _blocks_read(pg17, db)

    entry = inc.database(db)
    written = {"t03", "t07", "t11", "big"}
    modes = {t.name: t.mode for t in entry.tables}
    assert {n for n, m in modes.items() if m == TableMode.DELTA} == written
    assert {n for n, m in modes.items() if m == TableMode.UNCHANGED} == set(modes) - written
    assert entry.wal_summary is not None and entry.wal_summary.endswith(
        ": 27 tables unwritten (not read), 1 read in their written blocks, 3 probed"
    ), entry.wal_summary
    # not read at all: not probed, no key set
    assert {n for n in modes if after[n] != before[n]} == written
    assert _entry(inc, db, "big").rows == 3
    _restores_to_source(pg17, store, inc, db)


def test_a_large_table_is_read_by_tid_range_scans(pg17: PgServer, db: str) -> None:
    _run(
        pg17,
        db,
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
        "ANALYZE big",
    )
    with pg17.connect(db) as conn:
        for spans in (((3, 3),), ((0, 2), (40, 41), (90, None))):
            sql = tid_ranges_sql(
                quote_ident("big"), ["id", "v"], [KeyColumn(name="id", type="int4")], "true", spans
            )
            plan = "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN {sql}").fetchall())
            assert plan.count("Tid Range Scan") == len(spans) and "Seq Scan" not in plan, plan
        rows = conn.execute(
            tid_ranges_sql(
                quote_ident("big"),
                ["id"],
                [KeyColumn(name="id", type="int4")],
                "_t.id % 2 = 0",
                ((0, 0), (2, 2)),
            )
        ).fetchall()
        expected = conn.execute(
            "SELECT id FROM big WHERE (ctid::text::point)[0] IN (0, 2) AND id % 2 = 0 ORDER BY id"
        ).fetchall()
    assert rows == expected and rows


def test_rewritten_truncated_and_unlogged_tables_are_probed(
    pg17: PgServer, db: str, tmp_path: Path
) -> None:
    """A new storage (a rewrite, a TRUNCATE) and an unlogged table (no WAL for its rows) are
    probed; an unlogged table written since the previous backup would look unwritten, and so
    would a table emptied by TRUNCATE (its new storage has no block written: only the
    creation's limit block says so)."""
    _run(
        pg17,
        db,
        *(
            f"CREATE {kind} TABLE {name} (id int PRIMARY KEY, v text);"
            f" INSERT INTO {name} SELECT g, 'v' FROM generate_series(1, 100) g"
            for kind, name in (
                ("", "rewritten"),
                ("", "truncated"),
                ("", "emptied"),
                ("UNLOGGED", "scratch"),
                ("", "quiet"),
            )
        ),
    )
    store = ObjectStore((tmp_path / "store").as_uri())
    full = _backup(pg17, store, "full")
    _run(
        pg17,
        db,
        "UPDATE rewritten SET v = 'w' WHERE id < 10",
        "VACUUM FULL rewritten",
        "TRUNCATE truncated",
        "INSERT INTO truncated SELECT g, 'again' FROM generate_series(5, 60) g",
        "TRUNCATE emptied",
        "UPDATE scratch SET v = 'unlogged' WHERE id % 7 = 0",
    )
    inc = _backup(pg17, store, "inc", full)
    entry = inc.database(db)
    assert entry.wal_summary is not None and entry.wal_summary.endswith(
        ": 1 tables unwritten (not read), 0 read in their written blocks, 4 probed"
    ), entry.wal_summary
    modes = {t.name: t.mode for t in entry.tables}
    assert modes == {
        "rewritten": TableMode.DELTA,
        "truncated": TableMode.DELTA,
        "emptied": TableMode.DELTA,
        "scratch": TableMode.DELTA,
        "quiet": TableMode.UNCHANGED,
    }
    _restores_to_source(pg17, store, inc, db)


def test_a_transaction_older_than_the_mark_is_not_missed(
    pg17: PgServer, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that wrote before the previous backup's mark and committed after its
    snapshot: its rows are in no summary after the mark, so every table is probed."""
    monkeypatch.setattr(postgres_walsummary, "MARK_WAIT_SECONDS", 0.2)
    _run(pg17, db, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    store = ObjectStore((tmp_path / "store").as_uri())
    with psycopg.connect(pg17.url_for(db)) as open_transaction:
        open_transaction.execute("INSERT INTO t VALUES (2, 'written before the mark')")
        full = _backup(pg17, store, "full")  # the mark waits 0.2 s for it, then goes on
        open_transaction.commit()
    mark = full.database(db).wal_mark
    assert mark is not None and mark.xid >= full.database(db).snapshot.xmin
    inc = _backup(pg17, store, "inc", full)
    entry = inc.database(db)
    assert entry.wal_summary is not None and entry.wal_summary.endswith(
        "a transaction that began before the previous backup's WAL mark was still running at"
        " its snapshot: every table probed"
    ), entry.wal_summary
    assert _entry(inc, db, "t").rows == 1
    _restores_to_source(pg17, store, inc, db)


def _summarize_wal(pg: PgServer, on: bool) -> None:
    """Turn ``summarize_wal`` on or off (it needs no restart) and wait until the summarizer
    has started or stopped."""
    with pg.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET summarize_wal = {'on' if on else 'off'}")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 60
        while True:
            setting = conn.execute("SHOW summarize_wal").fetchone()
            row = conn.execute("SELECT summarizer_pid FROM pg_get_wal_summarizer_state()")
            pid = row.fetchone()
            running = pid is not None and (pid[0] or 0) > 0  # NULL once stopped
            if setting == ("on" if on else "off",) and running == on:
                return
            assert time.monotonic() < deadline, "the summarizer did not follow the setting"
            time.sleep(0.02)


def test_missing_summaries_and_marks_probe_every_table(
    pg17: PgServer, db: str, tmp_path: Path
) -> None:
    """Summaries missing for a stretch of WAL (summarize_wal off while the WAL was removed),
    summarize_wal off, a previous backup without a mark: every table probed, each step
    restored exactly; the next incremental after a marked one uses the summaries again."""
    _run(
        pg17,
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text)",
        "INSERT INTO a SELECT g, 'v' FROM generate_series(1, 100) g",
        "CREATE TABLE b (id int PRIMARY KEY, v text)",
        "INSERT INTO b SELECT g, 'v' FROM generate_series(1, 100) g",
    )
    store = ObjectStore((tmp_path / "store").as_uri())
    chain = [_backup(pg17, store, "full")]
    try:
        _summarize_wal(pg17, False)
        with pg17.connect(db) as conn:
            conn.execute("UPDATE a SET v = 'while off' WHERE id = 1")
            for _ in range(3):  # the WAL of that stretch is removed: never summarized
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
        _summarize_wal(pg17, True)
        expected = [
            "no WAL summary of timeline 1 covers",
            "summarize_wal is off: every table probed",
            "the previous backup recorded no WAL mark: every table probed",
            ": 1 tables unwritten (not read), 0 read in their written blocks, 1 probed",
        ]
        for step, text in enumerate(expected, start=1):
            _run(pg17, db, f"UPDATE b SET v = 'step {step}' WHERE id = {step}")
            _summarize_wal(pg17, step != 2)
            inc = _backup(pg17, store, f"inc{step}", chain[-1])
            note = inc.database(db).wal_summary
            assert note is not None and text in note, (step, note)
            assert (inc.database(db).wal_mark is None) == (step == 2)
            chain.append(inc)
            _restores_to_source(pg17, store, inc, db)
    finally:
        _summarize_wal(pg17, True)


def test_an_incremental_on_a_version_4_manifest_probes(
    pg17: PgServer, db: str, tmp_path: Path
) -> None:
    """A version 4 manifest (written before WAL marks existed) has no mark: the incremental on
    top of it probes every table, says so, records a mark of its own, and restores exactly."""
    _run(
        pg17,
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text)",
        "INSERT INTO a SELECT g, 'v' FROM generate_series(1, 100) g",
        "CREATE TABLE b (id int PRIMARY KEY, v text)",
        "INSERT INTO b SELECT g, 'v' FROM generate_series(1, 100) g",
    )
    store = ObjectStore((tmp_path / "store").as_uri())
    full = _backup(pg17, store, "full")
    raw = json.loads(full.to_json())
    raw["schema_version"] = 4
    for entry in raw["databases"]:
        del entry["wal_mark"], entry["wal_summary"]
    as_v4 = load_manifest(json.dumps(raw).encode())
    assert as_v4.schema_version == 4 and as_v4.database(db).wal_mark is None
    _run(pg17, db, "UPDATE a SET v = 'w' WHERE id = 1")
    inc = _backup(pg17, store, "inc", as_v4)
    entry = inc.database(db)
    assert inc.schema_version == 5 and entry.wal_mark is not None
    assert entry.wal_summary == "the previous backup recorded no WAL mark: every table probed"
    assert {t.name: t.mode for t in entry.tables} == {
        "a": TableMode.DELTA,
        "b": TableMode.UNCHANGED,
    }
    _restores_to_source(pg17, store, inc, db)


def test_a_role_without_checkpoint_rights_probes(pg17: PgServer, db: str, tmp_path: Path) -> None:
    """Summaries end at checkpoints: without the right to run one (``pg_checkpoint``) the WAL
    after the last checkpoint is not summarized yet, and the incremental says so and probes;
    with the right granted, it uses the summaries."""
    role = "walsum_reader"
    with pg17.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' IN ROLE pg_read_all_data")
    try:
        _run(
            pg17,
            db,
            "CREATE TABLE a (id int PRIMARY KEY, v text)",
            "INSERT INTO a SELECT g, 'v' FROM generate_series(1, 100) g",
            "CREATE TABLE b (id int PRIMARY KEY, v text)",
            "INSERT INTO b SELECT g, 'v' FROM generate_series(1, 100) g",
        )
        with pg17.connect() as conn:
            # A checkpoint after the database's creation: a summary starts at one, and the
            # role's refused checkpoints would leave the creation in the range asked.
            conn.execute("CHECKPOINT")
        store = ObjectStore((tmp_path / "store").as_uri())
        reader = PostgresAdapter(pg17.dsn_for(user=role), password="pw")
        full = _backup(pg17, store, "full", adapter=reader)
        _run(pg17, db, "UPDATE a SET v = 'w' WHERE id = 1")
        inc = _backup(pg17, store, "inc", full, adapter=reader)
        note = inc.database(db).wal_summary
        assert note is not None and "CHECKPOINT refused" in note and "pg_checkpoint" in note
        _restores_to_source(pg17, store, inc, db)
        with pg17.connect() as conn:
            conn.execute(f"GRANT pg_checkpoint TO {role}")
        _run(pg17, db, "UPDATE a SET v = 'again' WHERE id = 2")
        inc2 = _backup(pg17, store, "inc2", inc, adapter=reader)
        note = inc2.database(db).wal_summary
        assert note is not None and note.endswith(
            ": 1 tables unwritten (not read), 0 read in their written blocks, 1 probed"
        ), note
        _restores_to_source(pg17, store, inc2, db)
    finally:
        with pg17.connect() as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("scenario", [BASICS, WAL_SUMMARIES], ids=lambda s: s.name)
def test_differential_scenarios_on_a_summarizing_server(
    pg17: PgServer, scenario: Scenario, tmp_path: Path
) -> None:
    run_scenario(pg17, scenario, tmp_path)
