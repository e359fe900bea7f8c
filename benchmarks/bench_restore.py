"""Restore benchmark: our DATABASE restore vs ``pg_restore -j2`` from ``pg_dump -Fd -j2``.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_restore --scale 40 --repeat 3   # ~1 GB (the backup benchmark's data)
    python -m benchmarks.bench_restore --scale 2               # quick check
    python -m benchmarks.bench_restore --shape objects         # a small database of many objects

Shape ``pgbench`` (the default), one run on the backup benchmark's data and a throw-away
PostgreSQL (``benchmarks.bench_backup``):

1. our full backup and ``pg_dump -Fd -j2``; checksums of every table of the source;
2. our full restored into a fresh database (``shared/dataplane/restore_plan.py``, the
   restore service's path) vs ``pg_restore -j2`` of the dump into another;
3. 1% of rows appended, then 1% updated at random, an incremental after each; the chain
   (full + 2 incrementals) restored into a fresh database vs ``pg_restore -j2`` of a fresh
   ``pg_dump -Fd -j2``.

Shape ``objects`` (the fixed costs of a restore): one small database of many objects
(``--tables`` tables, default 300, in ``--schemas`` schemas, each with ``--rows`` rows, an
identity key, a secondary index, a foreign key to its schema's first table, a check; a view
and a function per schema). Our DATABASE restore of its full backup against ``pg_restore`` and
``pg_restore -j2`` of a ``pg_dump -Fd`` of it.

Each restore runs in a child process, ``--repeat`` times (default 1 for ``pgbench``, 5 for
``objects``), ours and pg_restore's in turn, and the medians are reported: wall-clock time,
and CPU time (the restoring process and its children, plus every process of the PostgreSQL
server, read from ``/proc``: on a machine shared with other work the wall-clock time follows
the load, the CPU time much less), and the child's peak RSS. Every restored database's tables
are compared with the source at backup time (row count and an order-independent checksum),
then dropped. Targets (wall-clock medians): ``pgbench``: the full <= 0.7x ``pg_restore -j2``,
the chain <= 0.7x ``pg_restore -j2`` and within 1.1x of our full; ``objects``: ours <= 1.5x
the faster ``pg_restore``; peak RSS < 300 MiB.

``--encryption``: one full backup with encryption at rest and one without (the same data), each
restored ``--repeat`` times (default 5) into a fresh database, alternating which goes first in
each round; every restore reads its manifests from its store (sealed for the cluster, or plain)
and is checked against the source. Reported: each way's median and range, the ratio (target:
on <= 1.1x off) and the load average.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_backup import Bench, MiB, _child_shell, _run_child
from tests.infra.postgres import LocalPostgres

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
WIDE = ("events", "documents")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Restored:
    step: str
    tool: str
    seconds: float
    cpu: float
    """CPU seconds: the restoring process and its children, and the server's processes."""
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

    store = ObjectStore(args["store"])
    plan = RestorePlan(
        kind="DATABASE",
        source_database="bench",
        target_database=args["target"],
        job_id=uuid.uuid4(),
    )
    start = time.perf_counter()
    cpu = _own_cpu()
    if args.get("head"):  # read from the store, as the restore service does (sealed or not)
        from managed_backups.shared.dataplane.keys import ClusterKeys, LocalKeyring
        from managed_backups.shared.dataplane.manifest import load_chain, read_manifest
        from managed_backups.shared.dataplane.sealing import sealed_store

        if args.get("keys"):
            ring = LocalKeyring(Path(args["keys"]), label="platform", name="key")
            store = sealed_store(store, ClusterKeys("bench", ring, (ring,)))
        chain = load_chain(store, read_manifest(store, "bench", args["head"], args["head"]))
    else:
        chain = [load_manifest(Path(p).read_bytes()) for p in args["chain"]]
    execute_plan(store, chain, plan, ClusterAccess(args["dsn"]), lambda n: None)
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": elapsed, "cpu": _own_cpu() - cpu, "peak_rss": rss}))


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that ended."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _child_shell_cpu(args: dict[str, Any]) -> None:
    """In a child process: a shell command, timed; prints its time, CPU and peak RSS."""
    import subprocess

    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", args["cmd"]], check=True, env=os.environ)
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": elapsed, "cpu": _own_cpu(), "peak_rss": rss}))


