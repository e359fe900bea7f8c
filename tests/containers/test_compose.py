"""End to end on the compose stack: compose.yaml as users run it, on the built images.

``up -d`` starts Kafka, the PostgreSQL event store, every service and the API, plus a PostgreSQL
17 cluster in its own container (``compose.cluster.yaml``, ``MANAGED_BACKUPS_CLUSTER_IMAGE``). The test registers that cluster, gets
its first full backup (the schedule takes it at registration), changes data, takes an incremental
on demand, checks both are listed with their catalog and pass verification, then ``down -v``
and checks that no container, network or volume of the project is left.

Each step is one method of :class:`Stack`, so the restore step ("restore a table into a new
database, check its rows") is one more call at the end of the test once a restore service runs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from managed_backups.shared.infra.kafka import free_ports

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [ROOT / "compose.yaml", Path(__file__).with_name("compose.cluster.yaml")]
CLUSTER_DB_HOST = "orders-db"

Backup = dict[str, Any]


@dataclass
class Stack:
    """One compose project (a unique name) and the calls the test makes on it."""

    compose: list[str]
    project: str
    api_port: int
    env: dict[str, str]
    cluster_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_key: str = ""

    # -- compose -------------------------------------------------------------------------------
    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        proc = subprocess.run(
            [*self.compose, "-p", self.project, *files, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def exec(self, service: str, *command: str, stdin: str | None = None) -> str:
        return self.run("exec", "-T", service, *command, stdin=stdin).stdout

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
            out = subprocess.run(
                ["docker", *kind, "-q", "--filter", label],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.split()
            found += [f"{kind[0]} {name}" for name in out]
        return found

    # -- the API, the CLI in the api container ---------------------------------------------------
    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def wait_api(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.api_port}/healthz", timeout=5
                ) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the API did not answer within {timeout}s: {exc}"
                    ) from exc
            time.sleep(1)
        self.admin_key = self.exec("api", "cat", "/data/admin-api-key").strip()
        assert self.admin_key.startswith("mbk_"), "the API issued no administrator key"

    def publish(self, topic: str, command: dict[str, Any]) -> str:
        """Publish with the administrator key in the data volume; the command must be accepted."""
        return self.exec(
            "api", "managed-backups", "publish", topic, json.dumps(command), "--data-dir", "/data"
        )

    def anonymous_read(self) -> str:
        """A consumer without credentials on the compose network: what it reads, or how it
        was refused."""
        script = (
            "import asyncio\n"
            "from aiokafka import AIOKafkaConsumer\n"
            "async def main():\n"
            "    c = AIOKafkaConsumer('managed-backups.cluster-commands', "
            "bootstrap_servers='kafka:9092', group_id='a-stranger', auto_offset_reset='earliest')\n"
            "    try:\n"
            "        async with asyncio.timeout(30):\n"
            "            await c.start()\n"
            "            print('READ', (await c.getone()).value[:40])\n"
            "    except Exception as exc:\n"
            "        print('REFUSED', type(exc).__name__)\n"
            "    finally:\n"
            "        await c.stop()\n"
            "asyncio.run(main())\n"
        )
        return self.exec("api", "python", "-c", script).strip()

    # -- the cluster being backed up ------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres") -> str:
        return self.exec(
            CLUSTER_DB_HOST,
            "psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", database, "-Atc", sql,
        )  # fmt: skip

    def provide_cluster_password(self, cluster_id: str) -> None:
        """Set the cluster's password in the secret store, through the API (read from stdin)."""
        self.exec(
            "api", "managed-backups", "clusters", "set-secret", cluster_id,
            "--data-dir", "/data", "--api-url", "http://127.0.0.1:8080",
            stdin=self.cluster_password + "\n",
        )  # fmt: skip

    def restore_database(self, cluster_id: str, backup_id: str, database: str, new: str) -> str:
        """Restore one database of a backup under a new name with the CLI, following the job."""
        return self.exec(
            "api", "managed-backups", "restore", "start", cluster_id,
            "--type", "DATABASE", "--database", database, "--backup-id", backup_id,
            "--new-db-name", new, "--follow",
            "--data-dir", "/data", "--api", "http://127.0.0.1:8080",
        )  # fmt: skip

    def server_version(self) -> str:
        """The cluster's ``server_version`` (e.g. ``17.11``)."""
        return self.psql("SHOW server_version").strip().split()[0]

    def register(self, cluster_id: str) -> None:
        self.publish(
            "managed-backups.cluster-commands",
            {
                "type": "RegisterCluster",
                "cluster_id": cluster_id,
                "name": "Orders",
                "organization": "acme",
                "tier": "STANDARD",
                "regions": ["us-east-1"],
                "database_version": self.server_version(),
                "connection_ref": f"postgresql://postgres@{CLUSTER_DB_HOST}:5432/postgres",
            },
        )

    # -- backups --------------------------------------------------------------------------------
    def backups(self, cluster_id: str) -> list[Backup]:
        backups: list[Backup] = self.api(f"/api/v1/clusters/{cluster_id}/backups")["backups"]
        return backups

    def wait_backup(
        self, cluster_id: str, matches: Callable[[Backup], bool], what: str, timeout: float = 300
    ) -> Backup:
        """The first listed backup that ``matches``; a FAILED match fails the test at once."""
        deadline = time.monotonic() + timeout
        while True:
            for backup in self.backups(cluster_id):
                if matches(backup):
                    assert backup["status"] != "FAILED", f"{what} failed: {backup}"
                    if backup["status"] == "COMPLETE":
                        return backup
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no complete {what} within {timeout}s: {self.backups(cluster_id)}"
                )
            time.sleep(1)

    def take_incremental(self, cluster_id: str) -> str:
        backup_id = str(uuid.uuid4())
        self.publish(
            "managed-backups.backup-commands",
            {
                "type": "TakeBackup",
                "cluster_id": cluster_id,
                "backup_id": backup_id,
                "backup_type": "INCREMENTAL",
            },
        )
        return backup_id

    def verify(self, cluster_id: str, backup_id: str, timeout: float = 120) -> dict[str, Any]:
        """Ask the executor to verify a backup; its result, as the audit trail shows it."""
        self.publish(
            "managed-backups.backup-commands",
            {"type": "VerifyBackup", "cluster_id": cluster_id, "backup_id": backup_id},
        )
        deadline = time.monotonic() + timeout
        while True:
            events = self.api(f"/api/v1/clusters/{cluster_id}/events")["events"]
            for event in events:
                if event["type"] == "BackupVerified" and event["backup_id"] == backup_id:
                    return dict(event)
            if time.monotonic() > deadline:
                raise AssertionError(f"backup {backup_id} not verified within {timeout}s")
            time.sleep(1)


