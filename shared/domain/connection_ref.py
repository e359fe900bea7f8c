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
the executor's operating-system identity (peer authentication).

:func:`libpq_environment_refusal` is the same rule for the executor's process environment:
variables that libpq applies to every connection and that the allow-list cannot override.
"""

from __future__ import annotations

from collections.abc import Mapping

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
    return values


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
