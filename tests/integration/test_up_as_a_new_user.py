"""The README's first commands, tried as a new user: `up`, then `publish`, then the API; the
broker `up` runs refuses a client without credentials, and each service holds its own broker
password only; the newcomer's walk-through of the README's "Access" section."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from managed_backups.shared.infra.kafka import free_ports

pytestmark = pytest.mark.integration


def publish(
    command: dict[str, object], data: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`managed-backups publish managed-backups.cluster-commands JSON --data-dir D`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "managed_backups.services.cli",
            "publish",
            "managed-backups.cluster-commands",
            json.dumps(command),
            "--data-dir",
            str(data),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass(frozen=True)
class Up:
    data: Path
    port: int
    env: dict[str, str]
    output: str

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`managed-backups ARGS --data-dir D`."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "managed_backups.services.cli",
                *args,
                "--data-dir",
                str(self.data),
            ],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("up") / "D"
    port, kafka_port = free_ports(2)
    # The broker's port as `up` remembers it from an earlier start: not 9092, which another
    # `up` on this machine (another test run) may take at the same moment.
    data.mkdir()
    (data / "kafka-bootstrap").write_text(f"127.0.0.1:{kafka_port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "managed_backups.services.cli",
            "up",
            "--data-dir",
            str(data),
            "--api-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        yield Up(data, port, env, "".join(lines))
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, rest
    assert "stopped" in rest


def test_up_publish_and_query_within_a_second(up: Up) -> None:
    data, port, env, output = up.data, up.port, up.env, up.output
    assert f"API:    http://127.0.0.1:{port}" in output, output
    assert "Kafka:  127.0.0.1:" in output
    admin_key = (data / "admin-api-key").read_text().strip()
    assert admin_key in output and admin_key.startswith("mbk_")

    command = {
        "type": "RegisterCluster",
        "cluster_id": "orders-prod",
        "name": "Orders",
        "organization": "acme",
        "tier": "STANDARD",
        "regions": ["us-east-1", "eu-west-1"],
        "database_version": "15.8",
        "connection_ref": "postgresql://backup@db.internal:5432/postgres",
    }
    published = publish(command, data, env)
    assert published.returncode == 0, published.stdout + published.stderr
    assert json.loads(published.stdout)["status"] == "ACCEPTED"
    accepted_at = time.monotonic()
    headers = {"Authorization": f"Bearer {admin_key}"}
    url = f"http://127.0.0.1:{port}/api/v1/clusters/orders-prod"
    while True:
        response = httpx.get(url, headers=headers, timeout=5)
        if response.status_code == 200:
            break
        assert time.monotonic() - accepted_at < 1.0, response.text
        time.sleep(0.02)
    assert time.monotonic() - accepted_at < 1.0
    assert response.json()["backup_region"] in ("us-east-1", "eu-west-1")
    assert httpx.get(url, timeout=5).status_code == 401

    rejected = publish(command, data, env)
    assert rejected.returncode == 1
    assert json.loads(rejected.stdout)["reason"] == "cluster orders-prod is already registered"

    # The cluster's password, from stdin, through the API up serves for this data directory
    # (its port, remembered there); the trail names who set it.
    secret = up.cli("clusters", "set-secret", "orders-prod", stdin="its-password\n")
    assert secret.returncode == 0, secret.stdout + secret.stderr
    listed = up.cli("clusters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)["clusters"]] == ["orders-prod"]
    events = httpx.get(f"{url}/events", headers=headers, timeout=5).json()["events"]
    assert [e["by"] for e in events if e["type"] == "ConnectionSecretSet"] == ["admin"]
    assert "its-password" not in json.dumps(events)
    assert (data.stat().st_mode & 0o777) == 0o700


def test_ups_broker_refuses_a_client_without_credentials(up: Up) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaConnectionError

    from managed_backups.contracts import topics

    bootstrap = (up.data / "kafka-bootstrap").read_text().strip()

    async def read_anonymously() -> None:
        consumer = AIOKafkaConsumer(
            topics.CLUSTER_COMMANDS,
            topics.COMMAND_RESULTS,
            bootstrap_servers=bootstrap,
            group_id="a-stranger",
            auto_offset_reset="earliest",
        )
        try:
            async with asyncio.timeout(30):
                await consumer.start()
                await consumer.getone()
        finally:
            await consumer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(read_anonymously())
    credentials = up.data / "kafka-credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    passwords = json.loads(credentials.read_text())
    # Each service was given its own broker password and no other.
    seen = 0
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(
                item.split("=", 1)
                for item in environ.read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
        except OSError:
            continue
        if variables.get("MANAGED_BACKUPS_DATA_DIR") != str(up.data):
            continue
        user = variables.get("MANAGED_BACKUPS_KAFKA_USERNAME")
        if user is None:
            continue
        seen += 1
        assert variables["MANAGED_BACKUPS_KAFKA_PASSWORD"] == passwords[user]
        others = [name for name, pw in passwords.items() if name != user and pw in str(variables)]
        assert not others, (user, others)
    assert seen >= 7


def test_a_newcomer_gives_an_operator_one_cluster(up: Up) -> None:
    """README, "Access": an organization, a service account with Cluster Operator on one
    cluster, its key, which lists that cluster's backups and is refused on another's."""
    created = up.cli("orgs", "create", "shop", "--name", "Shop Inc")
    assert created.returncode == 0, created.stderr
    for cluster_id in ("shop-orders", "shop-billing"):
        registered = publish(
            {
                "type": "RegisterCluster",
                "cluster_id": cluster_id,
                "name": cluster_id,
                "organization": "shop",
                "tier": "STANDARD",
                "regions": ["us-east-1"],
                "database_version": "15",
                "connection_ref": "postgresql://backup@db.internal:5432/postgres",
            },
            up.data,
            up.env,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
    account = up.cli("accounts", "create", "reporting", "--organization", "shop", "--json")
    assert account.returncode == 0, account.stderr
    granted = up.cli(
        "grants",
        "add",
        "--account",
        "shop/reporting",
        "--role",
        "CLUSTER_OPERATOR",
        "--cluster",
        "shop-orders",
    )
    assert granted.returncode == 0, granted.stderr
    key = up.cli("keys", "create", "--account", "shop/reporting", "--name", "reports", "--json")
    assert key.returncode == 0, key.stderr
    secret = json.loads(key.stdout)["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    own = httpx.get(f"{up.api}/api/v1/clusters/shop-orders/backups", headers=headers, timeout=10)
    assert own.status_code == 200 and "backups" in own.json(), own.text
    other = httpx.get(f"{up.api}/api/v1/clusters/shop-billing/backups", headers=headers, timeout=10)
    assert other.status_code == 404, other.text
    assert other.json()["message"] == "cluster shop-billing is not registered"
    listed = up.cli("keys", "list", "--account", "shop/reporting", "--json")
    assert listed.returncode == 0 and secret not in listed.stdout
    assert [k["name"] for k in json.loads(listed.stdout)["api_keys"]] == ["reports"]
    # The key cannot change settings, nor grant itself more.
    more = up.cli(
        "grants",
        "add",
        "--account",
        "shop/reporting",
        "--role",
        "CLUSTER_ADMIN",
        "--cluster",
        "shop-orders",
        "--credential",
        secret,
    )
    assert more.returncode == 1 and "does not exist" in more.stderr
    revoked = up.cli("keys", "revoke", json.loads(key.stdout)["api_key"]["id"])
    assert revoked.returncode == 0, revoked.stderr
    gone = httpx.get(f"{up.api}/api/v1/clusters/shop-orders/backups", headers=headers, timeout=10)
    assert gone.status_code == 401
