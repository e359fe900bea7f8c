"""Backup benchmark: our postgres adapter vs ``pg_dump -Fd -j2`` vs ``pg_dump | restic``.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_backup --scale 60      # >= 1 GB: pgbench -s 60 + wide tables
    python -m benchmarks.bench_backup --scale 5       # quick check
    python -m benchmarks.bench_backup --shape tables  # 3,000 small tables in 50 schemas

Shape ``pgbench`` (the default; large tables), one run on a throw-away PostgreSQL
(``tests.infra.postgres.LocalPostgres``):

1. data: ``pgbench -i -s SCALE`` plus two wide tables (``events``: jsonb payloads, ``documents``:
   ~1 KB text bodies) sized with the scale;
2. full backup: ours (local-directory store) vs ``pg_dump -Fd -j2`` (its default
   compression) to local disk vs ``pg_dump | restic backup --stdin`` (local repository);
3. 1% of every table's rows appended: our incremental vs a further restic snapshot;
4. 1% of the rows updated at random: our incremental vs a further restic snapshot.

Each backup runs in a child process; times are wall-clock, bytes are what landed on disk
(the store / dump directory / restic repository grew by), peak RSS is the child's
``ru_maxrss`` (for pipelines: the largest process). With ``--repeat N`` (default 3 for shape
``tables``, whose steps take seconds and vary by tens of percent on a busy machine, else 1) our
steps and ``pg_dump -Fd`` run N times each, our repeats on a copy of the store as it was before
the step, and the median time is reported. Targets: full <= 1.3x
pg_dump's time; appended incremental <= 3% and random-update incremental <= 5% of our full's
bytes; our bytes <= restic's at every step.

Shape ``tables`` (per-table overhead, a multi-tenant layout): ``--tables`` small tables (default
3,000: an identity key, a few columns, ``--rows`` rows each) spread over ``--schemas`` schemas
(default 50), one database; every table's rows differ (as tenants' do: identical tables
would dedupe into a few chunks and hide the per-table objects). A full backup of ours vs ``pg_dump -Fd -j2`` in the same run, then
a few tables changed (rows inserted, updated, deleted in ``--changed`` tables) and an
incremental. Targets: the full no slower than ``pg_dump -Fd -j2``; the incremental <= 50% of
the full's time and <= 5% of its bytes. The server gets ``max_locks_per_transaction`` sized for
the table count, as ``pg_dump``'s own documentation asks of databases with many tables.

``--encryption`` (on the ``pgbench`` shape's data): encryption at rest on and off, compared in
the same run. Our full backup is taken ``--repeat`` times (default 5) each way into a fresh
store, alternating which goes first in each round (on a shared machine the load drifts; an
alternated pair sees the same load), sealed for a cluster with a platform key file
(``shared/dataplane/sealing.py``) or plain. Reported: each way's median and range, the ratio of
the medians (target: on <= 1.1x off), stored bytes, and the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.infra.postgres import LocalPostgres

MiB = 1 << 20
RESTIC_PASSWORD = "benchmark-only-password"


def dir_bytes(path: Path) -> int:
    return dir_usage(path)[0]


def dir_usage(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path`` (an object store's objects are its files)."""
    total = files_seen = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
                files_seen += 1
    return total, files_seen


@dataclass
class Result:
    step: str
    tool: str
    seconds: float
    stored: int
    peak_rss: int  # bytes
    objects: int = 0
    """Files (objects) the step added to its store or dump directory."""


