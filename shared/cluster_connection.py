"""How any service connects to a tenant's cluster (the executor for backups, the restore service
for restores): the cluster's allow-listed ``connection_ref``, its own secret, and libpq's own
lookups closed.

- the DSN holds only the parameters the connection_ref rule allows, re-checked at every use (a
  reference recorded before the rule existed is refused here, with its reason);
- every host is resolved here and each address checked (:func:`address_refusal`: never the
  installation's own endpoints, no loopback or link-local address unless allowed); the DSN then
  names those addresses (``hostaddr``, with ``host`` kept for TLS verification), so libpq and
  the client tools connect to exactly the addresses checked, whatever the name resolves to
  later (DNS rebinding);
- ``sslrootcert`` becomes the absolute path of its file in the CA directory;
- the password is the cluster's secret, passed explicitly; with none set it is explicitly
  empty, so libpq neither reads ``PGPASSWORD`` nor finds anything in the (empty) password file;
- the environment given to psycopg and to the PostgreSQL client tools replaces ``~/.pgpass``
  with an empty file, points service files and client certificate/key at nothing, and where
  the library supports it (libpq ≥ 16) refuses to send a password in clear.

Errors are :class:`~managed_backups.shared.dataplane.engine.BackupError` (``UNSUPPORTED`` for a
refused reference, ``AUTHENTICATION_FAILED`` for a secret that cannot be used), with the step.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

from managed_backups.shared.dataplane.engine import BackupError, ErrorCode
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import ClusterAccess
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_ref import (
    Address,
    OwnEndpoint,
    address_refusal,
    ca_file,
    parse_connection_ref,
)
from managed_backups.shared.domain.errors import Refused
from managed_backups.shared.secrets import ConnectionSecrets, SecretStoreError
from managed_backups.shared.settings import Settings

DEFAULT_PORT = 5432


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


@dataclass(frozen=True)
class NetworkPolicy:
    """Where tenants' connections may go (:func:`address_refusal`), and the CA directory."""

    own: tuple[OwnEndpoint, ...]
    allow_local: bool
    ca_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> NetworkPolicy:
        return cls(
            _own_endpoints_cached(settings), settings.allow_local_clusters, settings.cluster_ca_path
        )


def cluster_connection(
    cluster: Cluster, secrets: ConnectionSecrets, settings: Settings
) -> ClusterConnection:
    """The connection to ``cluster`` (``settings``: where connections may go, the CA directory,
    the client tools to choose from (``pg_bindirs``; empty: what the installation provides),
    and where version 0.1 kept one password file for every cluster, only to explain, when it
    exists, why it is no longer read)."""
    return ClusterConnection(
        _dsn(cluster, NetworkPolicy.from_settings(settings)),
        _password(cluster, secrets, settings.pgpass_file),
        libpq_env(secrets),
        tuple(settings.pg_bindirs),
    )


def _dsn(cluster: Cluster, policy: NetworkPolicy) -> str:
    try:
        params = parse_connection_ref(cluster.connection_ref)
        if "sslrootcert" in params:
            params["sslrootcert"] = ca_file(params["sslrootcert"], policy.ca_dir)
    except Refused as refused:
        raise BackupError(
            ErrorCode.UNSUPPORTED, refused.reason, "check the cluster's connection_ref"
        ) from None
    return make_conninfo("", **pinned(params, policy))


def pinned(params: dict[str, str], policy: NetworkPolicy) -> dict[str, str]:
    """``params`` with every host resolved and checked, and the connection pinned to the
    addresses checked: one ``host``/``hostaddr``/``port`` entry per address (libpq tries them
    in order; TLS verifies ``host``)."""
    hosts = params["host"].split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    entries: list[tuple[str, str, str]] = []
    for host, port_text in zip(hosts, ports, strict=False):
        port = int(port_text) if port_text.strip() else DEFAULT_PORT
        addresses = resolve(host, port)
        for address in addresses:
            refusal = address_refusal(host, address, port, policy.own, policy.allow_local)
            if refusal is not None:
                raise BackupError(
                    ErrorCode.UNSUPPORTED, refusal, "check the cluster's connection_ref"
                )
        entries += [(host, str(a), str(port)) for a in addresses]
    return {
        **params,
        "host": ",".join(e[0] for e in entries),
        "hostaddr": ",".join(e[1] for e in entries),
        "port": ",".join(e[2] for e in entries),
    }


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (in the resolver's order, without repeats)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BackupError(
            ErrorCode.CONNECTION_FAILED,
            f"cannot resolve host {host}: {exc}",
            "resolve the cluster's host",
        ) from None
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def own_endpoints(settings: Settings) -> tuple[OwnEndpoint, ...]:
    """Where the installation's own services listen, as this process resolves them: the event
    store, every Kafka bootstrap server, every S3-compatible region store's endpoint and the
    API. A service on a loopback or unspecified address is reachable at any address of this
    machine, so it is listed at each of them."""
    named: list[tuple[str, str, int]] = [("HTTP API", settings.api_host, settings.api_port)]
    store = urlsplit(settings.store_url)
    if store.scheme.startswith("postgres"):
        named.append(("event store", store.hostname or "127.0.0.1", store.port or DEFAULT_PORT))
    for server in settings.kafka_bootstrap_servers.split(","):
        server_host, _, server_port = server.strip().rpartition(":")
        if server_host and server_port.isdigit():
            named.append(("Kafka broker", server_host.strip("[]"), int(server_port)))
    for region, url in settings.region_stores.items():
        parts = urlsplit(url)
        endpoint = parse_qs(parts.query).get("endpoint", [""])[0]
        if parts.scheme == "s3" and endpoint:
            e = urlsplit(endpoint)
            default = 443 if e.scheme == "https" else 80
            named.append((f"object store of region {region}", e.hostname or "", e.port or default))
    found: list[OwnEndpoint] = []
    for what, host, port in named:
        for address in _addresses_of(host, port):
            own = OwnEndpoint(what, address, port)
            if own not in found:
                found.append(own)
    return tuple(found)


OWN_ENDPOINTS_TTL_SECONDS = 60.0
_own_cache: dict[tuple[str, ...], tuple[float, tuple[OwnEndpoint, ...]]] = {}


def _own_endpoints_cached(settings: Settings) -> tuple[OwnEndpoint, ...]:
    """:func:`own_endpoints`, resolved again at most once a minute per configuration."""
    key = (
        settings.api_host,
        str(settings.api_port),
        settings.store_url,
        settings.kafka_bootstrap_servers,
        *sorted(f"{k}={v}" for k, v in settings.region_stores.items()),
    )
    now = time.monotonic()
    cached = _own_cache.get(key)
    if cached is not None and now - cached[0] < OWN_ENDPOINTS_TTL_SECONDS:
        return cached[1]
    own = own_endpoints(settings)
    _own_cache[key] = (now, own)
    return own


def _addresses_of(host: str, port: int) -> Iterable[Address]:
    try:
        addresses = resolve(host or "0.0.0.0", port)
    except BackupError:
        return []
    if any(a.is_loopback or a.is_unspecified for a in addresses):
        addresses += _this_machine(port)
    return addresses


def _this_machine(port: int) -> list[Address]:
    found: list[Address] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    with contextlib.suppress(BackupError):
        found += resolve(socket.gethostname(), port)
    return found


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
