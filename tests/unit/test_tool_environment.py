"""The PostgreSQL client tools a service runs get the cluster's password and the connection
settings, and nothing else of the service's environment (its broker password, its settings, a
cloud credential, libpq variables set for the service itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from managed_backups.shared.cluster_connection import libpq_env
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import ClusterAccess
from managed_backups.shared.dataplane.tools import PASSED_TO_TOOLS, run_tool, tool_environment
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.sqldb import SqlDatabase

SERVICE_ONLY = {
    "MANAGED_BACKUPS_KAFKA_PASSWORD": "broker-secret",
    "MANAGED_BACKUPS_CREDENTIAL": "mbk_aaaa_bbbb",
    "MANAGED_BACKUPS_EVENT_STORE_URL": "postgresql://mb:store-secret@db/mb",
    "AWS_SECRET_ACCESS_KEY": "cloud-secret",
    "PGPASSWORD": "the-services-own",
    "PGHOST": "elsewhere",
}


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """What a child run as the tools are run really sees (``/usr/bin/env``)."""
    out = b"".join(run_tool(["/usr/bin/env", "-0"], env=env, step="env"))
    return dict(item.split("=", 1) for item in out.decode().split("\0") if item)


@pytest.fixture
def connection(tmp_path: Path) -> dict[str, str]:
    secrets = ConnectionSecrets(SqlDatabase(f"sqlite:///{tmp_path / 'db.sqlite'}"), tmp_path / "s")
    return libpq_env(secrets)


def test_a_tool_sees_the_clusters_password_and_nothing_of_the_service(
    monkeypatch: pytest.MonkeyPatch, connection: dict[str, str]
) -> None:
    for name, value in SERVICE_ONLY.items():
        monkeypatch.setenv(name, value)
    backup = PostgresAdapter("postgresql://u@h/postgres", password="cluster-pw", env=connection)
    restore = ClusterAccess("postgresql://u@h/postgres", env=connection, password="cluster-pw")
    for env in (backup.child_env(), restore.tool_env(), tool_environment(connection, "cluster-pw")):
        seen = child_environment(env)
        assert seen["PGPASSWORD"] == "cluster-pw"
        allowed = {*PASSED_TO_TOOLS, *connection, "PGPASSWORD", "PGCONNECT_TIMEOUT"}
        assert set(seen) <= allowed, set(seen) - allowed
        for value in SERVICE_ONLY.values():
            assert value not in "\0".join(seen.values())


def test_without_a_clusters_password_libpq_applies_but_never_the_services_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SERVICE_ONLY.items():
        monkeypatch.setenv(name, value)
    seen = child_environment(tool_environment())
    assert seen.get("PGHOST") == "elsewhere" and "PGPASSWORD" not in seen
    assert not [k for k in seen if k.startswith(("MANAGED_BACKUPS_", "AWS_"))]
