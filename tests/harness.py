"""Run the services in-process (each with its own runtime, as separate processes would) for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Role
from managed_backups.contracts.results import CommandResult
from managed_backups.services.api.app import create_app
from managed_backups.services.registry import service_main
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.gateway import CommandGateway
from managed_backups.shared.identity import Identity
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels

ServiceMain = Callable[[Runtime, asyncio.Event], Awaitable[None]]


@dataclass
class RunningService:
    name: str
    runtime: Runtime
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class System:
    settings: Settings
    services: dict[str, RunningService] = field(default_factory=dict)
    admin_key: str = ""
    gateway: CommandGateway | None = None
    api_runtime: Runtime | None = None
    http: httpx.AsyncClient | None = None

    @classmethod
    async def start(
        cls,
        data_dir: Path,
        store_url: str,
        kafka: str,
        services: tuple[str, ...] = ("relay", "projections", "scheduler"),
        simulated_clock: bool = False,
        **settings: Any,
    ) -> System:
        system = cls(
            Settings(
                data_dir=data_dir,
                event_store_url=store_url,
                kafka_bootstrap_servers=kafka,
                simulated_clock=simulated_clock,
                simulated_clock_start="2026-01-05T00:00:00+00:00",
                # The tests' clusters are throw-away servers on 127.0.0.1.
                **{"allow_local_clusters": True, **settings},
            )
        )
        await ensure_topics(kafka)
        runtime = open_runtime(system.settings)
        identity = Identity(runtime.store, runtime.db, runtime.clock)
        system.admin_key, _ = identity.ensure_admin_key(system.settings.admin_key_path)
        runtime.close()
        for name in services:
            await system.start_service(name)
        system.gateway = CommandGateway(kafka, f"test-{uuid4().hex[:6]}")
        await system.gateway.start()
        system.api_runtime = open_runtime(system.settings)
        await system.api_runtime.clock.start()
        app = create_app(system.api_runtime, system.gateway)
        system.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {system.admin_key}"},
        )
        return system

    async def start_service(self, name: str, main: ServiceMain | None = None) -> RunningService:
        runtime = open_runtime(self.settings)
        await runtime.clock.start()
        stop = asyncio.Event()
        task = asyncio.create_task((main or service_main(name))(runtime, stop), name=name)
        service = RunningService(name, runtime, stop, task)
        self.services[name] = service
        return service

    async def stop_service(self, name: str, kill: bool = False) -> None:
        service = self.services.pop(name)
        if kill:
            service.task.cancel()
        else:
            service.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(service.task, 30)
        await service.runtime.clock.stop()
        service.runtime.close()

    async def close(self) -> None:
        for name in list(self.services):
            await self.stop_service(name)
        if self.http is not None:
            await self.http.aclose()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.api_runtime is not None:
            await self.api_runtime.clock.stop()
            self.api_runtime.close()

    # -- helpers ----------------------------------------------------------------------------

    def sealed_store(self, cluster_id: str, region: str) -> ObjectStore:
        """The region's store as the services read it for ``cluster_id`` (sealed with its keys:
        encryption at rest)."""
        assert self.api_runtime is not None
        cluster = self.api_runtime.store.get_or_none(Cluster.create_id(cluster_id), Cluster)
        assert cluster is not None, cluster_id
        objects = ObjectStore(self.settings.region_store_url(region))
        return ClusterEncryption(self.settings, self.api_runtime.store).seal(objects, cluster)

    async def command(
        self, topic: str, body: dict[str, Any], key: str | None = None, timeout: float = 30
    ) -> CommandResult:
        """Send ``body`` on ``topic`` as ``key``'s principal (default: the administrator),
        signed by the API as ``managed-backups publish`` has it signed."""
        assert self.gateway is not None
        command = await self.signed(topic, {"command_id": str(uuid4()), **body}, key)
        return await self.gateway.request(topic, command, timeout=timeout)

    async def signed(
        self, topic: str, command: dict[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        """``command`` with a token for ``key`` (POST /api/v1/command-tokens). Tests that send
        many commands at once may find the API at its limit of requests: like any client, this
        retries after the ``Retry-After`` it is given (503), for at most a minute."""
        assert self.http is not None
        async with asyncio.timeout(60):
            while True:
                response = await self.http.post(
                    "/api/v1/command-tokens",
                    json={"topic": topic, "command": command},
                    headers={"Authorization": f"Bearer {key or self.admin_key}"},
                )
                retry_after = response.headers.get("retry-after")
                if response.status_code != 503 or retry_after is None:
                    break
                await asyncio.sleep(float(retry_after))
        assert response.status_code == 200, response.text
        signed: dict[str, Any] = response.json()["command"]
        return signed

    async def issue_key(self, name: str, role: Role, scope: str) -> str:
        """An API key of a new service account ``name`` holding ``role`` at ``scope``
        (``org:<id>`` or ``cluster:<id>``), created through the API by the administrator
        (the organization too, if missing)."""
        assert self.http is not None and self.api_runtime is not None
        kind, _, resource = scope.partition(":")
        if kind == "org":
            organization, resource_type = resource, "ORGANIZATION"
        else:
            cluster = self.api_runtime.store.get_or_none(Cluster.create_id(resource), Cluster)
            assert cluster is not None, f"cluster {resource} is not registered"
            organization, resource_type = cluster.organization, "CLUSTER"
        await self.ensure_organization(organization)
        account = await self.http.post(
            "/api/v1/service-accounts",
            json={"name": f"{name}-{uuid4().hex[:6]}", "organization": organization},
        )
        assert account.status_code == 200, account.text
        account_id = account.json()["id"]
        grant = await self.http.post(
            "/api/v1/role-grants",
            json={
                "service_account_id": account_id,
                "role_name": role.value,
                "resource_type": resource_type,
                "resource_id": resource,
            },
        )
        assert grant.status_code == 200, grant.text
        key = await self.http.post(
            "/api/v1/api-keys", json={"name": name, "service_account_id": account_id}
        )
        assert key.status_code == 200, key.text
        secret: str = key.json()["secret"]
        return secret

    async def ensure_organization(self, organization: str) -> None:
        assert self.http is not None
        created = await self.http.post(
            "/api/v1/organizations", json={"id": organization, "name": organization}
        )
        assert created.status_code in (200, 409), created.text

    async def register(
        self, cluster_id: str, secret: str | None = None, key: str | None = None, **fields: Any
    ) -> CommandResult:
        """Register a cluster (and, once registered, set its connection secret if given)."""
        body = {
            "type": "RegisterCluster",
            "cluster_id": cluster_id,
            "name": cluster_id,
            "organization": "acme",
            "tier": "STANDARD",
            "regions": ["us-east-1", "eu-west-1", "ap-south-1"],
            "database_version": "15",
            "connection_ref": "postgresql://backup@127.0.0.1:5432/postgres",
            **fields,
        }
        result = await self.command(topics.CLUSTER_COMMANDS, body, key)
        if secret is not None and result.code == 200:
            await self.wait_projection(result.position)
            response = await self.set_secret(cluster_id, secret)
            assert response.status_code == 200, response.text
        return result

    async def set_secret(
        self, cluster_id: str, password: str, credential: str | None = None
    ) -> httpx.Response:
        assert self.http is not None
        return await self.http.put(
            f"/api/v1/clusters/{cluster_id}/connection-secret",
            json={"password": password},
            headers={"Authorization": f"Bearer {credential or self.admin_key}"},
        )

    async def wait_projection(self, position: int | None, timeout: float = 15) -> None:
        """Wait as the API does before answering a change (``TimeoutError`` when late)."""
        assert self.api_runtime is not None
        await ReadModels(self.api_runtime.db).wait_until(position, timeout)

    @property
    def clock(self) -> SimulatedClock:
        assert self.api_runtime is not None
        clock = self.api_runtime.clock
        assert isinstance(clock, SimulatedClock)
        return clock


async def consume(
    kafka: str,
    topic: str,
    on_record: Callable[[dict[str, Any]], Awaitable[bool] | bool],
    timeout: float = 60,
    from_beginning: bool = True,
) -> None:
    """Read ``topic`` until ``on_record`` returns True (fails on timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka,
        group_id=f"test-{uuid4().hex}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            async for record in consumer:
                outcome = on_record(json.loads(record.value))
                if isinstance(outcome, Awaitable):
                    outcome = await outcome
                if outcome:
                    return
    finally:
        await consumer.stop()


async def publish_raw(
    kafka: str,
    topic: str,
    payload: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, max_request_size=4 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload, key=key, headers=headers)
    finally:
        await producer.stop()


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def uuid(value: str) -> UUID:
    return UUID(value)


async def run_cluster_commands_only(runtime: Runtime, stop: asyncio.Event) -> None:
    """The scheduler's command consumer without its schedule loop: clusters get registered,
    but no backup is scheduled (for tests that take backups on demand)."""
    from pydantic import TypeAdapter

    from managed_backups.contracts.commands import ClusterCommand
    from managed_backups.services.scheduler.cluster_commands import HANDLERS
    from managed_backups.shared.bus import make_broker, subscribe_commands
    from managed_backups.shared.commands import CommandContext, CommandProcessor

    broker = make_broker(runtime.settings.kafka_bootstrap_servers, "test-registry")
    processor = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        HANDLERS,
        CommandContext(runtime.store, runtime.clock, "scheduler"),
        runtime.verifier,
    )
    subscribe_commands(broker, processor, "managed-backups.scheduler")
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()


def service_process(system: System, name: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``managed-backups service NAME`` in its own process, on ``system``'s settings (plus
    ``env``), logging to ``log``: for tests that SIGKILL a service."""
    return subprocess.Popen(
        [sys.executable, "-m", "managed_backups.services.cli", "service", name],
        env={
            **os.environ,
            "MANAGED_BACKUPS_DATA_DIR": str(system.settings.data_dir),
            "MANAGED_BACKUPS_EVENT_STORE_URL": system.settings.store_url,
            "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": system.settings.kafka_bootstrap_servers,
            "MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS": str(system.settings.allow_local_clusters),
            **env,
        },
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
