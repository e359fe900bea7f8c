"""``managed-backups broker credentials|setup``: the broker's users and ACLs where ``up`` does not
run it (compose.yaml runs both as one-shot containers).

broker credentials --admin-dir A --users-dir U
    generate the passwords once: A holds the administrator's (``credentials.json``, the broker's
    JAAS file and its tools' properties), U one file per broker user, each its own password
broker setup --admin-dir A
    on the running broker, as its administrator: create the topics, then every user's SCRAM
    credential and ACLs (``shared/broker_access.py``); idempotent
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from managed_backups.services.registry import broker_users
from managed_backups.shared.broker_access import ADMIN_USER, BrokerCredentials

# The broker's client, the bus and the settings model are loaded by the commands that use
# them: this module is imported by every command line, including those that only call the API.

broker_app = typer.Typer(help="the broker's users and ACLs (outside `up`)", no_args_is_help=True)

AdminDir = Annotated[
    Path, typer.Option(help="the administrator's directory (only the broker and setup mount it)")
]
JAAS_FILE = "kafka_server_jaas.conf"
ADMIN_PROPERTIES = "admin.properties"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.chmod(mode)
    tmp.replace(path)


@broker_app.command("credentials")
def cmd_credentials(
    admin_dir: AdminDir,
    users_dir: Annotated[Path, typer.Option(help="one password file per broker user")],
) -> None:
    """Generate the broker's passwords (kept if they exist)."""
    from managed_backups.shared.infra.kafka import BrokerSecurity

    passwords = BrokerCredentials(admin_dir / BrokerCredentials.FILE).ensure(list(broker_users()))
    security = BrokerSecurity(passwords[ADMIN_USER])
    # Read by the broker's own user (another uid): the directory is the broker's and setup's.
    _write(admin_dir / JAAS_FILE, security.jaas_file(), 0o644)
    _write(admin_dir / ADMIN_PROPERTIES, security.admin_client_properties(), 0o644)
    for user in broker_users():
        _write(users_dir / user, passwords[user] + "\n", 0o600)
    print(f"broker credentials of {len(broker_users())} users in {users_dir}")


@broker_app.command("setup")
def cmd_setup(admin_dir: AdminDir) -> None:
    """Create the topics, the users and their ACLs on the running broker."""
    import asyncio

    from managed_backups.shared.broker_access import KafkaAuth, provision
    from managed_backups.shared.bus import ensure_topics
    from managed_backups.shared.settings import Settings

    settings = Settings()
    passwords = BrokerCredentials(admin_dir / BrokerCredentials.FILE).ensure(list(broker_users()))
    admin = passwords[ADMIN_USER]
    bootstrap = settings.kafka_bootstrap_servers

    async def setup() -> None:
        await ensure_topics(bootstrap, timeout=120, auth=KafkaAuth(ADMIN_USER, admin, "PLAIN"))
        users = {user: (passwords[user], access) for user, access in broker_users().items()}
        await provision(bootstrap, admin, users)

    asyncio.run(setup())
    print(f"topics, {len(broker_users())} broker users and their ACLs are set up on {bootstrap}")
