"""API keys through the real system: a revoked key is refused at once, by every API instance on
its next request and by the service that handles a command it sent before the revocation; and
no key, secret or hash of one leaves the secret store's table (events, views, logs, topics,
dead letters, results)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Role
from managed_backups.services.api.app import create_app
from managed_backups.services.runtime import open_runtime
from managed_backups.shared.bus import PARTITIONS
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.secrets import API_KEY_TABLE, TABLE
from tests.harness import System, publish_raw, run_cluster_commands_only
from tests.integration.test_executor import executor_system, take

pytestmark = pytest.mark.integration


@pytest.fixture
async def system(tmp_path: Path, kafka: str) -> AsyncIterator[System]:
    system = await System.start(
        tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}", kafka, services=("projections",)
    )
    await system.start_service("scheduler", run_cluster_commands_only)
    yield system
    await system.close()


async def test_a_revoked_key_is_refused_at_once_over_http_and_for_a_queued_command(
    system: System,
) -> None:
    assert system.http is not None and system.gateway is not None
    assert system.api_runtime is not None
    cluster_id = f"rev-{uuid4().hex[:6]}"
    assert (await system.register(cluster_id)).code == 200
    await system.wait_projection(system.api_runtime.store.max_position())
    ops = await system.issue_key("ops", Role.ORG_ADMIN, "org:acme")
    as_ops = {"Authorization": f"Bearer {ops}"}
    # A second API instance over the same store: nothing it remembers keeps a key alive.
    second_runtime = open_runtime(system.settings)
    second = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(second_runtime, system.gateway)),
        base_url="http://api",
    )
    try:
        for api in (system.http, second):
            assert (
                await api.get(f"/api/v1/clusters/{cluster_id}", headers=as_ops)
            ).status_code == 200

        # A command of the key waits on its topic while no service consumes it ...
        await system.stop_service("scheduler")
        queued = f"queued-{uuid4().hex[:6]}"
        command = await system.signed(
            topics.CLUSTER_COMMANDS,
            {
                "command_id": str(uuid4()),
                "type": "RegisterCluster",
                "cluster_id": queued,
                "name": queued,
                "organization": "acme",
                "tier": "STANDARD",
                "regions": ["us-east-1"],
                "database_version": "15",
                "connection_ref": "postgresql://u@h/postgres",
            },
            ops,
        )
        waiting = asyncio.create_task(
            system.gateway.request(topics.CLUSTER_COMMANDS, command, timeout=60)
        )
        await asyncio.sleep(0)  # the request is published before the key is revoked
        key_id = ops.split("_")[1]
        revoked = await system.http.delete(f"/api/v1/api-keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text

        # ... the next request on either instance is refused ...
        for api in (system.http, second):
            refused = await api.get(f"/api/v1/clusters/{cluster_id}", headers=as_ops)
            assert refused.status_code == 401, refused.text
        # ... and so is the queued command, once a service handles it: nothing is recorded.
        await system.start_service("scheduler", run_cluster_commands_only)
        result = await waiting
        assert result.code == 401 and "revoked" in (result.reason or ""), result
        store = system.api_runtime.store
        assert store.get_or_none(Cluster.create_id(queued), Cluster) is None
        # An operator's key cannot revoke another's; a key may revoke itself.
        other = await system.issue_key("other", Role.CLUSTER_OPERATOR, f"cluster:{cluster_id}")
        victim = await system.issue_key("victim", Role.CLUSTER_OPERATOR, f"cluster:{cluster_id}")
        victim_id = victim.split("_")[1]
        for key, code in ((other, 404), (victim, 200)):
            answer = await system.http.delete(
                f"/api/v1/api-keys/{victim_id}", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == code, answer.text
    finally:
        await second.aclose()
        second_runtime.close()


def search_terms(key: str, hashed: str) -> list[str]:
    """A key, its secret, the SHA-256 version 0.1 stored, and its stored salted hash."""
    secret = key.split("_", 2)[2]
    _, salt, digest = hashed.split("$")
    return [
        key,
        secret,
        hashlib.sha256(secret.encode()).hexdigest(),
        hashed,
        salt,
        digest,
        base64.b64decode(digest).hex(),
    ]


async def read_topic(kafka: str, topic: str, timeout: float = 120) -> bytes:
    """Every record of ``topic`` (keys, headers and values) up to its end as it is now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]  # ensure_topics' count
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen = bytearray()

        async def behind() -> bool:
            return any([await consumer.position(p) < ends[p] for p in partitions])

        async with asyncio.timeout(timeout):
            while await behind():
                batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for records in batches.values():
                    for record in records:
                        seen += (record.key or b"") + (record.value or b"")
                        for name, value in record.headers or ():
                            seen += name.encode() + (value or b"")
        return bytes(seen)
    finally:
        await consumer.stop()


