"""``managed-backups restore start``: start a restore job over the HTTP API and, with
``--follow``, show its progress (phase, percent, bytes, rate, ETA) until it ends.

Exit codes: 0 the job was recorded (or, with ``--follow``, SUCCEEDED); 1 the request was refused
or the job FAILED (the reason is printed on stderr); 2 a usage or connection problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from managed_backups.shared.settings import Settings, default_data_dir

POLL_SECONDS = 0.5


def add_parser(sub: Any) -> None:
    restore = sub.add_parser("restore", help="restore jobs")
    restore_sub = restore.add_subparsers(dest="restore_command", required=True)
    start = restore_sub.add_parser(
        "start", help="restore a database or tables of a backup into a cluster"
    )
    start.add_argument("destination", help="the destination cluster id")
    start.add_argument("--type", required=True, choices=("CLUSTER", "DATABASE", "TABLE"))
    start.add_argument("--database", help="the database of the backup to restore (or from)")
    start.add_argument("--schema", help="schema of the tables (default public)")
    start.add_argument("--table", action="append", default=[], help="a table (repeatable)")
    start.add_argument("--backup-id", help="default: the latest restorable backup")
    start.add_argument("--source", help="source cluster id (default: the destination)")
    start.add_argument("--new-db-name")
    start.add_argument("--into-db")
    for option in (
        "skip-missing-foreign-keys",
        "skip-missing-sequences",
        "skip-missing-views",
        "skip-localities-check",
    ):
        start.add_argument(f"--{option}", action="store_true")
    start.add_argument("--follow", action="store_true", help="show progress until the job ends")
    start.add_argument("--api", help="API base URL (default: from the data directory's settings)")
    start.add_argument("--data-dir")
    start.add_argument("--credential", help="API key (default: the data directory's admin key)")
    start.set_defaults(func=cmd_restore_start)


def _objects(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.database is None:
        return []
    if not args.table:
        return [{"database": args.database}]
    schema = {"schema": args.schema} if args.schema else {}
    return [{"database": args.database, **schema, "table": t} for t in args.table]


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "skip_missing_foreign_keys": args.skip_missing_foreign_keys,
        "skip_missing_sequences": args.skip_missing_sequences,
        "skip_missing_views": args.skip_missing_views,
        "skip_localities_check": args.skip_localities_check,
    }
    if args.new_db_name:
        opts["new_db_name"] = args.new_db_name
    if args.into_db:
        opts["into_db"] = args.into_db
    body: dict[str, Any] = {"type": args.type, "objects": _objects(args), "restore_opts": opts}
    if args.backup_id:
        body["backup_id"] = args.backup_id
    if args.source:
        body["source_cluster_id"] = args.source
    return body


def _credential(args: argparse.Namespace, data_dir: Path) -> str | None:
    key_file = data_dir / "admin-api-key"
    from_file = key_file.read_text().strip() if key_file.exists() else None
    return args.credential or os.environ.get("MANAGED_BACKUPS_CREDENTIAL") or from_file


def cmd_restore_start(args: argparse.Namespace, client: httpx.Client | None = None) -> int:
    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
    credential = _credential(args, data_dir)
    if not credential:
        print("no credential: pass --credential or --data-dir of `up`", file=sys.stderr)
        return 2
    if client is None:
        settings = Settings(data_dir=data_dir)
        base = args.api or f"http://{settings.api_host}:{settings.api_port}"
        client = httpx.Client(base_url=base, timeout=60)
    client.headers["Authorization"] = f"Bearer {credential}"
    try:
        answer = client.post(
            f"/api/v1/clusters/{args.destination}/restores", json=request_body(args)
        )
    except httpx.HTTPError as exc:
        print(f"the API is not reachable: {exc}", file=sys.stderr)
        return 2
    if answer.status_code != 200:
        print(f"refused ({answer.status_code}): {_message(answer)}", file=sys.stderr)
        return 1
    job: dict[str, Any] = answer.json()
    if not args.follow:
        print(json.dumps(job, indent=2))
        return 0
    return follow(client, args.destination, job["id"], sys.stdout)


def _message(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message"))
    except ValueError:
        return answer.text


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def progress_line(job: dict[str, Any], started: float, now: float) -> str:
    """``Running   [#########-----------]  45.0%  12.3 MiB / 27.1 MiB  5.1 MiB/s  ETA 3s``"""
    fraction = float(job["completion_percent"])
    done, total = int(job["bytes_done"]), int(job["bytes_total"])
    elapsed = max(now - started, 1e-6)
    rate = done / elapsed
    eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and total > done else "ETA -"
    bar = "#" * int(fraction * 20)
    return (
        f"{job['phase']:<10} [{bar:<20}] {fraction * 100:5.1f}%  {_mib(done)} / {_mib(total)}  "
        f"{_mib(rate)}/s  {eta}"
    )


def follow(
    client: httpx.Client, destination: str, restore_id: str, out: TextIO, poll: float = POLL_SECONDS
) -> int:
    """Poll the job until it ends; 0 on SUCCESS, 1 on FAILED (reason on stderr)."""
    started = time.monotonic()
    last = ""
    while True:
        answer = client.get(f"/api/v1/clusters/{destination}/restores/{restore_id}")
        if answer.status_code != 200:
            print(
                f"cannot read the job ({answer.status_code}): {_message(answer)}", file=sys.stderr
            )
            return 2
        job = answer.json()
        line = progress_line(job, started, time.monotonic())
        if line != last:
            out.write(("\r" if out.isatty() else "") + line + ("" if out.isatty() else "\n"))
            out.flush()
            last = line
        if job["status"] == "SUCCESS":
            out.write(f"\nrestored: {', '.join(job.get('restored') or [])}\n")
            return 0
        if job["status"] == "FAILED":
            out.write("\n")
            print(
                f"restore {restore_id} failed: {job['client_error_code']}: "
                f"{job['client_error_message']} (step: {job['failed_step']}); destination "
                f"{job['destination_state']}",
                file=sys.stderr,
            )
            return 1
        time.sleep(poll)
