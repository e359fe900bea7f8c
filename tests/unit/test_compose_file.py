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
    assert set(services) == {*SERVICES, "kafka", "postgres"}


def test_restart_policies_health_checks_and_data_volume() -> None:
    services = compose()["services"]
    for name, spec in services.items():
        assert spec.get("restart") == "unless-stopped", name
    for name in ("kafka", "postgres", "api"):
        assert "test" in services[name]["healthcheck"], name
    for name in SERVICES:
        assert "backup-data:/data" in services[name]["volumes"], name
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert set(compose()["volumes"]) == {"backup-data", "kafka-data", "postgres-data"}


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