def server_cpu(data_dir: Path) -> float:
    """CPU seconds the server has used: the postmaster, the children it reaped (every ended
    backend), and its live children."""

    def times(pid: int) -> tuple[int, list[int]]:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[1]), [int(x) for x in fields[11:15]]

    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = sum(times(postmaster)[1])
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent, used = times(int(entry))
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster:
                total += used[0] + used[1]
    return total / _TICK


class RestoreBench(Bench):
    def __init__(self, scale: int, workdir: Path, parallelism: int, repeat: int = 1) -> None:
        super().__init__(scale, workdir, parallelism)
        self.restored: list[Restored] = []
        self.passfile = workdir / "pgpass"
        self.restore_repeat = max(1, repeat)

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

    def _measured(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before = server_cpu(self.pg.data_dir)
        out = run()
        out["cpu"] = float(out["cpu"]) + server_cpu(self.pg.data_dir) - before
        return out

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
        out = self._measured(lambda: _run_child_restore(args, self.env))
        result = Restored(
            step,
            "ours",
            out["seconds"],
            out["cpu"],
            out["peak_rss"],
            self.compare(target, expected),
        )
        self.log(
            f"restore {step}: ours {result.seconds:.1f}s ({result.cpu:.1f}s CPU), {result.checks}"
        )
        return result

    def dump(self) -> Path:
        dump = self.workdir / "pg_dump_dir"
        shutil.rmtree(dump, ignore_errors=True)
        dump_cmd = f"{self.pg.bindir / 'pg_dump'} -Fd -j2 -f {dump} -d '{self.pg.dsn_for('bench')}'"
        _run_child("shell", {"cmd": dump_cmd}, self.env)
        return dump

    def pg_restore(
        self, step: str, dump: Path, target: str, expected: dict[str, str], jobs: int = 2
    ) -> Restored:
        self.psql(f'CREATE DATABASE "{target}"', db="postgres")
        option = f"-j{jobs} " if jobs > 1 else ""
        cmd = f"{self.pg.bindir / 'pg_restore'} {option}-d '{self.pg.dsn_for(target)}' {dump}"
        out = self._measured(lambda: _run_child_shell_cpu(cmd, self.env))
        tool = f"pg_restore -j{jobs}" if jobs > 1 else "pg_restore"
        result = Restored(
            step, tool, out["seconds"], out["cpu"], out["peak_rss"], self.compare(target, expected)
        )
        self.log(
            f"restore {step}: {tool} {result.seconds:.1f}s ({result.cpu:.1f}s CPU), {result.checks}"
        )
        return result

    def drop(self, target: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{target}"', db="postgres")

    def restores(
        self, step: str, tools: dict[str, Callable[[str], Restored]]
    ) -> dict[str, Restored]:
        """Each tool's restore ``restore_repeat`` times, in turn; the medians (peak RSS: the
        largest; checks: the first that did not match, if any)."""
        runs: dict[str, list[Restored]] = {tool: [] for tool in tools}
        for i in range(self.restore_repeat):
            for tool, restore in tools.items():
                target = f"{step}_{tool.replace(' ', '_').replace('-', '')}_{i}"
                runs[tool].append(restore(target))
                self.drop(target)
        out = {}
        for tool, results in runs.items():
            bad = [r.checks for r in results if r.checks != "all tables match"]
            out[tool] = Restored(
                step,
                results[0].tool,
                statistics.median(r.seconds for r in results),
                statistics.median(r.cpu for r in results),
                max(r.peak_rss for r in results),
                bad[0] if bad else "all tables match",
            )
            self.restored.append(out[tool])
        return out

    def run(self) -> int:
        self.pg.start()
        try:
            self.generate()
            self.ours("full", "full", None)
            at_full = self.checksums("bench")
            dump = self.dump()
            full = self.restores(
                "full",
                {
                    "ours": lambda t: self.ours_restore("full", ["full"], t, at_full),
                    "pg_restore -j2": lambda t: self.pg_restore("full", dump, t, at_full),
                },
            )
            self.append_one_percent()
            self.ours("+1% appended", "inc1", "full")
            self.update_one_percent()
            self.ours("1% updated", "inc2", "inc1")
            at_inc2 = self.checksums("bench")
            dump = self.dump()
            chain_ids = ["full", "inc1", "inc2"]
            chain = self.restores(
                "chain",
                {
                    "ours": lambda t: self.ours_restore("chain", chain_ids, t, at_inc2),
                    "pg_restore -j2": lambda t: self.pg_restore("chain", dump, t, at_inc2),
                },
            )
        finally:
            self.pg.stop()
        print()
        print(
            f"scale {self.scale}: database 'bench' {self.db_size / MiB:.0f} MiB on disk;"
            f" medians of {self.restore_repeat} run(s); load average at the end"
            f" {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'step':<8} {'tool':<16} {'time':>8} {'vs pg_restore':>13} {'CPU':>8}"
            f" {'vs pg_restore':>13} {'peak RSS':>9}  checksums"
        )
        for r in self.restored:
            base = (full if r.step == "full" else chain)["pg_restore -j2"]
            print(
                f"{r.step:<8} {r.tool:<16} {r.seconds:>7.1f}s {r.seconds / base.seconds:>12.2f}x"
                f" {r.cpu:>7.1f}s {r.cpu / base.cpu:>12.2f}x {r.peak_rss / MiB:>5.0f} MiB"
                f"  {r.checks}"
            )
        ours_full, ours_chain = full["ours"], chain["ours"]
        print(
            f"chain / full (ours): {ours_chain.seconds / ours_full.seconds:.2f}x time,"
            f" {ours_chain.cpu / ours_full.cpu:.2f}x CPU"
        )
        checks = [
            (
                "full restore <= 0.7x pg_restore -j2",
                ours_full.seconds <= 0.7 * full["pg_restore -j2"].seconds,
            ),
            (
                "chain restore <= 0.7x pg_restore -j2",
                ours_chain.seconds <= 0.7 * chain["pg_restore -j2"].seconds,
            ),
            ("chain restore <= 1.1x our full's", ours_chain.seconds <= 1.1 * ours_full.seconds),
            ("peak RSS < 300 MiB", max(ours_full.peak_rss, ours_chain.peak_rss) < 300 * MiB),
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
        super().__init__(0, workdir, parallelism, repeat)
        self.tables, self.schemas, self.rows = tables, schemas, rows
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
            dump = self.dump()
            median = self.restores(
                "full",
                {
                    "ours": lambda t: self.ours_restore("full", ["full"], t, expected),
                    "pg_restore": lambda t: self.pg_restore("full", dump, t, expected, jobs=1),
                    "pg_restore -j2": lambda t: self.pg_restore("full", dump, t, expected),
                },
            )
        finally:
            self.pg.stop()
        best = min(median["pg_restore"].seconds, median["pg_restore -j2"].seconds)
        best_cpu = min(median["pg_restore"].cpu, median["pg_restore -j2"].cpu)
        print()
        print(
            f"{self.tables} tables x {self.rows} rows in {self.schemas} schemas:"
            f" database 'bench' {self.db_size / MiB:.1f} MiB on disk, medians of"
            f" {self.restore_repeat} runs; load average at the end {os.getloadavg()[0]:.1f}"
        )
        print(f"{'tool':<16} {'time':>8} {'vs fastest':>10} {'CPU':>7} {'vs least':>9}  checksums")
        for tool, r in median.items():
            print(
                f"{tool:<16} {r.seconds:>7.2f}s {r.seconds / best:>9.2f}x {r.cpu:>6.2f}s"
                f" {r.cpu / best_cpu:>8.2f}x  {r.checks}"
            )
        ours = median["ours"]
        ok = ours.seconds <= 1.5 * best and all(
            r.checks == "all tables match" for r in median.values()
        )
        print()
        print(f"  [{'PASS' if ok else 'FAIL'}] ours <= 1.5x the faster pg_restore, data matches")
        return 0 if ok else 1


class EncryptedRestoreBench(RestoreBench):
    """Our full restore with encryption at rest off and on, alternated (``--encryption``)."""

    def __init__(self, scale: int, workdir: Path, parallelism: int, repeat: int) -> None:
        super().__init__(scale, workdir, parallelism)
        self.repeat = repeat

    def run(self) -> int:
        from benchmarks.bench_backup import alternated, print_encryption_report

        self.pg.start()
        self.passfile.write_text(f"127.0.0.1:{self.pg.port}:*:postgres:{self.pg.password}\n")
        self.passfile.chmod(0o600)
        checks: list[str] = []
        try:
            self.generate()
            for encrypted in (False, True):
                args = {
                    "dsn": self.pg.dsn_for("postgres"),
                    "store": (self.workdir / f"store-{'on' if encrypted else 'off'}").as_uri(),
                    "backup_id": "full",
                    "manifest_out": str(self.manifests / f"full-{encrypted}.json"),
                    "parallelism": self.parallelism,
                    "keys": str(self.workdir / "keys") if encrypted else None,
                }
                _run_child("backup", args, self.env)
            expected = self.checksums("bench")

            def one(encrypted: bool, round_: int) -> float:
                target = f"restored_{'on' if encrypted else 'off'}_{round_}"
                args = {
                    "head": "full",
                    "store": (self.workdir / f"store-{'on' if encrypted else 'off'}").as_uri(),
                    "keys": str(self.workdir / "keys") if encrypted else None,
                    "target": target,
                    "dsn": f"{self.pg.dsn_for('postgres')} passfile={self.passfile}",
                }
                out = _run_child_restore(args, self.env)
                checks.append(self.compare(target, expected))
                self.psql(f'DROP DATABASE "{target}"', db="postgres")
                self.log(
                    f"restore, encryption {'on ' if encrypted else 'off'}: {out['seconds']:.2f}s,"
                    f" {checks[-1]}"
                )
                return float(out["seconds"])

            off, on, load = alternated(self.repeat, one)
        finally:
            self.pg.stop()
        detail = f"\n  database 'bench' {self.db_size / MiB:.0f} MiB"
        ok = print_encryption_report("full restore", off, on, load, detail)
        matched = all(c == "all tables match" for c in checks)
        print(f"  [{'PASS' if matched else 'FAIL'}] every restore matches the source")
        return 0 if ok and matched else 1


def _run_child_restore(args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return _run_module_child("--child-restore", args, env)


def _run_child_shell_cpu(cmd: str, env: dict[str, str]) -> dict[str, Any]:
    return _run_module_child("--child-shell-cpu", {"cmd": cmd}, env)


def _run_module_child(flag: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_restore", flag, json.dumps(args)],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "PGPASSWORD"}
        if flag == "--child-restore"
        else env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"child {flag} failed:\n{out.stdout}\n{out.stderr}")
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
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="restores of each tool, medians reported (default: 1 for pgbench, 5 for objects "
        "and for each way of --encryption)",
    )
    parser.add_argument("--parallelism", type=int, default=2, help="our backup's table workers")
    parser.add_argument(
        "--encryption",
        action="store_true",
        help="our full restore with encryption at rest off and on, alternated",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child-restore", help=argparse.SUPPRESS)
    parser.add_argument("--child-shell", help=argparse.SUPPRESS)
    parser.add_argument("--child-shell-cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_restore:
        _child_restore(json.loads(args.child_restore))
        return 0
    if args.child_shell:
        _child_shell(json.loads(args.child_shell))
        return 0
    if args.child_shell_cpu:
        _child_shell_cpu(json.loads(args.child_shell_cpu))
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
                repeat=5 if args.repeat is None else args.repeat,
            ).run()
        if args.encryption:
            repeat = 5 if args.repeat is None else args.repeat
            return EncryptedRestoreBench(args.scale, workdir, args.parallelism, repeat).run()
        return RestoreBench(args.scale, workdir, args.parallelism, args.repeat or 1).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