# ------------------------------------------------------------------------------ child runners
def _child_backup(args: dict[str, Any]) -> None:
    """In a child process: take one backup with our adapter; print JSON."""
    from managed_backups.shared.dataplane.engine import BackupRequest
    from managed_backups.shared.dataplane.manifest import load_manifest
    from managed_backups.shared.dataplane.objectstore import ObjectStore
    from managed_backups.shared.dataplane.postgres import PostgresAdapter

    adapter = PostgresAdapter(
        args["dsn"], password=os.environ["BENCH_PGPASSWORD"], parallelism=args["parallelism"]
    )
    store = ObjectStore(args["store"])
    if args.get("keys"):  # encryption at rest: sealed for the cluster with a platform key
        from managed_backups.shared.dataplane.keys import ClusterKeys, LocalKeyring
        from managed_backups.shared.dataplane.sealing import sealed_store

        ring = LocalKeyring(Path(args["keys"]), label="platform", name="key", create_first=True)
        store = sealed_store(store, ClusterKeys("bench", ring, (ring,)))
    request = BackupRequest(store, "bench", args["backup_id"])
    start = time.perf_counter()
    if args.get("previous"):
        previous = load_manifest(Path(args["previous"]).read_bytes())
        manifest = adapter.incremental_backup(request, previous)
    else:
        manifest = adapter.full_backup(request)
    elapsed = time.perf_counter() - start
    Path(args["manifest_out"]).write_bytes(manifest.to_json())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": elapsed, "peak_rss": rss, "totals": manifest.totals.model_dump()}))


def _child_shell(args: dict[str, Any]) -> None:
    """In a child process: run a shell pipeline; print its time and its largest child's RSS."""
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", args["cmd"]], check=True, env=os.environ)
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": elapsed, "peak_rss": rss}))


