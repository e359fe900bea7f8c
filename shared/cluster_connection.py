"""How any service connects to a tenant's cluster (the executor for backups, the restore service
for restores): the cluster's allow-listed ``connection_ref``, its own secret, and libpq's own
lookups closed.

- the DSN holds only the parameters the connection_ref rule allows, re-checked at every use (a
  reference recorded before the rule existed is refused here, with its reason);
- the password is the cluster's secret, passed explicitly; with none set it is explicitly
  empty, so libpq neither reads ``PGPASSWORD`` nor finds anything in the (empty) password file;
- the environment given to psycopg and to the PostgreSQL client tools replaces ``~/.pgpass``
  with an empty file, points service files and client certificate/key at nothing, and where
  the library supports it (libpq ≥ 16) refuses to send a password in clear.

Errors are :class:`~managed_backups.shared.dataplane.engine.BackupError` (``UNSUPPORTED`` for a
refused reference, ``AUTHENTICATION_FAILED`` for a secret that cannot be used), with the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from managed_backups.shared.dataplane.engine import BackupError, ErrorCode
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import ClusterAccess
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_ref import parse_connection_ref
from managed_backups.shared.domain.errors import Refused
from managed_backups.shared.secrets import ConnectionSecrets, SecretStoreError


@dataclass(frozen=True)
class ClusterConnection:
    dsn: str
    password: str
    env: dict[str, str]
    client_bindirs: tuple[Path, ...] = ()
    """The client tools to choose from (``MANAGED_BACKUPS_PG_BINDIRS``; empty: the default)."""

    def __repr__(self) -> str:  # never the password
        return f"ClusterConnection({self.dsn!r})"

    def postgres_adapter(self, **options: Any) -> PostgresAdapter:
        options.setdefault("client_bindirs", self.client_bindirs)
        return PostgresAdapter(self.dsn, password=self.password, env=self.env, **options)

    def restore_access(self) -> ClusterAccess:
        return ClusterAccess(
            dsn=self.dsn,
            env=self.env,
            password=self.password,
            client_bindirs=self.client_bindirs,
        )


def cluster_connection(
    cluster: Cluster,
    secrets: ConnectionSecrets,
    legacy_pgpass: Path,
    client_bindirs: Sequence[Path] = (),
) -> ClusterConnection:
    """The connection to ``cluster``; ``legacy_pgpass`` is where version 0.1 kept one password
    file for every cluster (only to explain, when it exists, why it is no longer read);
    ``client_bindirs``: the client tools to choose from (empty: what the installation
    provides)."""
    return ClusterConnection(
        _dsn(cluster),
        _password(cluster, secrets, legacy_pgpass),
        libpq_env(secrets),
        tuple(client_bindirs),
    )


def _dsn(cluster: Cluster) -> str:
    try:
        params = parse_connection_ref(cluster.connection_ref)
    except Refused as refused:
        raise BackupError(
            ErrorCode.UNSUPPORTED, refused.reason, "check the cluster's connection_ref"
        ) from None
    return make_conninfo("", **params)


def _password(cluster: Cluster, secrets: ConnectionSecrets, legacy_pgpass: Path) -> str:
    try:
        password = secrets.get(cluster.cluster_id)
    except SecretStoreError as exc:
        raise BackupError(ErrorCode.AUTHENTICATION_FAILED, str(exc), "read secret") from None
    if password is None and legacy_pgpass.exists():
        raise BackupError(
            ErrorCode.AUTHENTICATION_FAILED,
            f"cluster {cluster.cluster_id} has no connection secret, and the shared password "
            f"file {legacy_pgpass} is no longer read (a password is bound to its cluster): set "
            f"it with `managed-backups clusters set-secret {cluster.cluster_id}` or PUT "
            f"/api/v1/clusters/{cluster.cluster_id}/connection-secret",
            "read secret",
        )
    return password or ""


def libpq_env(secrets: ConnectionSecrets) -> dict[str, str]:
    nothing = str(secrets.dir / "none")
    env = {
        "PGPASSFILE": str(secrets.empty_passfile()),
        "PGSERVICEFILE": nothing,
        "PGSYSCONFDIR": nothing,
        "PGSSLCERT": nothing,
        "PGSSLKEY": nothing,
    }
    if psycopg.pq.version() >= 160000:
        env["PGREQUIREAUTH"] = "!password"
    return env


def without_secret_hint(cluster_id: str, secrets: ConnectionSecrets, message: str) -> str:
    """An authentication failure's message, plus what to do when the cluster has no secret set
    (the usual cause for a new cluster: its first full is sent at registration)."""
    try:
        missing = secrets.get(cluster_id) is None
    except SecretStoreError:
        return message
    if not missing:
        return message
    return (
        f"{message} (cluster {cluster_id} has no connection secret: set it with "
        f"`managed-backups clusters set-secret {cluster_id}`, which also takes the missing "
        "full backup)"
    )