async def test_no_api_key_or_hash_leaves_the_secret_store(
    tmp_path: Path, kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # As the services configure it (``configure_logging``): aiokafka's debug lines are the
    # sending client's own payloads (here the test, playing a careless client).
    caplog.set_level(logging.WARNING, logger="aiokafka")
    system = await executor_system(tmp_path, kafka)
    try:
        assert system.http is not None and system.gateway is not None
        assert system.api_runtime is not None
        runtime = system.api_runtime
        # Keys used every way a key is used: HTTP, commands signed for it, a secret, a backup,
        # listings, a revocation, an expiry in the future.
        cluster_id = f"keys-{uuid4().hex[:6]}"
        admin_of = await system.issue_key("keeper", Role.ORG_ADMIN, "org:keys")
        assert (
            await system.register(
                cluster_id,
                organization="keys",
                connection_ref="postgresql://u@127.0.0.1:1/postgres",
                key=admin_of,
            )
        ).code == 200
        await system.wait_projection(runtime.store.max_position())
        operator = await system.issue_key("looker", Role.CLUSTER_OPERATOR, f"cluster:{cluster_id}")
        as_admin = {"Authorization": f"Bearer {admin_of}"}
        assert (await system.set_secret(cluster_id, "pw", credential=admin_of)).status_code == 200
        await take(system, cluster_id, key=admin_of)
        for key in (admin_of, operator):
            headers = {"Authorization": f"Bearer {key}"}
            for path in (f"/api/v1/clusters/{cluster_id}/backups", "/api/v1/api-keys"):
                assert (await system.http.get(path, headers=headers)).status_code == 200
        doomed = await system.issue_key("doomed", Role.CLUSTER_MONITOR, "org:keys")
        deleted = await system.http.delete(
            f"/api/v1/api-keys/{doomed.split('_')[1]}", headers=as_admin
        )
        assert deleted.status_code == 200
        # Keys thrown at the topics by a careless or old client: refused, never copied on.
        thrown = await system.issue_key("thrown", Role.ORG_ADMIN, "org:keys")
        legacy_form = {
            "command_id": str(uuid4()),
            "type": "DeleteCluster",
            "cluster_id": cluster_id,
            "credential": thrown,
        }
        result = await system.gateway.request(topics.CLUSTER_COMMANDS, legacy_form)
        assert result.code == 401
        marker = uuid4().hex  # the shared broker holds other tests' dead letters too
        poison = f'{{"type": "{marker}", "credential": "{thrown}", "x": '.encode()
        await publish_raw(kafka, topics.CLUSTER_COMMANDS, poison)
        dead = await read_until_dead_letter(kafka, marker)
        assert "mbk_<redacted>" in dead and thrown not in dead

        keys = {"admin_of": admin_of, "operator": operator, "doomed": doomed, "thrown": thrown}
        hashes = {
            str(row[0]): str(row[1])
            for row in runtime.db.query(f"SELECT key_id, hash FROM {API_KEY_TABLE}")
        }
        terms = {name: search_terms(key, hashes[key.split("_")[1]]) for name, key in keys.items()}
        # Where they must not be.
        places: dict[str, str] = {}
        store = runtime.store
        places["events"] = json.dumps(
            [str(store.domain_event(n).__dict__) for n in store.notifications(0, 1_000_000)]
        )
        tables = [
            str(row[0])
            for row in runtime.db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        assert API_KEY_TABLE in tables
        places["tables"] = json.dumps(
            {
                table: [list(map(str, row)) for row in runtime.db.query(f"SELECT * FROM {table}")]
                for table in tables
                if table not in (API_KEY_TABLE, TABLE)
            }
        )
        places["logs"] = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
        for topic in topics.ALL_TOPICS:
            places[topic] = (await read_topic(kafka, topic)).decode(errors="replace")
        leaks = [
            f"{name} in {place}"
            for name, found in terms.items()
            for place, text in places.items()
            # A key thrown at a command topic is there: the client put it there.
            if not (name == "thrown" and place in topics.COMMAND_TOPICS)
            for term in found
            if term in text
        ]
        where = [
            f"{r.name}: {r.getMessage()[:300]}"
            for r in caplog.records
            if any(t in r.getMessage() for f in terms.values() for t in f)
        ]
        assert not leaks, (leaks, where)
        # The search can find what it looks for: the hashes are in their table.
        secrets_table = json.dumps(runtime.db.query(f"SELECT * FROM {API_KEY_TABLE}"))
        assert all(hashes[key.split("_")[1]] in secrets_table for key in keys.values())
        assert thrown in places[topics.CLUSTER_COMMANDS]
    finally:
        await system.close()


async def read_until_dead_letter(kafka: str, marker: str, timeout: float = 60) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for line in (await read_topic(kafka, topics.DEAD_LETTER)).split(b'{"topic"'):
                if marker.encode() in line:
                    return line.decode(errors="replace")
            await asyncio.sleep(0.2)
