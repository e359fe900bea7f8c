"""Projections rebuild benchmark: ``managed-backups projections rebuild`` on a scripted history.

Run on demand (not in the test suite)::

    python -m benchmarks.bench_projections                     # PostgreSQL, ~100,000 events
    python -m benchmarks.bench_projections --store sqlite
    python -m benchmarks.bench_projections --clusters 8        # a quick run
    python -m benchmarks.bench_projections --store postgresql://user:pw@host/db

The history is ``tests/history.py``'s (clusters living for ``--days`` days: hourly backups,
failures, verifications, settings and tier changes, expiries and deletions, restores, keys),
written through the real aggregates into the event store: a throw-away local PostgreSQL server
(Debian's, as the tests start it) by default, a temporary SQLite file, or a URL.

Timed in the same run, on the same events:

- ``rebuild``: what the command does (side tables, batches of 5,000, then the swap);
- ``read only``: reading and decoding the log into contract events, no views written (the
  ceiling a rebuild can reach: ``rebuild / read only`` is how much the views cost on top);
- ``one event per transaction``: the same handlers applying each event in its own transaction
  with its position, the way ``eventsourcing``'s ``ProjectionRunner`` processes events (on the
  first ``--per-event`` events only: it is slow).

Prints events/s by wall clock and by CPU time (this process's and its decoding workers'; it
does not grow with the machine's load, which the wall clock does: the load average is printed),
and the ratios. The database server's CPU is not counted. The target: a rebuild of at least 10,000 events/s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from managed_backups.services.projections.handlers import ViewProjection
from managed_backups.services.projections.service import rebuild
from managed_backups.shared.eventstore import EventStore, open_event_store, to_wire_event
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.history import write_history


@contextlib.contextmanager
def store_url(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'events.sqlite'}"
    elif kind == "postgres":
        from tests.infra.postgres import LocalPostgres

        with LocalPostgres() as pg:
            yield pg.url
    else:
        yield kind


def timed(work: Callable[[], object]) -> tuple[float, float, float]:
    """Wall time, CPU time of this process, and of the worker processes it waited for."""
    wall, cpu, workers = time.monotonic(), time.process_time(), children_cpu()
    work()
    return time.monotonic() - wall, time.process_time() - cpu, children_cpu() - workers


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_only(store: EventStore, batch: int = 5000) -> int:
    after, seen = 0, 0
    while rows := store.notifications(after, batch):
        events = [to_wire_event(row.id, store.domain_event(row)) for row in rows]
        seen += len(events)
        after = rows[-1].id
    return seen


def one_per_transaction(store: EventStore, db: SqlDatabase, limit: int) -> None:
    views = ReadModels(db, "mb_bench_single_")
    views.drop()
    views.create()
    projection = ViewProjection(db, views.prefix)
    for row in store.notifications(0, limit):
        projection.apply_batch([to_wire_event(row.id, store.domain_event(row))], after=row.id - 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="postgres", help="postgres, sqlite or a URL")
    parser.add_argument("--clusters", type=int, default=42)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-event", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, store_url(args.store, Path(tmp)) as url:
        store = open_event_store(url)
        db = SqlDatabase(url)
        wall, _, _ = timed(lambda: write_history(store, clusters=args.clusters, days=args.days))
        events = store.max_position()
        print(f"store: {url.split('@')[-1]}; history: {events:,} events written in {wall:.1f} s")
        print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
        results: dict[str, tuple[int, float, float, float]] = {}
        results["rebuild"] = (events, *timed(lambda: rebuild(store, db)))
        results["read only"] = (events, *timed(lambda: read_only(store)))
        per_event = min(args.per_event, events)
        results["one event per transaction"] = (
            per_event,
            *timed(lambda: one_per_transaction(store, db, per_event)),
        )
        print(
            f"{'step':<27} {'events':>8} {'wall s':>7} {'events/s':>9} "
            f"{'events/CPU-s: this process':>27} {'workers':>8}"
        )
        for step, (n, wall, cpu, workers) in results.items():
            rate = f"{n / workers:,.0f}" if workers > 0.05 else "-"
            print(f"{step:<27} {n:>8,} {wall:>7.2f} {n / wall:>9,.0f} {n / cpu:>27,.0f} {rate:>8}")
        rate = {step: n / wall for step, (n, wall, _, _) in results.items()}
        print(
            f"rebuild / read only: {rate['rebuild'] / rate['read only']:.2f}x; "
            f"rebuild / one event per transaction: "
            f"{rate['rebuild'] / rate['one event per transaction']:.1f}x"
        )
        target = "met" if rate["rebuild"] >= 10_000 else "NOT met"
        print(f"target >= 10,000 events/s: {target} ({rate['rebuild']:,.0f} events/s)")
        db.close()
        store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