@pytest.fixture
def stack(compose: list[str]) -> Iterator[Stack]:
    project = f"mb-e2e-{uuid.uuid4().hex[:8]}"
    port = free_ports(1)[0]
    stack = Stack(compose, project, port, env={})
    stack.env = {
        **os.environ,
        "MANAGED_BACKUPS_API_PORT": str(port),
        "ORDERS_DB_PASSWORD": stack.cluster_password,
        "MANAGED_BACKUPS_EVENT_STORE_PASSWORD": secrets.token_hex(16),
    }
    try:
        stack.run("up", "-d", "--no-build")
        stack.wait_api()
        yield stack
    finally:
        # The application's logs, shown by pytest when the test failed (Kafka's are too chatty).
        services = ["scheduler", "backup-executor", "relay", "projections", "api"]
        logs = stack.run("logs", "--no-color", "--tail", "40", *services, check=False)
        print(logs.stdout[-20000:])
        stack.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
    assert stack.leftovers() == [], "compose down -v left these behind"


def test_full_and_incremental_backups_of_a_cluster_in_a_container(stack: Stack) -> None:
    cluster_id = f"orders-{uuid.uuid4().hex[:6]}"
    # A PostgreSQL 17 cluster (newer than Debian 12's client tools): the image's own 17 tools
    # back it up and restore it (MANAGED_BACKUPS_CLUSTER_PG_MAJOR names another image's major).
    expected_major = os.environ.get("MANAGED_BACKUPS_CLUSTER_PG_MAJOR", "17")
    assert stack.server_version().split(".")[0] == expected_major, stack.server_version()
    stack.psql("CREATE DATABASE shop")
    stack.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);"
        "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 5000) g",
        "shop",
    )
    # The first full is sent at registration: the executor takes it once the secret is set.
    stack.run("stop", "backup-executor")
    stack.register(cluster_id)
    stack.provide_cluster_password(cluster_id)
    stack.run("start", "backup-executor")

    full = stack.wait_backup(cluster_id, lambda b: b["type"] == "FULL", "first full backup")
    tables = stack.api(f"/api/v1/clusters/{cluster_id}/backups/{full['id']}/databases/shop/tables")[
        "tables"
    ]
    assert {(t["name"], t["row_count"]) for t in tables} == {("orders", 5000)}

    stack.psql(
        "INSERT INTO orders SELECT g, 'late ' || g FROM generate_series(5001, 5100) g", "shop"
    )
    incremental_id = stack.take_incremental(cluster_id)
    incremental = stack.wait_backup(
        cluster_id, lambda b: b["id"] == incremental_id, "incremental backup"
    )
    assert incremental["type"] == "INCREMENTAL"
    assert incremental["as_of_time"] > full["as_of_time"]

    listed = {b["id"]: b["status"] for b in stack.backups(cluster_id)}
    assert listed == {full["id"]: "COMPLETE", incremental_id: "COMPLETE"}
    for backup_id in (full["id"], incremental_id):
        verification = stack.verify(cluster_id, backup_id)
        assert verification["ok"] is True, verification
        assert verification["chunks_checked"] > 0

    # The broker lets nobody in without credentials (the commands above are on its topic).
    assert stack.anonymous_read().startswith("REFUSED"), "compose's broker let a stranger read"

    # The restore service, in its own container, restores the incremental's chain exactly.
    stack.restore_database(cluster_id, incremental_id, "shop", "shop_restored")
    digest = "SELECT count(*), md5(string_agg(id || ':' || item, ',' ORDER BY id)) FROM orders"
    assert stack.psql(digest, "shop_restored") == stack.psql(digest, "shop")