def _run_child(mode: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_backup", f"--child-{mode}", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------ the run
class Bench:
    def __init__(self, scale: int, workdir: Path, parallelism: int, repeat: int = 1) -> None:
        self.scale = scale
        self.workdir = workdir
        self.parallelism = parallelism
        self.repeat = max(1, repeat)
        """Runs of each of our steps and of ``pg_dump -Fd``; the median time is reported."""
        self.results: list[Result] = []
        self.pg = LocalPostgres(
            settings={
                "shared_buffers": "512MB",
                "max_wal_size": "8GB",
                "checkpoint_timeout": "30min",
                "maintenance_work_mem": "256MB",
                "work_mem": "64MB",
                "autovacuum": "off",
            }
        )
        self.store = workdir / "store"
        self.restic_repo = workdir / "restic"
        self.manifests = workdir / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------- helpers
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env.update(
            PGPASSWORD=self.pg.password,
            BENCH_PGPASSWORD=self.pg.password,
            RESTIC_PASSWORD=RESTIC_PASSWORD,
            RESTIC_REPOSITORY=str(self.restic_repo),
        )
        return env

    def psql(self, sql: str, db: str = "bench") -> None:
        subprocess.run(
            [
                str(self.pg.bindir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.pg.dsn_for(db),
                "-c",
                sql,
            ],
            check=True,
            env=self.env,
        )

    def scalar(self, sql: str, db: str = "bench") -> str:
        out = subprocess.run(
            [str(self.pg.bindir / "psql"), "-X", "-q", "-At", "-d", self.pg.dsn_for(db), "-c", sql],
            check=True,
            env=self.env,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -------------------------------------------------------------- data
    def generate(self) -> None:
        self.psql("CREATE DATABASE bench", db="postgres")
        self.log(f"pgbench -i -s {self.scale}")
        subprocess.run(
            [
                str(self.pg.bindir / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(self.scale),
                "-d",
                self.pg.dsn_for("bench"),
            ],
            check=True,
            env=self.env,
            capture_output=True,
        )
        wide = 8_000 * self.scale
        self.log(f"wide tables: events and documents, {wide} rows each")
        self.psql(
            f"""
            CREATE TABLE events (
                id bigint PRIMARY KEY, created_at timestamptz NOT NULL, user_id int NOT NULL,
                kind text NOT NULL, payload jsonb NOT NULL);
            INSERT INTO events
            SELECT g, timestamptz '2024-01-01' + g * interval '1 second', (g::bigint * 7919) % 100000,
                   (ARRAY['view','click','buy','login','logout'])[1 + g % 5],
                   jsonb_build_object('session', md5(g::text), 'amount', (g % 1000) / 10.0,
                                      'tags', jsonb_build_array('t' || g % 17, 't' || g % 31),
                                      'ua', 'Mozilla/5.0 (X11; Linux x86_64) build ' || g % 97)
            FROM generate_series(1, {wide}) g;
            CREATE TABLE documents (
                id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL,
                updated_at timestamptz NOT NULL);
            INSERT INTO documents
            SELECT g, 'document ' || g,
                   array_to_string(ARRAY(SELECT md5((g * 31 + i)::text) || ' lorem ipsum dolor '
                                         FROM generate_series(1, 20) i), ' '),
                   timestamptz '2024-01-01' + g * interval '1 minute'
            FROM generate_series(1, {wide}) g;
            """
        )
        self.psql("VACUUM ANALYZE")
        self.psql("CHECKPOINT", db="postgres")
        size = int(self.scalar("SELECT pg_database_size('bench')"))
        self.log(f"database size: {size / MiB:.0f} MiB")
        self.db_size = size

    def append_one_percent(self) -> None:
        self.psql(
            """
            INSERT INTO pgbench_accounts
            SELECT m + g, 1 + (m + g) / 100000, 0, '' FROM (SELECT max(aid) AS m, count(*) AS n
              FROM pgbench_accounts) s, generate_series(1, (SELECT count(*) / 100 FROM pgbench_accounts)) g;
            INSERT INTO events
            SELECT m + g, now(), g % 100000, 'append', jsonb_build_object('session', md5(g::text))
            FROM (SELECT max(id) AS m FROM events) s, generate_series(1, (SELECT count(*) / 100 FROM events)) g;
            INSERT INTO documents
            SELECT m + g, 'appended ' || g, repeat(md5(g::text) || ' appended body ', 20), now()
            FROM (SELECT max(id) AS m FROM documents) s,
                 generate_series(1, (SELECT count(*) / 100 FROM documents)) g;
            INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
            SELECT 1 + g % 10, 1, g, g % 100, now() FROM generate_series(1, 1000) g;
            """
        )

    def update_one_percent(self) -> None:
        self.psql(
            """
            UPDATE pgbench_accounts SET abalance = abalance + 17
            WHERE aid IN (SELECT 1 + (hashint4(g::int) & 2147483647) % (SELECT max(aid) FROM pgbench_accounts)
                          FROM generate_series(1, (SELECT count(*) / 100 FROM pgbench_accounts)) g);
            UPDATE events SET kind = 'updated', payload = payload || '{"v": 2}'
            WHERE id IN (SELECT 1 + (hashint4(g::int + 1) & 2147483647) % (SELECT max(id) FROM events)
                         FROM generate_series(1, (SELECT count(*) / 100 FROM events)) g);
            UPDATE documents SET title = title || ' (edited)', updated_at = now()
            WHERE id IN (SELECT 1 + (hashint4(g::int + 2) & 2147483647) % (SELECT max(id) FROM documents)
                         FROM generate_series(1, (SELECT count(*) / 100 FROM documents)) g);
            UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid % 100 = 0;
            """
        )

    # -------------------------------------------------------------- tools
    def ours(self, step: str, backup_id: str, previous: str | None) -> Result:
        """Our backup into the store; with ``repeat`` > 1 the same backup is taken again
        (each time on a copy of the store as it was before the step) and the time reported is
        the median. Bytes, objects and RSS are the first run's."""
        before, before_objects = dir_usage(self.store)
        scratch = self.workdir / "scratch"
        if self.repeat > 1:
            shutil.rmtree(scratch, ignore_errors=True)
            if self.store.exists():
                shutil.copytree(self.store, scratch / "before")
            else:
                (scratch / "before").mkdir(parents=True)
        args = {
            "dsn": self.pg.dsn_for("postgres"),
            "store": self.store.as_uri(),
            "backup_id": backup_id,
            "previous": str(self.manifests / f"{previous}.json") if previous else None,
            "manifest_out": str(self.manifests / f"{backup_id}.json"),
            "parallelism": self.parallelism,
        }
        out = _run_child("backup", args, self.env)
        after, after_objects = dir_usage(self.store)
        times = [float(out["seconds"])]
        for run in range(1, self.repeat):
            again = scratch / f"run-{run}"
            shutil.copytree(scratch / "before", again)
            rerun = {**args, "store": again.as_uri(), "manifest_out": str(again / "manifest")}
            times.append(float(_run_child("backup", rerun, self.env)["seconds"]))
            shutil.rmtree(again)
        shutil.rmtree(scratch, ignore_errors=True)
        result = Result(
            step,
            "ours",
            statistics.median(times),
            after - before,
            out["peak_rss"],
            after_objects - before_objects,
        )
        self.results.append(result)
        self.log(
            f"{step}: ours {result.seconds:.1f}s {result.stored / MiB:.1f} MiB"
            + (f" (runs: {', '.join(f'{t:.2f}s' for t in times)})" if len(times) > 1 else "")
        )
        return result

    def pg_dump_dir(self, step: str) -> Result:
        """``pg_dump -Fd -j2``; the median time of ``repeat`` runs."""
        target = self.workdir / "pg_dump_dir"
        cmd = f"{self.pg.bindir / 'pg_dump'} -Fd -j2 -f {target} -d '{self.pg.dsn_for('bench')}'"
        times = []
        for _run in range(self.repeat):
            shutil.rmtree(target, ignore_errors=True)
            out = _run_child("shell", {"cmd": cmd}, self.env)
            times.append(float(out["seconds"]))
        stored, objects = dir_usage(target)
        seconds = statistics.median(times)
        result = Result(step, "pg_dump -Fd -j2", seconds, stored, out["peak_rss"], objects)
        self.results.append(result)
        self.log(
            f"{step}: pg_dump -Fd -j2 {result.seconds:.1f}s {result.stored / MiB:.1f} MiB"
            + (f" (runs: {', '.join(f'{t:.2f}s' for t in times)})" if len(times) > 1 else "")
        )
        return result

    def restic(self, step: str) -> Result:
        if not self.restic_repo.exists():
            subprocess.run(
                ["restic", "init", "--repository-version", "2"],
                check=True,
                env=self.env,
                capture_output=True,
            )
        before = dir_bytes(self.restic_repo)
        cmd = (
            f"{self.pg.bindir / 'pg_dump'} -d '{self.pg.dsn_for('bench')}'"
            " | restic backup --quiet --stdin --stdin-filename bench.sql"
        )
        out = _run_child("shell", {"cmd": cmd}, self.env)
        result = Result(
            step,
            "pg_dump | restic",
            out["seconds"],
            dir_bytes(self.restic_repo) - before,
            out["peak_rss"],
        )
        self.results.append(result)
        self.log(f"{step}: pg_dump | restic {result.seconds:.1f}s {result.stored / MiB:.1f} MiB")
        return result

    # -------------------------------------------------------------- main
    def run(self) -> int:
        """Data, then our full and pg_dump's, then the shape's further steps; the report."""
        self.pg.start()
        try:
            self.generate()
            full = self.ours("full", "full", None)
            dump = self.pg_dump_dir("full")
            report = self.further_steps(full, dump)
        finally:
            self.pg.stop()
        report()
        return 0 if self.all_pass else 1

    def further_steps(self, full: Result, dump: Result) -> Callable[[], None]:
        restic_full = self.restic("full")
        self.append_one_percent()
        inc1 = self.ours("+1% appended", "inc1", "full")
        restic1 = self.restic("+1% appended")
        self.update_one_percent()
        inc2 = self.ours("1% updated", "inc2", "inc1")
        restic2 = self.restic("1% updated")
        return lambda: self.report(full, dump, restic_full, inc1, restic1, inc2, restic2)

    def report(
        self,
        full: Result,
        dump: Result,
        restic_full: Result,
        inc1: Result,
        restic1: Result,
        inc2: Result,
        restic2: Result,
    ) -> None:
        print()
        print(f"scale {self.scale}: database 'bench' {self.db_size / MiB:.0f} MiB on disk")
        print(
            f"{'step':<14} {'tool':<17} {'time':>8} {'vs pg_dump':>10} {'stored':>12} {'% our full':>10} {'peak RSS':>9}"
        )
        for r in self.results:
            print(
                f"{r.step:<14} {r.tool:<17} {r.seconds:>7.1f}s {r.seconds / dump.seconds:>9.2f}x"
                f" {r.stored / MiB:>9.2f} MiB {100 * r.stored / full.stored:>9.2f}% {r.peak_rss / MiB:>5.0f} MiB"
            )
        checks = [
            (
                "full time <= 1.3x pg_dump -Fd -j2",
                full.seconds <= 1.3 * dump.seconds,
                f"{full.seconds / dump.seconds:.2f}x",
            ),
            (
                "appended incremental <= 3% of full",
                inc1.stored <= 0.03 * full.stored,
                f"{100 * inc1.stored / full.stored:.2f}%",
            ),
            (
                "random-update incremental <= 5% of full",
                inc2.stored <= 0.05 * full.stored,
                f"{100 * inc2.stored / full.stored:.2f}%",
            ),
            (
                "full bytes <= restic",
                full.stored <= restic_full.stored,
                f"{full.stored / MiB:.1f} vs {restic_full.stored / MiB:.1f} MiB",
            ),
            (
                "appended bytes <= restic",
                inc1.stored <= restic1.stored,
                f"{inc1.stored / MiB:.2f} vs {restic1.stored / MiB:.2f} MiB",
            ),
            (
                "updated bytes <= restic",
                inc2.stored <= restic2.stored,
                f"{inc2.stored / MiB:.2f} vs {restic2.stored / MiB:.2f} MiB",
            ),
            (
                "peak RSS of our backup < 300 MiB",
                max(full.peak_rss, inc1.peak_rss, inc2.peak_rss) < 300 * MiB,
                f"{max(full.peak_rss, inc1.peak_rss, inc2.peak_rss) / MiB:.0f} MiB",
            ),
        ]
        self.print_checks(checks)

    all_pass = False

    def print_checks(self, checks: Sequence[tuple[str, bool, str]]) -> None:
        print()
        for name, ok, detail in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
        self.all_pass = all(ok for _, ok, _ in checks)


def alternated(
    repeat: int, run: Callable[[bool, int], float]
) -> tuple[list[float], list[float], tuple[float, float]]:
    """``run(encrypted, round)`` ``repeat`` times each way, alternating which goes first;
    returns the times off, the times on, and the 1-minute load average before and after."""
    off: list[float] = []
    on: list[float] = []
    load_before = os.getloadavg()[0]
    for i in range(repeat):
        for encrypted in (False, True) if i % 2 == 0 else (True, False):
            (on if encrypted else off).append(run(encrypted, i))
    return off, on, (load_before, os.getloadavg()[0])


def print_encryption_report(
    what: str, off: list[float], on: list[float], load: tuple[float, float], detail: str = ""
) -> bool:
    """Medians, ranges, the ratio and the load; whether on <= 1.1x off."""
    m_off, m_on = statistics.median(off), statistics.median(on)
    ratio = m_on / m_off
    print()
    print(f"{what}, encryption at rest off vs on ({len(off)} alternated runs each){detail}")
    print(f"  load average (1 min): {load[0]:.1f} before, {load[1]:.1f} after")
    for name, times in (("off", off), ("on", on)):
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"  {name:<3} median {statistics.median(times):7.2f}s  range {min(times):.2f}-{max(times):.2f}s  ({runs})"
        )
    ok = ratio <= 1.1
    print(f"  [{'PASS' if ok else 'FAIL'}] on / off = {ratio:.3f} (target <= 1.1)")
    return ok


class EncryptionBench(Bench):
    """Our full backup with encryption at rest off and on, alternated (``--encryption``)."""

    def run(self) -> int:
        self.pg.start()
        stored: dict[bool, int] = {}
        try:
            self.generate()

            def one(encrypted: bool, round_: int) -> float:
                store = self.workdir / f"store-{'on' if encrypted else 'off'}"
                shutil.rmtree(store, ignore_errors=True)
                args = {
                    "dsn": self.pg.dsn_for("postgres"),
                    "store": store.as_uri(),
                    "backup_id": "full",
                    "manifest_out": str(self.manifests / "full.json"),
                    "parallelism": self.parallelism,
                    "keys": str(self.workdir / "keys") if encrypted else None,
                }
                out = _run_child("backup", args, self.env)
                stored[encrypted] = dir_bytes(store)
                self.log(f"full, encryption {'on ' if encrypted else 'off'}: {out['seconds']:.2f}s")
                return float(out["seconds"])

            off, on, load = alternated(self.repeat, one)
        finally:
            self.pg.stop()
        detail = (
            f"\n  database 'bench' {self.db_size / MiB:.0f} MiB; stored {stored[False] / MiB:.1f}"
            f" MiB off, {stored[True] / MiB:.1f} MiB on"
        )
        return 0 if print_encryption_report("full backup", off, on, load, detail) else 1


class TablesBench(Bench):
    """Per-table overhead: many small tables in many schemas (a multi-tenant layout)."""

    def __init__(
        self,
        workdir: Path,
        parallelism: int,
        *,
        tables: int,
        schemas: int,
        rows: int,
        changed: int,
        max_locks: int | None,
        repeat: int = 1,
    ) -> None:
        super().__init__(0, workdir, parallelism, repeat)
        self.tables, self.schemas, self.rows, self.changed = tables, schemas, rows, changed
        # Every table is locked by our coordinator and pg_dump; pg_dump's docs ask for a lock
        # table sized for the table count on such databases (slots: this x max_connections).
        locks = max_locks if max_locks is not None else max(64, (4 * tables) // 60 + 64)
        self.pg = LocalPostgres(
            settings={"autovacuum": "off", "max_locks_per_transaction": str(locks)}
        )

    def generate(self) -> None:
        self.psql("CREATE DATABASE bench", db="postgres")
        per_schema = -(-self.tables // self.schemas)
        self.log(f"{self.tables} tables of {self.rows} rows in {self.schemas} schemas")
        made = 0
        for s in range(self.schemas):
            count = min(per_schema, self.tables - made)
            if count <= 0:
                break
            made += count
            self.psql(
                f"""
                CREATE SCHEMA tenant_{s:03d};
                DO $$ BEGIN
                  FOR i IN 1..{count} LOOP
                    EXECUTE format('CREATE TABLE tenant_{s:03d}.%I (
                        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                        name text NOT NULL, amount numeric(12, 2) NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now())', 'table_' || i);
                    EXECUTE format('INSERT INTO tenant_{s:03d}.%I (name, amount)
                        SELECT md5(%L || g) || '' row '' || g, (hashint4({s} * 100000 + %s * 100 + g)
                               & 65535) / 100.0 FROM generate_series(1, {self.rows}) g',
                        'table_' || i, '{s}.' || i || '.', i);
                  END LOOP;
                END $$;
                """
            )
        self.psql("VACUUM ANALYZE")
        self.psql("CHECKPOINT", db="postgres")
        self.db_size = int(self.scalar("SELECT pg_database_size('bench')"))
        self.log(f"database size: {self.db_size / MiB:.0f} MiB")

    def change_a_few_tables(self) -> None:
        """Rows inserted, updated and deleted in ``changed`` tables of the first schemas."""
        statements = []
        for i in range(self.changed):
            table = f"tenant_{i % self.schemas:03d}.table_{1 + i // self.schemas}"
            statements.append(
                f"INSERT INTO {table} (name, amount) VALUES ('new', 1), ('newer', 2);"
                f" UPDATE {table} SET amount = amount + 1 WHERE id = 1;"
                f" DELETE FROM {table} WHERE id = 2;"
            )
        self.psql("\n".join(statements))

    def further_steps(self, full: Result, dump: Result) -> Callable[[], None]:
        self.change_a_few_tables()
        inc = self.ours(f"{self.changed} changed", "inc", "full")
        return lambda: self.report_tables(full, dump, inc)

    def report_tables(self, full: Result, dump: Result, inc: Result) -> None:
        print()
        print(
            f"{self.tables} tables x {self.rows} rows in {self.schemas} schemas:"
            f" database 'bench' {self.db_size / MiB:.0f} MiB on disk"
        )
        print(
            f"{'step':<14} {'tool':<17} {'time':>8} {'vs pg_dump':>10} {'% our full':>10}"
            f" {'stored':>12} {'% our full':>10} {'objects':>8} {'peak RSS':>9}"
        )
        for r in self.results:
            print(
                f"{r.step:<14} {r.tool:<17} {r.seconds:>7.1f}s {r.seconds / dump.seconds:>9.2f}x"
                f" {100 * r.seconds / full.seconds:>9.1f}% {r.stored / MiB:>9.2f} MiB"
                f" {100 * r.stored / full.stored:>9.2f}% {r.objects:>8} {r.peak_rss / MiB:>5.0f} MiB"
            )
        limits = [
            ("full time / pg_dump -Fd -j2's", full.seconds / dump.seconds, 1.0),
            ("incremental time / full's", inc.seconds / full.seconds, 0.5),
            ("incremental bytes / full's", inc.stored / full.stored, 0.05),
        ]
        self.print_checks([(f"{n} <= {lim:g}", r <= lim, f"{r:.3f}") for n, r, lim in limits])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=("pgbench", "tables"), default="pgbench")
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (60 gives >= 1 GB)")
    parser.add_argument("--tables", type=int, default=3000, help="tables (shape tables)")
    parser.add_argument("--schemas", type=int, default=50, help="schemas (shape tables)")
    parser.add_argument("--rows", type=int, default=5, help="rows per table (shape tables)")
    parser.add_argument("--changed", type=int, default=10, help="tables changed (shape tables)")
    parser.add_argument(
        "--max-locks", type=int, default=None, help="server max_locks_per_transaction"
    )
    parser.add_argument("--parallelism", type=int, default=2, help="our table workers")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of each timed step, median reported (default: 3 for shape tables, else 1)",
    )
    parser.add_argument(
        "--encryption",
        action="store_true",
        help="our full backup with encryption at rest off and on, alternated (--repeat, default 5)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child-backup", help=argparse.SUPPRESS)
    parser.add_argument("--child-shell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_backup:
        _child_backup(json.loads(args.child_backup))
        return 0
    if args.child_shell:
        _child_shell(json.loads(args.child_shell))
        return 0
    if args.encryption:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-encryption-"))
        try:
            return EncryptionBench(args.scale, workdir, args.parallelism, args.repeat or 5).run()
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    if args.shape == "pgbench" and shutil.which("restic") is None:
        raise SystemExit("restic not found (Debian: apt-get install -y restic)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-backup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.shape == "tables":
            return TablesBench(
                workdir,
                args.parallelism,
                tables=args.tables,
                schemas=args.schemas,
                rows=args.rows,
                changed=args.changed,
                max_locks=args.max_locks,
                repeat=3 if args.repeat is None else args.repeat,
            ).run()
        return Bench(args.scale, workdir, args.parallelism, args.repeat or 1).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
