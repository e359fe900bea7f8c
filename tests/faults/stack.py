"""The whole system on real parts, every service its own process, for the fault suite.

:class:`Stack` starts:

- a PostgreSQL server of its own holding the event store (and the leases, positions, views,
  the simulated clock): restartable and pausable without touching other tests' servers;
- a Kafka broker of its own that authenticates every client (SASL/SCRAM, a user per service and
  ACLs per topic, as ``managed-backups up`` runs it): restartable and pausable;
- moto's S3-compatible server behind :class:`~tests.faults.proxies.S3FaultProxy` (region
  ``s3-region``), and a local directory on a small tmpfs (region ``local-region``, so a full disk
  is a real ``ENOSPC``);
- every service of ``services/registry.py`` as ``managed-backups service NAME`` processes, two
  instances of each (the API twice, on two ports), all on the simulated clock, each logged in to
  the broker as its own user and signing its own commands.

Backup targets are databases on a PostgreSQL server reached through a
:class:`~tests.faults.proxies.TcpProxy` (to refuse connections or slow traffic down).

The test talks to the system as a user does: signed commands through the API's token endpoint
published as the command line's broker user, the API over HTTP, the simulated clock moved in the
shared database. Process helpers kill (SIGKILL), stop (SIGSTOP) and resume (SIGCONT) any service
instance or server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psycopg

from managed_backups.contracts.results import CommandResult
from managed_backups.services.registry import COMMAND_LINE_USER, broker_users, service_names
from managed_backups.shared.broker_access import ADMIN_USER, KafkaAuth, provision
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.dataplane.objectstore import ObjectStore, open_store
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.gateway import CommandGateway
from managed_backups.shared.identity import Identity
from managed_backups.shared.infra.kafka import BrokerSecurity, LocalKafka, free_ports
from managed_backups.shared.settings import Settings
from managed_backups.shared.sqldb import SqlDatabase
from tests.faults.proxies import FaultLoop, S3FaultProxy, TcpProxy
from tests.infra.postgres import LocalPostgres
from tests.infra.s3 import create_bucket, s3_store_url

S3_REGION = "s3-region"
LOCAL_REGION = "local-region"
CLOCK_START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
"""The simulated clock starts at today's midnight (UTC), before the real time: a backup's "data
from" is its snapshot's time on the target's server (the real clock), and its expiry counts
from it, so the simulated days after it make chains expire and retention delete them, as in
production (a clock starting months earlier would never let a backup expire)."""
BACKUP_LEASE_SECONDS = 60.0
RESTORE_LEASE_SECONDS = 60.0
TMPFS_BYTES = 64 << 20


@dataclass
class ServiceProcess:
    """One instance of a service in its own process."""

    name: str
    index: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def instance(self) -> str:
        return f"{self.name}-{self.index}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n=== start {self.starts} at {time.strftime('%T')} ===\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "managed_backups.services.cli", "service", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def process_state(pid: int) -> str:
    """The kernel's state letter of ``pid`` (``T``: stopped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0]


@dataclass
class Target:
    """A backup target: one database cluster reached through the target proxy."""

    cluster_id: str
    region: str
    database: str


