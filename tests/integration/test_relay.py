"""The relay killed mid-stream (SIGKILL) and restarted loses and reorders nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from managed_backups.contracts import topics
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.eventstore import open_event_store
from tests.factories import new_cluster

pytestmark = pytest.mark.integration
CLUSTERS = 400
UPDATES_PER_CLUSTER = 24


def fill_store(url: str) -> int:
    """CLUSTERS clusters, each with a registration and many settings updates."""
    return record_clusters(url, "relay", CLUSTERS, UPDATES_PER_CLUSTER, chunks=CLUSTERS // 50)


def start_relay(tmp: Path, url: str, kafka: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(tmp),
        "MANAGED_BACKUPS_EVENT_STORE_URL": url,
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MANAGED_BACKUPS_RELAY_BATCH_SIZE": "25",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "managed_backups.services.cli", "service", "relay"],
        env=env,
        stdout=(tmp / "relay.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_relay_killed_mid_stream_then_restarted(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> None:
    await ensure_topics(kafka)
    total = await asyncio.to_thread(fill_store, postgres_store_url)
    assert total == CLUSTERS * (UPDATES_PER_CLUSTER + 1)

    consumer = AIOKafkaConsumer(
        topics.EVENTS,
        bootstrap_servers=kafka,
        group_id="relay-test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[str] = set()
    delivered = 0
    last_position: dict[str, int] = {}
    out_of_order: list[tuple[str, int, int]] = []

    def apply(event: dict[str, Any]) -> None:
        """The idempotent consumer: drops repeats by event id, checks per-cluster order."""
        nonlocal delivered
        delivered += 1
        if event["event_id"] in seen:
            return
        seen.add(event["event_id"])
        previous = last_position.get(event["cluster_id"], 0)
        if event["position"] <= previous:
            out_of_order.append((event["cluster_id"], previous, event["position"]))
        last_position[event["cluster_id"]] = event["position"]

    relay = start_relay(tmp_path, postgres_store_url, kafka)
    restarted = False
    try:
        async with asyncio.timeout(180):
            while len(seen) < total:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        apply(json.loads(record.value))
                if not restarted and len(seen) >= total // 4:
                    relay.send_signal(signal.SIGKILL)
                    relay.wait()
                    killed_at = len(seen)
                    relay = start_relay(tmp_path, postgres_store_url, kafka)
                    restarted = True
    finally:
        relay.terminate()
        relay.wait()
        await consumer.stop()
    assert restarted and killed_at < total, "the relay was not killed mid-stream"
    assert len(seen) == total
    assert out_of_order == []
    assert set(last_position) == {f"relay-{i}" for i in range(CLUSTERS)}
    # Every event arrived at least once; the repeats (at most the batch in flight) were dropped.
    assert total <= delivered


async def test_an_event_too_large_to_publish_is_set_aside_and_the_relay_goes_on(
    tmp_path: Path, kafka: str
) -> None:
    """An event larger than the topic's limit (recorded before commands were bounded: 15,876
    region names made one of 1 MB) is dead-lettered with its position; the next events flow."""
    from managed_backups.services.relay.relay import Relay
    from managed_backups.shared.sqldb import SqlDatabase
    from tests.harness import consume

    await ensure_topics(kafka)
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_event_store(url)
    suffix = os.urandom(3).hex()
    huge = new_cluster(
        f"huge-{suffix}",
        regions=tuple(f"region-{i:05d}-{'x' * 50}" for i in range(16_000)),
        at=datetime.now(UTC),
    )
    after = new_cluster(f"after-{suffix}", at=datetime.now(UTC))
    store.save(huge)
    store.save(after)
    huge_position = store.max_position() - 1
    db = SqlDatabase(url)
    stop = asyncio.Event()
    relay = Relay(store, db, kafka, name=f"relay-{suffix}", batch_size=10)
    task = asyncio.create_task(relay.run(stop))
    try:
        await consume(kafka, topics.EVENTS, lambda e: e["cluster_id"] == f"after-{suffix}")
        letters: list[dict[str, Any]] = []
        await consume(
            kafka,
            topics.DEAD_LETTER,
            lambda e: (
                e["topic"] == topics.EVENTS
                and e["offset"] == huge_position
                and f"huge-{suffix}" in e["payload"]
                and not letters.append(e)
            ),
        )
        assert "exceeds" in letters[0]["error"]
        assert not task.done()
        assert relay.position == store.max_position()
    finally:
        stop.set()
        await task
        db.close()
        store.close()


def record_clusters(
    url: str, prefix: str, count: int, updates: int, chunks: int = 1, pause: float = 0.0
) -> int:
    """``count`` clusters named ``prefix-i``, each registered and updated ``updates`` times,
    saved in ``chunks`` transactions ``pause`` seconds apart (a stream of events, not one
    burst); returns the store's last position."""
    store = open_event_store(url)
    now = datetime.now(UTC)
    clusters = []
    for i in range(count):
        cluster = new_cluster(f"{prefix}-{i}", regions=("r1",), retention_days=30, at=now)
        for n in range(updates):
            cluster._backup_settings_updated(
                cluster_id=cluster.cluster_id,
                enabled=True,
                frequency_minutes=(5, 10)[n % 2],
                retention_days=30,
                retention_changed=False,
                full_backup_required=True,
                command_id=None,
                at=now,
                by="test",
            )
        clusters.append(cluster)
    size = -(-count // chunks)
    for first in range(0, count, size):
        store.save(*clusters[first : first + size])
        time.sleep(pause)
    last = store.max_position()
    store.close()
    return last


def start_relay_instance(tmp: Path, url: str, kafka: str, index: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(tmp),
        "MANAGED_BACKUPS_EVENT_STORE_URL": url,
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MANAGED_BACKUPS_RELAY_BATCH_SIZE": str(TWO_RELAYS_BATCH),
        "MANAGED_BACKUPS_RELAY_LEASE_SECONDS": "2",
        "MANAGED_BACKUPS_INSTANCE": f"two-{index}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "managed_backups.services.cli", "service", "relay"],
        env=env,
        stdout=(tmp / f"relay-{index}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


TWO_RELAYS_BATCH = 20


async def test_two_relays_publish_each_event_once_and_a_standby_takes_over_from_a_killed_one(
    tmp_path: Path, postgres_store_url: str, kafka: str
) -> None:
    """Two relay processes on one store: only the one holding the relay's lease publishes, so
    each event reaches the topic once. SIGKILL the active one mid-stream: the standby takes
    over when its lease expires and publishes the rest, nothing lost or reordered, at most the
    killed one's batch in flight twice."""
    from managed_backups.shared.sqldb import SqlDatabase

    await ensure_topics(kafka)
    prefix = f"two-{os.urandom(3).hex()}"
    consumer = AIOKafkaConsumer(
        topics.EVENTS,
        bootstrap_servers=kafka,
        group_id=prefix,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    deliveries: dict[int, int] = {}
    last_position: dict[str, int] = {}
    out_of_order: list[tuple[str, int, int]] = []

    async def consume_until(count: int) -> None:
        while len(deliveries) < count:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = json.loads(record.value)
                    if not str(event["cluster_id"]).startswith(prefix):
                        continue
                    position = event["position"]
                    deliveries[position] = deliveries.get(position, 0) + 1
                    if deliveries[position] > 1:
                        continue
                    if position <= last_position.get(event["cluster_id"], 0):
                        out_of_order.append((event["cluster_id"], position, position))
                    last_position[event["cluster_id"]] = position

    db = SqlDatabase(postgres_store_url)
    relays = [start_relay_instance(tmp_path, postgres_store_url, kafka, i) for i in (0, 1)]
    try:
        async with asyncio.timeout(120):
            # A stream of small saves for a few seconds: both relays are polling the log.
            first_half = await asyncio.to_thread(
                record_clusters, postgres_store_url, prefix, 60, 3, 60, 0.1
            )
            await consume_until(first_half)
            # Both ran all along: one published, the other stood by.
            assert [relay.poll() for relay in relays] == [None, None]
            assert sum(deliveries.values()) == first_half, "an event was published twice"

            def active() -> int:
                (owner,) = db.query("SELECT owner FROM mb_job_leases WHERE kind = 'relay'")[0]
                return int(str(owner).removeprefix("relay-two-"))

            killed = await asyncio.to_thread(active)
            total = await asyncio.to_thread(
                record_clusters, postgres_store_url, prefix + "b", 80, 10
            )
            await consume_until(first_half + 20)
            relays[killed].send_signal(signal.SIGKILL)
            relays[killed].wait()
            (killed_at,) = db.query("SELECT position FROM mb_relay_position")[0]
            await consume_until(total)
            assert await asyncio.to_thread(active) == 1 - killed
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait()
        await consumer.stop()
        db.close()
    assert killed_at < total, "the active relay was killed after it published everything"
    assert sorted(deliveries) == list(range(1, total + 1)) and out_of_order == []
    assert sum(deliveries.values()) - total <= TWO_RELAYS_BATCH
