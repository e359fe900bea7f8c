"""The container tests: the compose stack, on images built beforehand.

Collected only with ``MANAGED_BACKUPS_TEST_BACKEND=containers`` (the default run needs no Docker).
They need an engine at ``$DOCKER_HOST`` and the images compose.yaml names (the public ones, or
those ``scripts/docker-local`` builds, named by its ``MANAGED_BACKUPS_*_IMAGE`` variables); a
missing engine, image or Compose fails them, it never skips.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from tests.infra.backend import require_docker


def compose_command() -> list[str]:
    """``$MANAGED_BACKUPS_COMPOSE`` (e.g. ``docker compose``), else Compose v2, else v1."""
    configured = os.environ.get("MANAGED_BACKUPS_COMPOSE", "").strip()
    if configured:
        return shlex.split(configured)
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


@pytest.fixture(scope="session")
def compose() -> list[str]:
    require_docker()
    return compose_command()
