"""Which backend the test fixtures start their services on: local processes or containers.

The choice is explicit, never "whenever a Docker engine answers": a test run on a machine where
someone else runs an engine must not silently switch to containers.

``MANAGED_BACKUPS_TEST_BACKEND``:

- ``local`` (default): a real Kafka from the cached Maven Central jars, throw-away PostgreSQL
  clusters from Debian's binaries, moto's S3-compatible server. No Docker needed.
- ``containers``: Kafka and PostgreSQL run in containers started through testcontainers
  (images from ``MANAGED_BACKUPS_KAFKA_IMAGE`` / ``MANAGED_BACKUPS_POSTGRES_IMAGE``); the engine
  is the one ``DOCKER_HOST`` names (or the default socket). No engine answering is an error,
  never a fallback to local processes.

Whatever the backend, ``KAFKA_BOOTSTRAP_SERVERS``, ``POSTGRES_URL`` and ``S3_ENDPOINT_URL``
point the tests at services that already run, and win.
"""

from __future__ import annotations

import os
from enum import StrEnum

from tests.infra.docker import docker_available

__all__ = [
    "BACKEND_ENV",
    "TestBackend",
    "TestBackendError",
    "require_docker",
    "test_backend",
]

BACKEND_ENV = "MANAGED_BACKUPS_TEST_BACKEND"


class TestBackend(StrEnum):
    __test__ = False  # not a pytest test class

    LOCAL = "local"
    CONTAINERS = "containers"


class TestBackendError(RuntimeError):
    """The backend setting is invalid, or the chosen backend cannot run here."""

    __test__ = False


def test_backend() -> TestBackend:
    """The backend ``MANAGED_BACKUPS_TEST_BACKEND`` names (``local`` when unset or empty).

    Raises :class:`TestBackendError` for any other value, naming the accepted ones.
    """
    raw = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not raw:
        return TestBackend.LOCAL
    try:
        return TestBackend(raw)
    except ValueError:
        accepted = ", ".join(b.value for b in TestBackend)
        raise TestBackendError(
            f"{BACKEND_ENV}={raw!r} is not a test backend; use one of: {accepted}"
        ) from None


test_backend.__test__ = False  # type: ignore[attr-defined]


def require_docker() -> None:
    """Raise :class:`TestBackendError` unless a Docker engine answers at ``$DOCKER_HOST``."""
    if not docker_available():
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise TestBackendError(
            f"{BACKEND_ENV}=containers but no Docker engine answers at {where}; "
            "start one (scripts/docker-local prepares this machine) or use the local backend"
        )
