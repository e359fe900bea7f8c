"""Restore benchmark: our DATABASE restore vs ``pg_restore -j2`` from ``pg_dump -Fd -j2``.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_restore --scale 60     # >= 1 GB (the backup benchmark's data)
    python -m benchmarks.bench_restore --scale 2      # quick check

One run, on the backup benchmark's data and throw-away PostgreSQL (``benchmarks.bench_backup``):

1. our full backup and ``pg_dump -Fd -j2``; checksums of every table of the source;
2. our full restored into a fresh database (``shared/dataplane/restore_plan.py``, the
   restore service's path) vs ``pg_restore -j2`` of the dump into another;
3. 1% of rows appended, then 1% updated at random, an incremental after each; the chain
   (full + 2 incrementals) restored into a fresh database vs ``pg_restore -j2`` of a fresh
   ``pg_dump -Fd -j2``.

Each restore runs in a child process: wall-clock time and the child's peak RSS. Every restored
database's tables are compared with the source at backup time (row count and an
order-independent checksum). Targets: full restore <= 1.0x ``pg_restore -j2``; chain <= 1.2x;
peak RSS < 300 MiB.

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
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_backup import Bench, MiB, _child_shell, _run_child

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

    store = ObjectStore(args["store"])
    plan = RestorePlan(
        kind="DATABASE",
        source_database="bench",
        target_database=args["target"],
        job_id=uuid.uuid4(),
    )
    start = time.perf_counter()
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
        checks = [
            ("full restore <= 1.0x pg_restore -j2", full.seconds <= dumped_full.seconds),
            ("chain restore <= 1.2x pg_restore -j2", chain.seconds <= 1.2 * dumped_chain.seconds),
            ("peak RSS < 300 MiB", max(full.peak_rss, chain.peak_rss) < 300 * MiB),
            ("restored data matches", all(r.checks == "all tables match" for r in self.restored)),
        ]
        print()
        for name, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
        return 0 if all(ok for _, ok in checks) else 1


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
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (60 gives >= 1 GB)")
    parser.add_argument("--parallelism", type=int, default=2, help="our backup's table workers")
    parser.add_argument(
        "--encryption",
        action="store_true",
        help="our full restore with encryption at rest off and on, alternated",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs each way (--encryption)")
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
        if args.encryption:
            return EncryptedRestoreBench(args.scale, workdir, args.parallelism, args.repeat).run()
        return RestoreBench(args.scale, workdir, args.parallelism).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
