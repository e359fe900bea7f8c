"""Retention benchmark: one retention pass over N clusters with D simulated days of history.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_retention                                 # 10,000 x 30, steady
    python -m benchmarks.bench_retention --clusters 200                  # a quick run
    python -m benchmarks.bench_retention --mode catch-up --clusters 200  # every old chain at once
    python -m benchmarks.bench_retention --s3 minio --minio ~/go/bin/minio

The history: N clusters each with a full backup per day for D days (a 2-day retention), their
events recorded in bulk in the event store (``--store sqlite`` in a temporary file, or a
``postgresql://`` URL) and two objects per backup (a manifest and a chunk, at the chain's real
keys) written through the data plane's store API to an S3-compatible server.

Two shapes of pass, timed from the call to :meth:`Retention.enforce` over every cluster:

- ``steady`` (default): the pass as it runs every day. The chains older than three days were
  expired and deleted by earlier passes (their events are in the store, their objects gone); one
  chain per cluster has just reached its retention. The pass finds those clusters through the
  retention index, records the expiries, reads the holds, lists the chains, deletes the objects in
  batches of 1,000 and records the deletions.
- ``catch-up``: nothing was ever deleted (a first pass over an existing history, or after the
  service was down for weeks): D-2 chains per cluster go at once.

The S3-compatible server: ``moto`` (the tests' server, a Python process; its prefix listing
scans the whole bucket, so a pass against it slows down with the bucket's size, which a real
store does not), or ``minio`` (``--minio PATH`` to a MinIO server binary, e.g. built with
``go install github.com/minio/minio@latest``; its listing follows the prefix's directories),
or ``$S3_ENDPOINT_URL`` with ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY``.

Scheduler lateness: a second process runs the real :class:`Scheduler` (its decisions saved to the
same event store; its sends go nowhere, so the time measured is the decision's) over
``--lateness-clusters`` clusters with a 5-minute frequency, their slots spread evenly, for the
whole run (each cluster's first slot: with no executor, a scheduled backup never ends, and
the scheduler keeps one in flight per cluster). Its lateness (decision time minus slot) is compared between the pass and the same
length of time before it.

Prints the pass's wall time, chains and objects deleted, deletes per second, the lateness
before and during the pass, and the time to build the history. The target: a pass over 10,000
clusters with 30 days of history in under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from managed_backups.contracts.commands import TakeBackup
from managed_backups.services.retention.retention import Retention
from managed_backups.services.scheduler.scheduler import Scheduler
from managed_backups.shared.clock import WallClock
from managed_backups.shared.command_tokens import normalized
from managed_backups.shared.dataplane.manifest import chunk_key, manifest_key
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.backup_lifecycle import backup_expires_at
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from tests.factories import new_backup, new_cluster
from tests.infra.s3 import (
    ACCESS_KEY_ID,
    DEFAULT_REGION,
    SECRET_ACCESS_KEY,
    create_bucket,
    s3_store_url,
)
from tests.infra.testing import s3_for_tests

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RETENTION_DAYS = 2
KEPT_DAYS = 3
"""Chains a cluster keeps in the steady state: the newest and the one within its retention,
plus the one the pass deletes."""
EVENTS_PER_SAVE = 20
"""Clusters whose history is saved in one transaction while building."""
MINIO_USER, MINIO_PASSWORD = "benchadmin", "bench-secret-key"


# ----------------------------------------------------------------------------- object stores
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def minio_endpoint(binary: str, data: Path) -> Iterator[tuple[str, str, str]]:
    port = _free_port()
    env = {**os.environ, "MINIO_ROOT_USER": MINIO_USER, "MINIO_ROOT_PASSWORD": MINIO_PASSWORD}
    log = (data / "minio.log").open("wb")
    proc = subprocess.Popen(
        [binary, "server", str(data / "minio"), "--address", f"127.0.0.1:{port}", "--quiet"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MinIO did not start; see {data / 'minio.log'}")
            time.sleep(0.2)
        yield endpoint, MINIO_USER, MINIO_PASSWORD
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@contextlib.contextmanager
def object_store_url(kind: str, minio: str, tmp: Path) -> Iterator[str]:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        env = os.environ.get("S3_ENDPOINT_URL", "").strip()
        if kind == "minio" and not env:
            endpoint, key, secret = stack.enter_context(minio_endpoint(minio, tmp))
        else:
            endpoint = stack.enter_context(s3_for_tests())
            key = os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        if kind == "moto" and not env:
            create_bucket(endpoint, bucket)
        else:
            import boto3  # moto's own dependency: signed bucket creation for a real server

            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                region_name=DEFAULT_REGION,
            ).create_bucket(Bucket=bucket)
        yield s3_store_url(endpoint, bucket, access_key_id=key, secret_access_key=secret)


# ----------------------------------------------------------------------------- the history
def daily_full(cluster_id: str, day: int) -> Backup:
    at = T0 + timedelta(days=day)
    backup = new_backup(
        cluster_id,
        uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster_id}/{day}"),
        reason="SCHEDULED",
        region=DEFAULT_REGION,
        retention_days=RETENTION_DAYS,
        scheduled_for=at,
        executor="bench",
        lease_until=at,
        at=at,
    )
    chain = str(backup.backup_id)
    key = manifest_key(cluster_id, chain, chain)
    expires = backup_expires_at(at, RETENTION_DAYS)
    backup.complete(at, 100, 1, [], key, expires, at, "bench")
    return backup


def build(store_url: str, objects: ObjectStore, clusters: int, days: int, steady: bool) -> int:
    """Record the history and write the objects still stored; returns how many objects."""
    store = open_event_store(store_url)
    pool = ThreadPoolExecutor(32)
    keys: list[tuple[str, bytes]] = []
    pending: list[Backup] = []
    written = 0
    for c in range(clusters):
        cluster_id = f"bench-{c:05d}"
        for day in range(days):
            backup = daily_full(cluster_id, day)
            chain = str(backup.backup_id)
            if steady and day < days - KEPT_DAYS:  # an earlier pass expired and deleted it
                at = T0 + timedelta(days=day + RETENTION_DAYS, hours=1)
                assert backup.expires_at is not None
                backup.expire("retention", backup.expires_at, at, "bench")
                backup.record_deleted(2, 164, "retention", at, "bench")
            else:
                keys.append((manifest_key(cluster_id, chain, chain), b"{}"))
                keys.append((chunk_key(cluster_id, chain, uuid.uuid4().hex * 2), b"x" * 64))
            pending.append(backup)
        if (c + 1) % EVENTS_PER_SAVE == 0 or c == clusters - 1:
            store.save_all(*pending)
            pending = []
        if len(keys) >= 5000 or c == clusters - 1:
            list(pool.map(lambda kv: objects.put_if_absent(*kv), keys))
            written += len(keys)
            keys = []
    pool.shutdown()
    store.close()
    return written


# ----------------------------------------------------------------------------- lateness probe
def register_probe_clusters(store: EventStore, count: int, start: datetime) -> None:
    """``count`` clusters every 5 minutes, slot 0 of each (its registration) spread over the 5
    minutes after ``start``."""
    period = timedelta(minutes=5)
    batch: list[Cluster] = []
    for i in range(count):
        at = start + period * i / count
        cluster = new_cluster(
            f"probe-{i:05d}",
            organization="bench",
            regions=(DEFAULT_REGION,),
            connection_ref="postgresql://bench@127.0.0.1/db",
            frequency_minutes=5,
            retention_days=30,
            at=at,
            by="bench",
        )
        batch.append(cluster)
    store.save_all(*batch)


def probe(store_url: str, out: str) -> None:
    """The lateness probe's process: the real scheduler until SIGTERM, then its samples."""
    store = open_event_store(store_url)
    samples: list[tuple[float, float]] = []

    async def send(command: dict[str, Any]) -> None:
        slot = TakeBackup.model_validate(command).scheduled_for
        assert slot is not None
        samples.append((time.time(), (datetime.now(UTC) - slot).total_seconds()))

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        scheduler = Scheduler(
            store,
            WallClock(),
            send,
            lambda fields: {**normalized(fields), "token": "unchecked"},  # nobody verifies it
            resend_after_seconds=1e9,
        )
        await scheduler.run(stop)

    asyncio.run(main())
    Path(out).write_text(json.dumps(samples))


