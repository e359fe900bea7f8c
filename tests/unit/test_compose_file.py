"""compose.yaml runs every service of the system, in a shape both Compose v1 and v2 accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from managed_backups.services.cli import SERVICES

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_every_service_runs_in_its_own_container() -> None:
    services = compose()["services"]
    commands = {name: spec.get("command") for name, spec in services.items()}
    for name in SERVICES:
        assert commands.get(name) == ["service", name], f"compose.yaml does not run {name}"
    assert set(services) == {*SERVICES, *ONE_SHOTS, "kafka", "postgres"}


def test_restart_policies_health_checks_and_data_volume() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        # A one-shot restarted whenever it exits would run for ever.
        expected = "on-failure" if name in ONE_SHOTS else "unless-stopped"
        assert spec.get("restart") == expected, name
    for name in ("kafka", "postgres", "api"):
        assert "test" in services[name]["healthcheck"], name
    for name in SERVICES:
        assert "backup-data:/data" in services[name]["volumes"], name
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert set(compose()["volumes"]) == {
        "backup-data",
        "kafka-data",
        "postgres-data",
        "broker-admin",
        "broker-users",
        "api-signing-key",
        "scheduler-signing-key",
    }


def test_the_broker_authenticates_each_service_as_itself() -> None:
    """Each service logs in as its own broker user (its ACLs: services/registry.py); only the
    broker and its setup see the administrator's password; only the API and the scheduler
    hold a signing key, each its own."""
    services = compose()["services"]
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_LISTENERS"].startswith("SASL_PLAINTEXT://")
    protocols = kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert {p.split(":")[1] for p in protocols} == {"SASL_PLAINTEXT"}
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == "User:admin"
    assert services["kafka"]["depends_on"]["broker-credentials"]["condition"] == (
        "service_completed_successfully"
    )
    for name in SERVICES:
        spec = services[name]
        assert spec["environment"]["MANAGED_BACKUPS_KAFKA_USERNAME"] == name
        assert spec["environment"]["MANAGED_BACKUPS_KAFKA_PASSWORD_FILE"] == f"/broker-users/{name}"
        assert spec["depends_on"]["broker-setup"]["condition"] == "service_completed_successfully"
        keys = [v for v in spec["volumes"] if v.endswith(":/signing-keys")]
        assert keys == ([f"{name}-signing-key:/signing-keys"] if name in SIGNERS else []), name
    admins = {
        n
        for n, spec in services.items()
        if any("broker-admin" in v for v in spec.get("volumes", []))
    }
    assert admins == {"kafka", "broker-credentials", "broker-setup"}


ONE_SHOTS = {"broker-credentials", "broker-setup"}
SIGNERS = {"api", "scheduler"}


def test_valid_for_compose_v1_too() -> None:
    # Compose 1.29 rejects a top-level `name` (v2 accepts it): the project name is `-p`'s.
    assert "name" not in compose()
    assert "version" not in compose()  # obsolete in v2, and not needed by 1.27+


def test_images_are_configurable() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("${MANAGED_BACKUPS_KAFKA_IMAGE:-apache/kafka:")
    assert services["postgres"]["image"].startswith("${MANAGED_BACKUPS_POSTGRES_IMAGE:-postgres:")
    assert services["api"]["image"] == "${MANAGED_BACKUPS_IMAGE:-managed-backups:local}"


def test_no_default_passwords_and_no_local_clusters() -> None:
    """Compose refuses to start without an event-store password (none is built in), and its
    services never connect to loopback or link-local addresses for a tenant."""
    text = COMPOSE.read_text()
    assert ":-mb}" not in text
    assert text.count("${MANAGED_BACKUPS_EVENT_STORE_PASSWORD:?") == 2
    env = compose()["x-managed-backups-env"]
    assert env["MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS"] == "false"