@dataclass
class Stack:
    base: Path
    instances: int = 2
    loop: FaultLoop = field(default_factory=FaultLoop)
    events_pg: LocalPostgres | None = None
    target_pg: LocalPostgres | None = None
    kafka: LocalKafka | None = None
    s3: Any = None
    s3_proxy: S3FaultProxy | None = None
    target_proxy: TcpProxy | None = None
    tmpfs: Path | None = None
    tmpfs_mounted: bool = True
    passwords: dict[str, str] = field(default_factory=dict)
    services: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    api_ports: list[int] = field(default_factory=list)
    admin_key: str = ""
    gateway: CommandGateway | None = None
    store: EventStore | None = None
    db: SqlDatabase | None = None
    settings: Settings | None = None
    bucket: str = ""

    # -- start and stop --------------------------------------------------------------------

    def start_servers(self) -> None:
        from tests.infra.s3 import LocalS3

        self.base.mkdir(parents=True, exist_ok=True)
        self.events_pg = LocalPostgres(None, settings={"max_connections": "300"})
        self.events_pg.start()
        self.target_pg = LocalPostgres(None)
        self.target_pg.start()
        self.passwords = {user: secrets.token_urlsafe(16) for user in [ADMIN_USER, *broker_users()]}
        self.kafka = LocalKafka(
            self.base / "kafka", security=BrokerSecurity(self.passwords[ADMIN_USER])
        )
        self.kafka.start()
        self.s3 = LocalS3(log_file=self.base / "s3.log")
        self.s3.start()
        self.bucket = f"faults-{uuid4().hex[:8]}"
        create_bucket(self.s3.endpoint_url, self.bucket)
        self.s3_proxy = S3FaultProxy(self.s3.endpoint_url)
        self.loop.run(self.s3_proxy.start())
        assert self.target_pg.port is not None
        self.target_proxy = TcpProxy("127.0.0.1", self.target_pg.port)
        self.loop.run(self.target_proxy.start())
        self.tmpfs = self.base / "local-store"
        self.tmpfs.mkdir()
        if os.geteuid() == 0:  # a small tmpfs (a full disk is then a real ENOSPC)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.tmpfs)],
                check=True,
            )
        else:  # not root: a plain directory (no full-disk fault can be injected)
            self.tmpfs_mounted = False

    @property
    def store_url(self) -> str:
        assert self.events_pg is not None
        return self.events_pg.url

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def region_stores(self) -> dict[str, str]:
        assert self.s3_proxy is not None and self.tmpfs is not None
        return {
            S3_REGION: s3_store_url(self.s3_proxy.endpoint, self.bucket),
            LOCAL_REGION: (self.tmpfs / "objects").as_uri(),
        }

    def env(self, **extra: str) -> dict[str, str]:
        assert self.kafka is not None
        return {
            **os.environ,
            "MANAGED_BACKUPS_DATA_DIR": str(self.data_dir),
            "MANAGED_BACKUPS_EVENT_STORE_URL": self.store_url,
            "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "MANAGED_BACKUPS_SIMULATED_CLOCK": "true",
            "MANAGED_BACKUPS_SIMULATED_CLOCK_START": CLOCK_START,
            "MANAGED_BACKUPS_REGION_STORES": json.dumps(self.region_stores()),
            "MANAGED_BACKUPS_BACKUP_LEASE_SECONDS": str(BACKUP_LEASE_SECONDS),
            "MANAGED_BACKUPS_RESTORE_LEASE_SECONDS": str(RESTORE_LEASE_SECONDS),
            "MANAGED_BACKUPS_RETENTION_INTERVAL_MINUTES": "60",
            "MANAGED_BACKUPS_POLL_INTERVAL_SECONDS": "0.05",
            # The backup targets are on this machine (behind the TCP proxy).
            "MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS": "true",
            # A TakeBackup refused while the cluster's previous backup still ran is sent again
            # after this many (real) seconds, once the scheduler looks at the cluster again.
            "MANAGED_BACKUPS_SCHEDULED_BACKUP_RESEND_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    async def prepare(self) -> None:
        """Topics, broker users and ACLs, the store's tables and the administrator key (what
        ``managed-backups up`` does before it starts the services)."""
        assert self.kafka is not None
        admin = KafkaAuth(ADMIN_USER, self.passwords[ADMIN_USER], "PLAIN")
        await ensure_topics(self.kafka.bootstrap_servers, auth=admin)
        await provision(
            self.kafka.bootstrap_servers,
            self.passwords[ADMIN_USER],
            {user: (self.passwords[user], access) for user, access in broker_users().items()},
        )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = Settings(
            data_dir=self.data_dir,
            event_store_url=self.store_url,
            kafka_bootstrap_servers=self.kafka.bootstrap_servers,
            simulated_clock=True,
            simulated_clock_start=CLOCK_START,
        )
        self.settings = settings
        self.store = open_event_store(self.store_url)
        self.db = SqlDatabase(self.store_url)
        clock = SimulatedClock(self.db, datetime.fromisoformat(CLOCK_START))
        self.admin_key, _ = Identity(self.store, self.db, clock).ensure_admin_key(
            settings.admin_key_path
        )

    def start_services(self) -> None:
        logs = self.base / "logs"
        logs.mkdir(exist_ok=True)
        self.api_ports = free_ports(self.instances)
        for name in service_names():
            count = self.instances
            self.services[name] = []
            for index in range(count):
                extra = {
                    "MANAGED_BACKUPS_INSTANCE": f"{name}-{index}",
                    "MANAGED_BACKUPS_KAFKA_USERNAME": name,
                    "MANAGED_BACKUPS_KAFKA_PASSWORD": self.passwords[name],
                }
                if name == "api":
                    extra["MANAGED_BACKUPS_API_PORT"] = str(self.api_ports[index])
                process = ServiceProcess(
                    name, index, self.env(**extra), logs / f"{name}-{index}.log"
                )
                process.start()
                self.services[name].append(process)

    async def wait_ready(self, timeout: float = 180) -> None:
        """Every process alive, both APIs answering, every service past its start (its simulated
        clock report, for those that report)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            for port in self.api_ports:
                while True:
                    self.check_alive()
                    with contextlib.suppress(httpx.HTTPError):
                        if (
                            await client.get(f"http://127.0.0.1:{port}/healthz")
                        ).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the API on port {port} did not answer")
                    await asyncio.sleep(0.2)
        assert self.kafka is not None
        self.gateway = CommandGateway(
            self.kafka.bootstrap_servers,
            f"fault-suite-{uuid4().hex[:6]}",
            auth=KafkaAuth(COMMAND_LINE_USER, self.passwords[COMMAND_LINE_USER]),
        )
        await self.gateway.start()
        while not {"scheduler", "backup-executor", "retention"} <= set(self.reached()):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"services did not report: {self.reached()}")
            await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        dead = [p.instance for ps in self.services.values() for p in ps if not p.alive()]
        if dead:
            tails = "\n".join(
                f"--- {p.instance}\n{p.log_text()[-3000:]}"
                for ps in self.services.values()
                for p in ps
                if p.instance in dead
            )
            raise AssertionError(f"service processes died: {dead}\n{tails}")

    async def close(self) -> None:
        for processes in self.services.values():
            for process in processes:
                process.stop()
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.stop()
        if self.db is not None:
            self.db.close()
        if self.store is not None:
            self.store.close()
        if self.s3_proxy is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.s3_proxy.stop())
        if self.target_proxy is not None:
            with contextlib.suppress(Exception):
                self.loop.run(self.target_proxy.stop())
        self.loop.close()
        if self.kafka is not None:
            self.resume_server(self.kafka.pid)
            self.kafka.stop()
        if self.s3 is not None:
            self.s3.stop()
        for pg in (self.events_pg, self.target_pg):
            if pg is not None:
                self.resume_server(pg.pid)
                pg.stop()
        if self.tmpfs is not None and self.tmpfs_mounted:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(self.tmpfs)], check=False)

    # -- processes ---------------------------------------------------------------------------

    def instance(self, name: str, index: int = 0) -> ServiceProcess:
        return self.services[name][index]

    def owner_process(self, owner: str) -> ServiceProcess:
        """The service process whose instance name a lease's owner carries."""
        for processes in self.services.values():
            for process in processes:
                if owner.endswith(process.instance):
                    return process
        raise KeyError(owner)

    @staticmethod
    def pause_server(pid: int | None) -> None:
        """SIGSTOP a server and its children (PostgreSQL's backends; Kafka's JVM)."""
        assert pid is not None
        os.killpg(os.getpgid(pid), signal.SIGSTOP)

    @staticmethod
    def resume_server(pid: int | None) -> None:
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGCONT)

    # -- talking to the system ---------------------------------------------------------------

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_ports[0]}"

    async def signed(self, topic: str, command: dict[str, Any], port: int | None = None) -> Any:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                f"http://127.0.0.1:{port or self.api_ports[0]}/api/v1/command-tokens",
                json={"topic": topic, "command": command},
                headers={"Authorization": f"Bearer {self.admin_key}"},
            )
        assert response.status_code == 200, response.text
        return response.json()["command"]

    async def command(self, topic: str, body: dict[str, Any], timeout: float = 60) -> CommandResult:
        assert self.gateway is not None
        signed = await self.signed(topic, {"command_id": str(uuid4()), **body})
        return await self.gateway.request(topic, signed, timeout=timeout)

    async def http(
        self, method: str, path: str, port: int | None = None, **kw: Any
    ) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.request(
                method,
                f"http://127.0.0.1:{port or self.api_ports[0]}{path}",
                headers={"Authorization": f"Bearer {self.admin_key}"},
                **kw,
            )

    # -- the simulated clock -----------------------------------------------------------------

    def now(self) -> datetime:
        assert self.db is not None
        rows = self.db.query("SELECT now FROM mb_sim_clock WHERE id = 1")
        return datetime.fromisoformat(rows[0][0])

    def advance(self, seconds: float) -> datetime:
        assert self.db is not None
        return SimulatedClock(self.db).advance(seconds)

    def reached(self) -> dict[str, datetime]:
        assert self.db is not None
        with contextlib.suppress(psycopg.Error):
            rows = self.db.query("SELECT service, reached FROM mb_clock_reached")
            return {s: datetime.fromisoformat(r) for s, r in rows}
        return {}

    async def wait_reached(
        self,
        when: datetime,
        wanted: tuple[str, ...] = ("scheduler", "retention"),
        timeout: float = 180,
    ) -> None:
        """Wait until ``wanted`` reported reaching ``when`` on the simulated clock."""
        deadline = time.monotonic() + timeout
        while True:
            reached = self.reached()
            if all(
                reached.get(s, datetime.min.replace(tzinfo=when.tzinfo)) >= when for s in wanted
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"services did not reach {when}: {reached}")
            await asyncio.sleep(0.1)

    # -- targets -----------------------------------------------------------------------------

    def sealed(self, region: str, cluster_id: str) -> ObjectStore:
        """The region's store as the services read it for ``cluster_id`` (encryption at rest)."""
        from managed_backups.shared.domain.cluster import Cluster
        from managed_backups.shared.encryption import ClusterEncryption

        assert self.settings is not None and self.store is not None
        cluster = self.store.get_or_none(Cluster.create_id(cluster_id), Cluster)
        assert cluster is not None, cluster_id
        objects = open_store(self.region_stores()[region])
        return ClusterEncryption(self.settings, self.store).seal(objects, cluster)

    def connection_ref(self) -> str:
        assert self.target_proxy is not None
        return f"postgresql://postgres@127.0.0.1:{self.target_proxy.port}/postgres"

    def target_password(self) -> str:
        assert self.target_pg is not None
        return self.target_pg.password

    def target(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """A direct connection to the backup targets' server (not through the proxy)."""
        assert self.target_pg is not None
        return psycopg.connect(self.target_pg.url_for(database), autocommit=True)

    def tmpfs_fill(self) -> Path:
        """Fill the local region's disk (a file taking every free byte)."""
        assert self.tmpfs is not None
        filler = self.tmpfs / "filler"
        free = shutil.disk_usage(self.tmpfs).free
        with filler.open("wb") as out, contextlib.suppress(OSError):
            out.write(b"\0" * free)
        return filler


@contextlib.contextmanager
def timed(label: str, into: dict[str, float]) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        into[label] = time.monotonic() - began


def within(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
