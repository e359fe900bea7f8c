"""Who may use the broker, and for what: one SASL/SCRAM user per service (and one for the
command line), and ACLs per topic, so a service reads and writes its own topics only.

- :class:`KafkaAuth`: how a client logs in (every aiokafka client, every FastStream broker).
- :class:`TopicAccess`: what one user may do; the table of who needs what is
  ``services/registry.py`` (each service's topics and consumer group).
- :func:`provision`: the broker's administrator creates (or updates) the SCRAM users and their
  ACLs on the running broker, in two requests: idempotent, so ``managed-backups up`` (and
  compose's setup) runs it at every start and an added service or topic just gets its rights.
- :class:`BrokerCredentials`: the passwords, generated once into a file readable by its owner
  only (``<data-dir>/kafka-credentials.json``, mode 0600); each service is given its own.

The two Kafka requests :func:`provision` sends are in ``shared/broker_requests.py``, loaded only
when it runs: this module is also read by every command line (the registry's table of who may
do what), which must not pay for the broker's client.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

SCRAM_SHA_256 = "SCRAM-SHA-256"
ADMIN_USER = "admin"
SCRAM_ITERATIONS = 8192
TOPIC_PREFIX = "managed-backups."


@dataclass(frozen=True)
class KafkaAuth:
    """A client's login: SASL/SCRAM (a service) or PLAIN (the broker's administrator)."""

    username: str
    password: str
    mechanism: str = SCRAM_SHA_256

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of aiokafka's clients (producer, consumer, admin)."""
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }

    def faststream_security(self) -> Any:
        from faststream.security import SASLPlaintext, SASLScram256

        if self.mechanism == "PLAIN":
            return SASLPlaintext(username=self.username, password=self.password)
        return SASLScram256(username=self.username, password=self.password)

    def __repr__(self) -> str:
        return f"KafkaAuth({self.username!r}, {self.mechanism})"


def client_options(auth: KafkaAuth | None) -> dict[str, Any]:
    return auth.client_options() if auth is not None else {}


@dataclass(frozen=True)
class TopicAccess:
    """What one broker user may do: consume ``reads`` (in ``group``, if it has one), produce
    to ``writes``; every user may see the topics exist (to check them at start)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    group: str | None = None


# -- Kafka's ACL vocabulary (org.apache.kafka.common.acl / resource) -----------------------------


class ResourceType(IntEnum):
    TOPIC = 2
    GROUP = 3


class PatternType(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    DESCRIBE = 8


ALLOW = 3


def acl_creations(user: str, access: TopicAccess) -> list[tuple[int, str, int, str, str, int, int]]:
    """The ACL bindings of ``user`` (resource type, name, pattern, principal, host, operation,
    permission), as CreateAcls carries them."""
    principal = f"User:{user}"

    def allow(
        kind: ResourceType, name: str, operation: Operation, pattern: PatternType
    ) -> tuple[int, str, int, str, str, int, int]:
        return (kind, name, pattern, principal, "*", operation, ALLOW)

    creations = [allow(ResourceType.TOPIC, TOPIC_PREFIX, Operation.DESCRIBE, PatternType.PREFIXED)]
    for topic in access.reads:
        creations.append(allow(ResourceType.TOPIC, topic, Operation.READ, PatternType.LITERAL))
    for topic in access.writes:
        creations.append(allow(ResourceType.TOPIC, topic, Operation.WRITE, PatternType.LITERAL))
    if access.group is not None:
        creations.append(
            allow(ResourceType.GROUP, access.group, Operation.READ, PatternType.LITERAL)
        )
    return creations


class ProvisioningError(RuntimeError):
    pass


async def provision(
    bootstrap_servers: str,
    admin_password: str,
    users: dict[str, tuple[str, TopicAccess]],
    timeout: float = 30,
) -> None:
    """Create or update every user's SCRAM credential and ACLs, logged in as the administrator
    (``users``: name → (password, access))."""
    from aiokafka.client import AIOKafkaClient

    from managed_backups.shared.broker_requests import AlterUserScramCredentials, CreateAcls

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        client_id="managed-backups-provisioning",
        **KafkaAuth(ADMIN_USER, admin_password, "PLAIN").client_options(),
    )
    await client.bootstrap()
    try:
        node = client.get_random_node()
        scram = await client.send(
            node, AlterUserScramCredentials({name: pw for name, (pw, _) in users.items()})
        )
        failed = [r for r in scram.to_object()["results"] if r["error_code"]]
        if failed:
            raise ProvisioningError(f"the broker refused SCRAM credentials: {failed}")
        creations = [c for name, (_, access) in users.items() for c in acl_creations(name, access)]
        acls = await client.send(node, CreateAcls(creations))
        refused = [r for r in acls.to_object()["creation_responses"] if r["error_code"]]
        if refused:
            raise ProvisioningError(f"the broker refused ACLs: {refused}")
    finally:
        await client.close()
    for name, (password, _) in users.items():
        await _wait_until_accepted(bootstrap_servers, KafkaAuth(name, password), timeout)


async def _wait_until_accepted(bootstrap_servers: str, auth: KafkaAuth, timeout: float) -> None:
    """A new SCRAM credential is usable once the broker applied it from its metadata log, a
    moment after the request succeeded: a service started before would be refused once."""
    import asyncio

    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, **auth.client_options())
        try:
            await client.bootstrap()
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise ProvisioningError(f"{auth.username} cannot log in: {exc}") from exc
            await asyncio.sleep(0.1)
        finally:
            await client.close()


# -- the passwords -------------------------------------------------------------------------------


class BrokerCredentials:
    """Every broker password of an installation, in one file readable by its owner only."""

    FILE = "kafka-credentials.json"

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self, users: list[str]) -> dict[str, str]:
        """The passwords of ``users`` and the administrator, made for those that have none."""
        known: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}
        wanted = [ADMIN_USER, *users]
        if any(name not in known for name in wanted):
            known.update({n: secrets.token_urlsafe(24) for n in wanted if n not in known})
            tmp = self.path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(known, f, indent=2)
            tmp.replace(self.path)
        return known

    def auth(self, user: str) -> KafkaAuth | None:
        """``user``'s login, if the file has it (None: no file, a plaintext broker)."""
        if not self.path.exists():
            return None
        password = json.loads(self.path.read_text()).get(user)
        return KafkaAuth(user, password) if password else None
