"""Retention benchmark: one retention pass over N clusters with D simulated days of history.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_retention                                # 10,000 x 30 days
    python -m benchmarks.bench_retention --clusters 200 --days 30       # a quick run

One run: a local S3-compatible server (moto, as in the tests) or ``$S3_ENDPOINT_URL``; an event
store (``--store sqlite`` in a temporary file, or ``$POSTGRES_URL``); N clusters each with a full
backup per day for D days (2-day retention, so every chain but the last two has expired), their
events recorded in bulk and two small objects per backup (a manifest and a chunk at the chain's
real keys) written through the data plane's store API. Then one timed pass
(:meth:`Retention.enforce` over every cluster at day D): it records the expiries, reads the
holds, deletes the expired chains' objects in batches and records the deletions.

Prints: the pass's wall time, chains and objects deleted, deletes per second, and the time to
build the history (for scale). The issue's target: a pass over 10,000 clusters under 60 s.
Scheduler lateness while a pass runs is not measured by this script yet.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from managed_backups.services.retention.retention import Retention
from managed_backups.shared.dataplane.manifest import chunk_key, manifest_key
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.domain.backup_lifecycle import backup_expires_at
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from tests.infra.s3 import ACCESS_KEY_ID, DEFAULT_REGION, SECRET_ACCESS_KEY, create_bucket
from tests.infra.testing import s3_for_tests

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@contextlib.contextmanager
def object_store_url() -> Iterator[str]:
    with s3_for_tests() as endpoint:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        create_bucket(endpoint, bucket)
        yield (
            f"s3://{bucket}/backups?endpoint={endpoint}&region={DEFAULT_REGION}&allow_http=true"
            f"&access_key_id={ACCESS_KEY_ID}&secret_access_key={SECRET_ACCESS_KEY}"
        )


def build(store_url: str, objects: ObjectStore, clusters: int, days: int) -> None:
    store = open_event_store(store_url)
    pool = ThreadPoolExecutor(16)
    for c in range(clusters):
        cluster_id = f"bench-{c:05d}"
        backups: list[Backup] = []
        keys: list[tuple[str, bytes]] = []
        for day in range(days):
            at = T0 + timedelta(days=day)
            backup_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{cluster_id}/{day}")
            chain = str(backup_id)
            b = Backup(
                backup_id=backup_id,
                cluster_id=cluster_id,
                backup_type="FULL",
                chain_id=backup_id,
                reason="SCHEDULED",
                region="us-east-1",
                retention_days=2,
                scheduled_for=at,
                executor="bench",
                lease_until=at,
                command_id=None,
                at=at,
                by="bench",
            )
            key = manifest_key(cluster_id, chain, chain)
            b.complete(at, 100, 1, [], key, backup_expires_at(at, 2), at, "bench")
            backups.append(b)
            keys += [(key, b"{}"), (chunk_key(cluster_id, chain, uuid.uuid4().hex * 2), b"x" * 64)]
        store.save_all(*backups)
        list(pool.map(lambda kv: objects.put_if_absent(*kv), keys))
    pool.shutdown()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--store", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, object_store_url() as url:
        store_url = (
            f"sqlite:///{Path(tmp) / 'events.sqlite'}" if args.store == "sqlite" else args.store
        )
        objects = ObjectStore(url)
        started = time.perf_counter()
        build(store_url, objects, args.clusters, args.days)
        built = time.perf_counter() - started
        store, db = open_event_store(store_url), SqlDatabase(store_url)
        worker = Retention(store, db, lambda region: url)
        started = time.perf_counter()
        report = worker.enforce(T0 + timedelta(days=args.days - 1, hours=1))
        elapsed = time.perf_counter() - started
        print(f"clusters x days            {args.clusters} x {args.days}")
        print(f"history built in           {built:.1f} s")
        print(f"retention pass             {elapsed:.1f} s")
        print(f"chains deleted             {report.chains_deleted}")
        print(f"objects deleted            {report.objects_deleted}")
        print(f"deletes per second         {report.objects_deleted / elapsed:.0f}")
        print(f"errors                     {len(report.errors)}")
        print(f"extrapolated to 10,000     {elapsed * 10_000 / args.clusters:.0f} s")


if __name__ == "__main__":
    main()
