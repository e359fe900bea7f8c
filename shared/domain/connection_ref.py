"""Rule: "a cluster's connection_ref names where its database is, and nothing else".

A tenant writes ``connection_ref``; the executor connects with it using the cluster's own secret.
Anything beyond *where* (host, port, database, user) and *how to check the server* (TLS mode and
root certificate) would let a tenant steer the executor's libpq: ``hostaddr`` sends the
connection elsewhere than the host name the secret was set for, ``passfile`` / ``service`` read
files of the executor's machine, client keys and certificates present the installation's
identity, ``options`` changes server settings. Those are refused with a reason.

The check parses the reference with libpq's own parser (through psycopg), so percent-encoded
keywords (``?%70assword=``) are decoded exactly as libpq decodes them before the allow-list is
applied. Local socket paths are refused too: they would reach this machine's own servers under
the executor's operating-system identity (peer authentication). ``sslrootcert`` names a file of
the installation's CA directory by its bare name (or ``system``, libpq's own trust store):
never a path, so it cannot name any other file of the service's machine (the secret store's
key, say); :func:`ca_file` finds it there.

Where a connection may go is :func:`address_refusal`: never to one of the installation's own
endpoints (its event store, broker, object stores, API), and not to loopback, link-local or
unspecified addresses unless the installation allows them (local development). It is applied
to every address a host name resolves to, and the connection is then made to exactly those
addresses (``shared/cluster_connection.py``), so a name that resolves elsewhere the next time
(DNS rebinding) cannot slip past it.

:func:`libpq_environment_refusal` is the same rule for the executor's process environment:
variables that libpq applies to every connection and that the allow-list cannot override.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from managed_backups.shared.domain.errors import BadValue

ALLOWED_PARAMETERS = ("host", "port", "dbname", "user", "sslmode", "sslrootcert")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_WHY_REFUSED = {
    "password": "passwords belong in the cluster's secret store, never in connection_ref "
    "(events are kept forever)",
    "hostaddr": "hostaddr would connect somewhere other than the host name",
    "passfile": "passfile would read a password file of the executor's machine",
    "service": "service would read connection settings from the executor's machine",
    "servicefile": "servicefile would read connection settings from the executor's machine",
    "sslkey": "client keys would present the installation's identity",
    "sslcert": "client certificates would present the installation's identity",
    "sslpassword": "client keys would present the installation's identity",
    "sslcrl": "it reads files of the executor's machine",
    "sslcrldir": "it reads files of the executor's machine",
    "options": "options would change server settings of the backup session",
    "require_auth": "the executor chooses the authentication methods it accepts",
    "channel_binding": "the executor chooses the authentication methods it accepts",
    "krbsrvname": "Kerberos/GSSAPI would use the executor's credentials",
    "gssencmode": "Kerberos/GSSAPI would use the executor's credentials",
    "gsslib": "Kerberos/GSSAPI would use the executor's credentials",
}

# libpq variables applied to every connection of a process that connection_ref cannot override
# (the executor passes password, passfile, client certificate and key explicitly).
UNSAFE_ENVIRONMENT = (
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGHOSTADDR",
    "PGOPTIONS",
    "PGSSLPASSWORD",
    "PGKRBSRVNAME",
    "PGGSSLIB",
)


def parse_connection_ref(ref: str) -> dict[str, str]:
    """The libpq parameters of ``ref`` (a ``postgresql://`` URL), or :class:`BadValue` naming
    the first parameter refused and why."""
    if not ref.startswith(("postgresql://", "postgres://")):
        raise BadValue("connection_ref must be a postgresql:// URL")
    try:
        params = conninfo_to_dict(ref)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unparseable"
        raise BadValue(f"connection_ref is not a valid libpq URL: {reason}") from None
    values = {key: str(value) for key, value in params.items() if value is not None}
    for key in sorted(values):
        if key not in ALLOWED_PARAMETERS:
            why = _WHY_REFUSED.get(key, "it is not one of the parameters a cluster may set")
            raise BadValue(
                f"connection_ref parameter {key!r} is not allowed: {why} "
                f"(allowed: {', '.join(ALLOWED_PARAMETERS)})"
            )
    hosts = [h for h in values.get("host", "").split(",")]
    if not any(hosts):
        raise BadValue("connection_ref must name the cluster's host")
    for host in hosts:
        if not host or host.startswith(("/", "@")) or any(c.isspace() for c in host):
            raise BadValue(
                f"connection_ref host {host!r} is not a network host name or address: local "
                "sockets would reach this machine's servers as the executor"
            )
    if "sslmode" in values and values["sslmode"] not in SSL_MODES:
        raise BadValue(f"connection_ref sslmode must be one of {', '.join(SSL_MODES)}")
    if "sslrootcert" in values:
        sslrootcert_names_a_ca_file(values["sslrootcert"])
    return values


SYSTEM_TRUST = "system"
"""libpq's (≥ 16) name for the operating system's trust store."""
_CA_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
CA_DIR_SETTING = "MANAGED_BACKUPS_CLUSTER_CA_DIR"


def sslrootcert_names_a_ca_file(value: str) -> None:
    """``sslrootcert`` is the bare name of a file in the installation's CA directory (or
    ``system``): a path could name any file of the service's machine."""
    if value == SYSTEM_TRUST:
        return
    if not _CA_FILE_NAME.fullmatch(value) or ".." in value:
        raise BadValue(
            f"connection_ref sslrootcert {value!r} must be the name of a file in the "
            f"installation's CA directory ({CA_DIR_SETTING}), without a path, or 'system'"
        )


