"""Restore benchmark: our DATABASE restore vs ``pg_restore -j2`` from ``pg_dump -Fd -j2``.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_restore --scale 60     # >= 1 GB (the backup benchmark's data)
    python -m benchmarks.bench_restore --scale 2      # quick check
    python -m benchmarks.bench_restore --shape objects   # a small database of many objects

One run, on the backup benchmark's data and throw-away PostgreSQL (``benchmarks.bench_backup``):

1. our full backup and ``pg_dump -Fd -j2``; checksums of every table of the source;
2. our full restored into a fresh database (``shared/dataplane/restore_plan.py``, the
   restore service's path) vs ``pg_restore -j2`` of the dump into another;
3. 1% of rows appended, then 1% updated at random, an incremental after each; the chain
   (full + 2 incrementals) restored into a fresh database vs ``pg_restore -j2`` of a fresh
   ``pg_dump -Fd -j2``.

Each restore runs in a child process: wall-clock time and the child's peak RSS. Every restored
database's tables are compared with the source at backup time (row count and an
order-independent checksum). Targets: full restore <= 0.7x ``pg_restore -j2``; the chain
within 1.1x of the full's restore and <= 0.7x ``pg_restore -j2``; peak RSS < 300 MiB.

Shape ``objects`` (the fixed costs of a restore): one small database of many objects
(``--tables`` tables, default 300, in ``--schemas`` schemas, each with ``--rows`` rows, an
identity key, a secondary index, a foreign key to its schema's first table, a check; a view
and a function per schema: a few MB). Our DATABASE restore of its full backup against
``pg_restore`` and ``pg_restore -j2`` of a ``pg_dump -Fd`` of it, each run ``--repeat`` times
(default 5, the median reported: these take about a second and vary on a busy machine), the
restored tables compared with the source. Target: ours <= 1.5x the faster ``pg_restore``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_backup import Bench, MiB, _child_shell, _run_child
from tests.infra.postgres import LocalPostgres

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
WIDE = ("events", "documents")


@dataclass
class Restored:
    step: str
    tool: str
    seconds: float
    peak_rss: int
    checks: str


def _child_restore(args: dict[str, Any]) -> None:
    """In a child process: restore database ``bench`` of a chain into ``target``; print JSON."""
    from managed_backups.shared.dataplane.manifest import load_manifest
    from managed_backups.shared.dataplane.objectstore import ObjectStore
    from managed_backups.shared.dataplane.restore_plan import (
        ClusterAccess,
        RestorePlan,
        execute_plan,
    )

    chain = [load_manifest(Path(p).read_bytes()) for p in args["chain"]]
    plan = RestorePlan(
        kind="DATABASE",
        source_database="bench",
        target_database=args["target"],
        job_id=uuid.uuid4(),
    )
    start = time.perf_counter()
    execute_plan(
        ObjectStore(args["store"]), chain, plan, ClusterAccess(args["dsn"]), lambda n: None
    )
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": elapsed, "peak_rss": rss}))


class RestoreBench(Bench):
    def __init__(self, scale: int, workdir: Path, parallelism: int) -> None:
        super().__init__(scale, workdir, parallelism)
        self.restored: list[Restored] = []
        self.passfile = workdir / "pgpass"

    def checksums(self, db: str) -> dict[str, str]:
        """Per table: rows and a sum of row hashes (order-independent, streamed by the server)."""
        out = {}
        for table in (*TABLES, *WIDE):
            out[table] = self.scalar(
                f"SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) "
                f"FROM {table} t",
                db,
            )
        return out

    def compare(self, db: str, expected: dict[str, str]) -> str:
        got = self.checksums(db)
        bad = [t for t in expected if got[t] != expected[t]]
        return "all tables match" if not bad else f"MISMATCH: {', '.join(bad)}"

    def ours_restore(
        self, step: str, chain: list[str], target: str, expected: dict[str, str]
    ) -> Restored:
        self.passfile.write_text(f"127.0.0.1:{self.pg.port}:*:postgres:{self.pg.password}\n")
        self.passfile.chmod(0o600)
        args = {
            "chain": [str(self.manifests / f"{b}.json") for b in chain],
            "store": self.store.as_uri(),
            "target": target,
            "dsn": f"{self.pg.dsn_for('postgres')} passfile={self.passfile}",
        }
        out = _run_child_restore(args, self.env)
        result = Restored(
            step, "ours", out["seconds"], out["peak_rss"], self.compare(target, expected)
        )
        self.restored.append(result)
        self.log(f"restore {step}: ours {result.seconds:.1f}s, {result.checks}")
        return result

    def pg_restore(self, step: str, target: str, expected: dict[str, str]) -> Restored:
        dump = self.workdir / "pg_dump_dir"
        shutil.rmtree(dump, ignore_errors=True)
        dump_cmd = f"{self.pg.bindir / 'pg_dump'} -Fd -j2 -f {dump} -d '{self.pg.dsn_for('bench')}'"
        _run_child("shell", {"cmd": dump_cmd}, self.env)
        self.psql(f'CREATE DATABASE "{target}"', db="postgres")
        cmd = f"{self.pg.bindir / 'pg_restore'} -j2 -d '{self.pg.dsn_for(target)}' {dump}"
        out = _run_child("shell", {"cmd": cmd}, self.env)
        result = Restored(
            step, "pg_restore -j2", out["seconds"], out["peak_rss"], self.compare(target, expected)
        )
        self.restored.append(result)
        self.log(f"restore {step}: pg_restore -j2 {result.seconds:.1f}s, {result.checks}")
        return result

    def run(self) -> int:
        self.pg.start()
        try:
            self.generate()
            self.ours("full", "full", None)
            at_full = self.checksums("bench")
            full = self.ours_restore("full", ["full"], "ours_full", at_full)
            dumped_full = self.pg_restore("full", "pg_full", at_full)
            self.append_one_percent()
            self.ours("+1% appended", "inc1", "full")
            self.update_one_percent()
            self.ours("1% updated", "inc2", "inc1")
            at_inc2 = self.checksums("bench")
            chain = self.ours_restore("chain", ["full", "inc1", "inc2"], "ours_chain", at_inc2)
            dumped_chain = self.pg_restore("chain", "pg_chain", at_inc2)
        finally:
            self.pg.stop()
        print()
        print(f"scale {self.scale}: database 'bench' {self.db_size / MiB:.0f} MiB on disk")
        print(
            f"{'step':<8} {'tool':<16} {'time':>8} {'vs pg_restore':>13} {'peak RSS':>9}  checksums"
        )
        for r in self.restored:
            base = dumped_full if r.step == "full" else dumped_chain
            print(
                f"{r.step:<8} {r.tool:<16} {r.seconds:>7.1f}s {r.seconds / base.seconds:>12.2f}x"
                f" {r.peak_rss / MiB:>5.0f} MiB  {r.checks}"
            )
        print(
            f"chain / full (ours): {chain.seconds / full.seconds:.2f}x; machine load average"
            f" during the run: {os.getloadavg()[0]:.1f} (1 min, at the end)"
        )
        checks = [
            ("full restore <= 0.7x pg_restore -j2", full.seconds <= 0.7 * dumped_full.seconds),
            ("chain restore <= 0.7x pg_restore -j2", chain.seconds <= 0.7 * dumped_chain.seconds),
            ("chain restore <= 1.1x our full's", chain.seconds <= 1.1 * full.seconds),
            ("peak RSS < 300 MiB", max(full.peak_rss, chain.peak_rss) < 300 * MiB),
            ("restored data matches", all(r.checks == "all tables match" for r in self.restored)),
        ]
        print()
        for name, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
        return 0 if all(ok for _, ok in checks) else 1


class ObjectsRestoreBench(RestoreBench):
    """Shape ``objects``: the fixed costs of restoring a small database of many objects."""

    def __init__(
        self, workdir: Path, parallelism: int, *, tables: int, schemas: int, rows: int, repeat: int
    ) -> None:
        super().__init__(0, workdir, parallelism)
        self.tables, self.schemas, self.rows, self.repeat = tables, schemas, rows, max(1, repeat)
        self.pg = LocalPostgres(settings={"autovacuum": "off"})

    def generate(self) -> None:
        self.psql("CREATE DATABASE bench", db="postgres")
        per_schema = -(-self.tables // self.schemas)
        self.log(f"{self.tables} tables of {self.rows} rows in {self.schemas} schemas")
        for s in range(self.schemas):
            self.psql(
                f"""
                CREATE SCHEMA app_{s:02d};
                CREATE TABLE app_{s:02d}.owners (id int PRIMARY KEY, name text NOT NULL);
                INSERT INTO app_{s:02d}.owners SELECT g, 'owner ' || g FROM generate_series(1, 50) g;
                CREATE FUNCTION app_{s:02d}.label(n int) RETURNS text LANGUAGE sql IMMUTABLE
                    AS $$ SELECT 'item ' || n $$;
                DO $$ BEGIN
                  FOR i IN 1..{per_schema - 1} LOOP
                    EXECUTE format('CREATE TABLE app_{s:02d}.%I (
                        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                        owner_id int NOT NULL REFERENCES app_{s:02d}.owners,
                        name text NOT NULL, amount numeric(12, 2) NOT NULL CHECK (amount >= 0),
                        created_at timestamptz NOT NULL DEFAULT now())', 'items_' || i);
                    EXECUTE format('CREATE INDEX ON app_{s:02d}.%I (owner_id, created_at)',
                        'items_' || i);
                    EXECUTE format('INSERT INTO app_{s:02d}.%I (owner_id, name, amount)
                        SELECT 1 + g %% 50, app_{s:02d}.label(g) || md5(g::text),
                               (hashint4(g + %s) & 65535) / 100.0
                        FROM generate_series(1, {self.rows}) g', 'items_' || i, i);
                  END LOOP;
                END $$;
                CREATE VIEW app_{s:02d}.big_items AS
                    SELECT * FROM app_{s:02d}.items_1 WHERE amount > 100;
                """
            )
        self.psql("VACUUM ANALYZE")
        self.psql("CHECKPOINT", db="postgres")
        self.db_size = int(self.scalar("SELECT pg_database_size('bench')"))
        self.log(f"database size: {self.db_size / MiB:.1f} MiB")

    def checksums(self, db: str) -> dict[str, str]:
        """Per table: rows and a sum of row hashes, all tables in one query."""
        out = self.scalar(
            "SELECT string_agg(format('%s=%s', r, (xpath('/row/c/text()',"
            " query_to_xml(format('SELECT count(*) || '':'' || coalesce(sum(hashtext(t::text)"
            "::bigint), 0) AS c FROM %s t', r), false, true, '')))[1]), ',' ORDER BY r)"
            " FROM (SELECT oid::regclass::text AS r FROM pg_class WHERE relkind = 'r'"
            " AND relnamespace::regnamespace::text LIKE 'app_%') x",
            db,
        )
        return dict(item.split("=", 1) for item in out.split(","))

    def run(self) -> int:
        self.pg.start()
        try:
            self.generate()
            self.ours("full", "full", None)
            expected = self.checksums("bench")
            dump = self.workdir / "pg_dump_dir"
            dump_cmd = (
                f"{self.pg.bindir / 'pg_dump'} -Fd -j2 -f {dump} -d '{self.pg.dsn_for('bench')}'"
            )
            _run_child("shell", {"cmd": dump_cmd}, self.env)
            times: dict[str, list[float]] = {"ours": [], "pg_restore": [], "pg_restore -j2": []}
            checks: dict[str, str] = {}
            for run in range(self.repeat):
                for tool in times:
                    target = f"{tool.replace(' ', '_').replace('-', '')}_{run}"
                    if tool == "ours":
                        result = self.ours_restore("full", ["full"], target, expected)
                        seconds = result.seconds
                    else:
                        self.psql(f'CREATE DATABASE "{target}"', db="postgres")
                        jobs = "-j2 " if tool.endswith("-j2") else ""
                        cmd = (
                            f"{self.pg.bindir / 'pg_restore'} {jobs}-d"
                            f" '{self.pg.dsn_for(target)}' {dump}"
                        )
                        seconds = _run_child("shell", {"cmd": cmd}, self.env)["seconds"]
                        checks[tool] = self.compare(target, expected)
                    times[tool].append(seconds)
                    self.psql(f'DROP DATABASE "{target}"', db="postgres")
                self.log(
                    f"run {run + 1}: " + ", ".join(f"{t} {v[-1]:.2f}s" for t, v in times.items())
                )
            checks["ours"] = self.restored[-1].checks
        finally:
            self.pg.stop()
        median = {tool: statistics.median(v) for tool, v in times.items()}
        best = min(median["pg_restore"], median["pg_restore -j2"])
        print()
        print(
            f"{self.tables} tables x {self.rows} rows in {self.schemas} schemas:"
            f" database 'bench' {self.db_size / MiB:.1f} MiB on disk,"
            f" medians of {self.repeat} runs"
        )
        print(f"{'tool':<16} {'time':>8} {'vs fastest pg_restore':>22}  checksums")
        for tool, seconds in median.items():
            print(f"{tool:<16} {seconds:>7.2f}s {seconds / best:>21.2f}x  {checks[tool]}")
        ok = median["ours"] <= 1.5 * best and all(c == "all tables match" for c in checks.values())
        print()
        print(f"  [{'PASS' if ok else 'FAIL'}] ours <= 1.5x the faster pg_restore, data matches")
        return 0 if ok else 1


def _run_child_restore(args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_restore", "--child-restore", json.dumps(args)],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "PGPASSWORD"},
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"restore child failed:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=("pgbench", "objects"), default="pgbench")
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (60 gives >= 1 GB)")
    parser.add_argument("--tables", type=int, default=300, help="tables (shape objects)")
    parser.add_argument("--schemas", type=int, default=10, help="schemas (shape objects)")
    parser.add_argument("--rows", type=int, default=100, help="rows per table (shape objects)")
    parser.add_argument("--repeat", type=int, default=5, help="runs (shape objects), median")
    parser.add_argument("--parallelism", type=int, default=2, help="our backup's table workers")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child-restore", help=argparse.SUPPRESS)
    parser.add_argument("--child-shell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_restore:
        _child_restore(json.loads(args.child_restore))
        return 0
    if args.child_shell:
        _child_shell(json.loads(args.child_shell))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-restore-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.shape == "objects":
            return ObjectsRestoreBench(
                workdir,
                args.parallelism,
                tables=args.tables,
                schemas=args.schemas,
                rows=args.rows,
                repeat=args.repeat,
            ).run()
        return RestoreBench(args.scale, workdir, args.parallelism).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
