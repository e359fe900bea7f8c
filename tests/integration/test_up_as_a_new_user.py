"""The README's first command, tried as a new user: `up`, then `publish`, then the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def test_up_publish_and_query_within_a_second(tmp_path: Path) -> None:
    data = tmp_path / "D"
    port = free_ports(1)[0]
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
        output = "".join(lines)
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

        # The cluster's password, from stdin, through the API up serves for this data
        # directory (its port, remembered there); the trail names who set it.
        secret = subprocess.run(
            [
                sys.executable,
                "-m",
                "managed_backups.services.cli",
                "clusters",
                "set-secret",
                "orders-prod",
                "--data-dir",
                str(data),
            ],
            env=env,
            input="its-password\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert secret.returncode == 0, secret.stdout + secret.stderr
        listed = subprocess.run(
            [
                sys.executable,
                "-m",
                "managed_backups.services.cli",
                "clusters",
                "list",
                "--json",
                "--data-dir",
                str(data),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        assert [c["id"] for c in json.loads(listed.stdout)["clusters"]] == ["orders-prod"]
        events = httpx.get(f"{url}/events", headers=headers, timeout=5).json()["events"]
        assert [e["by"] for e in events if e["type"] == "ConnectionSecretSet"] == ["admin"]
        assert "its-password" not in json.dumps(events)
        assert (data.stat().st_mode & 0o777) == 0o700
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, rest
    assert "stopped" in rest