def ca_file(value: str, ca_dir: Path) -> str:
    """The absolute path libpq reads for ``sslrootcert`` ``value``: a file under ``ca_dir``
    (symbolic links resolved: one pointing out of the directory is refused), or ``system``."""
    sslrootcert_names_a_ca_file(value)
    if value == SYSTEM_TRUST:
        return value
    root = ca_dir.resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise BadValue(
            f"connection_ref sslrootcert {value!r} is not a file of the installation's CA "
            f"directory {root} ({CA_DIR_SETTING}); an operator puts the cluster's CA "
            "certificate there"
        )
    return str(path)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCAL_SETTING = "MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS"


@dataclass(frozen=True)
class OwnEndpoint:
    """One of the installation's own services, where no tenant's connection may go."""

    what: str
    address: Address
    port: int


def address_refusal(
    host: str,
    address: Address,
    port: int,
    own: Sequence[OwnEndpoint],
    allow_local: bool,
) -> str | None:
    """Why a tenant's connection to ``address``:``port`` (``host`` resolved) is refused, or
    None. The installation's own endpoints never; loopback, link-local (cloud metadata
    included) and unspecified addresses only where the installation allows local clusters."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for endpoint in own:
        if endpoint.port == port and endpoint.address == address:
            return (
                f"connection_ref host {host} ({address} port {port}) is this installation's "
                f"{endpoint.what}: a cluster's connection never goes to the system's own services"
            )
    if allow_local:
        return None
    for local, kind in (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_unspecified, "unspecified"),
    ):
        if local:
            return (
                f"connection_ref host {host} resolves to {address}, a {kind} address: it "
                "would reach the services' own machine or network; refused unless the "
                f"installation allows local clusters ({LOCAL_SETTING}=true, for local "
                "development)"
            )
    return None


def libpq_environment_refusal(environ: Mapping[str, str]) -> str | None:
    """Why a process with ``environ`` must not connect to tenants' clusters (None if it may)."""
    found = [name for name in UNSAFE_ENVIRONMENT if environ.get(name)]
    if not found:
        return None
    return (
        f"{', '.join(found)} set in the environment: libpq would apply "
        f"{'it' if len(found) == 1 else 'them'} to every cluster's connections; unset "
        f"{'it' if len(found) == 1 else 'them'} for the backup-executor"
    )