def spread(values: list[float]) -> str:
    if not values:
        return "no slots"
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{len(values)} slots, p50 {p50:.3f} s, p99 {p99:.3f} s, max {ordered[-1]:.3f} s"


# ----------------------------------------------------------------------------- the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--mode", choices=("steady", "catch-up"), default="steady")
    parser.add_argument("--store", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--s3", choices=("moto", "minio"), default="moto")
    parser.add_argument("--minio", default="minio", help="the MinIO server binary")
    parser.add_argument("--lateness-clusters", type=int, default=600)
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    if args.days <= KEPT_DAYS:
        parser.error(f"--days must be more than {KEPT_DAYS}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with object_store_url(args.s3, args.minio, tmp) as url:
            run(args, url, tmp)


def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    store_url = f"sqlite:///{tmp / 'events.sqlite'}" if args.store == "sqlite" else args.store
    steady = args.mode == "steady"
    objects = ObjectStore(url)
    started = time.perf_counter()
    stored = build(store_url, objects, args.clusters, args.days, steady)
    built = time.perf_counter() - started
    store, db = open_event_store(store_url), SqlDatabase(store_url)
    worker = Retention(store, db, lambda region: url)
    worker.index.catch_up()  # the index follows the log all the time: current before a pass
    indexed = time.perf_counter() - started - built
    probe_out = tmp / "lateness.json"
    probe_proc = None
    if args.lateness_clusters:
        register_probe_clusters(store, args.lateness_clusters, datetime.now(UTC))
        probe_proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_retention", "--probe", store_url, probe_out]
        )
    # The pass runs between two equal spells of the scheduler alone; the first one is its
    # baseline, the second lets the pass's effects show after its end too.
    settle = 20.0 if probe_proc else 0.0
    time.sleep(settle)
    baseline_start = time.time()
    time.sleep(settle)
    pass_start = time.time()
    started = time.perf_counter()
    report = worker.enforce(T0 + timedelta(days=args.days - 1, hours=1))
    elapsed = time.perf_counter() - started
    pass_end = time.time()
    samples: list[tuple[float, float]] = []
    if probe_proc is not None:
        time.sleep(2.0)
        probe_proc.send_signal(signal.SIGTERM)
        probe_proc.wait(60)
        samples = [(float(a), float(b)) for a, b in json.loads(probe_out.read_text())]
    before = [lat for at, lat in samples if baseline_start <= at < pass_start]
    during = [lat for at, lat in samples if pass_start <= at <= pass_end + 1.0]
    print(f"clusters x days            {args.clusters} x {args.days} ({args.mode})")
    print(f"object store               {args.s3}, {stored} objects before the pass")
    print(f"history built in           {built:.1f} s (index caught up in {indexed:.1f} s)")
    print(f"retention pass             {elapsed:.1f} s")
    print(f"clusters with work         {report.clusters_with_work} of {report.clusters}")
    print(f"backups expired            {report.backups_expired}")
    print(f"chains deleted             {report.chains_deleted}")
    print(f"objects deleted            {report.objects_deleted}")
    print(f"deletes per second         {report.objects_deleted / elapsed:.0f}")
    print(f"errors                     {len(report.errors)}")
    if args.clusters != 10_000:
        print(f"extrapolated to 10,000     {elapsed * 10_000 / args.clusters:.0f} s")
    if probe_proc is not None:
        print(f"scheduler lateness before  {spread(before)}")
        print(f"scheduler lateness during  {spread(during)}")


if __name__ == "__main__":
    main()
