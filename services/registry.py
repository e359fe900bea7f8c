"""The one table of services: what ``managed-backups up`` starts, what ``managed-backups service
NAME`` runs, what the test harness starts, and what a deployment (compose.yaml) must run.

Adding a service is one line here: its name, the ``module:function`` of its composition root (an
``async def run(runtime, stop)``), what it does, and what it may do on the broker (its topics and
consumer group: its broker user gets ACLs for these and nothing else). Entry points are imported
only when a service is started, so one service's dependencies never load in another's process.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from managed_backups.contracts import topics
from managed_backups.shared.broker_access import TopicAccess

if TYPE_CHECKING:  # the command line reads this table without loading asyncio
    import asyncio

    from managed_backups.services.runtime import Runtime

ServiceMain = Callable[["Runtime", "asyncio.Event"], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    name: str
    entry_point: str
    """``module:function`` of the composition root."""
    description: str
    broker: TopicAccess = field(default_factory=TopicAccess)
    """Its topics and consumer group (``shared/broker_access.py``)."""

    def main(self) -> ServiceMain:
        module, _, function = self.entry_point.partition(":")
        main: ServiceMain = getattr(importlib.import_module(module), function)
        return main


def _commands(topic: str, group: str, *sends: str) -> TopicAccess:
    """A command consumer: its topic in its group; its results, dead letters and ``sends``."""
    return TopicAccess(
        reads=(topic,), writes=(topics.COMMAND_RESULTS, topics.DEAD_LETTER, *sends), group=group
    )


PUBLISHER = TopicAccess(reads=(topics.COMMAND_RESULTS,), writes=topics.COMMAND_TOPICS)
"""The command gateway's (the API's, and ``managed-backups publish``'s): every command topic,
and the results, read without a consumer group."""
COMMAND_LINE_USER = "cli"
"""The broker user of ``managed-backups publish`` (its rights: :data:`PUBLISHER`)."""

SERVICES: tuple[Service, ...] = (
    Service(
        "relay",
        "managed_backups.services.relay.service:run",
        "publishes the event store's log to managed-backups.events",
        TopicAccess(writes=(topics.EVENTS, topics.DEAD_LETTER)),
    ),
    Service(
        "projections",
        "managed_backups.services.projections.runner:run_projections",
        "keeps the read models the API queries",
    ),
    Service(
        "scheduler",
        "managed_backups.services.scheduler.service:run",
        "cluster commands and the backup schedule",
        _commands(topics.CLUSTER_COMMANDS, "managed-backups.scheduler", topics.BACKUP_COMMANDS),
    ),
    Service(
        "backup-executor",
        "managed_backups.services.executor.service:run",
        "takes and verifies backups",
        _commands(topics.BACKUP_COMMANDS, "managed-backups.backup-executor"),
    ),
    Service(
        "restore",
        "managed_backups.services.restore.service:run",
        "restores a cluster, a database or tables from a backup",
        _commands(topics.RESTORE_COMMANDS, "managed-backups.restore"),
    ),
    Service(
        "retention",
        "managed_backups.services.retention.service:run",
        "expires backups by the retention rules and deletes their stored objects; re-wraps "
        "chains' data keys (RotateEncryptionKeys)",
        _commands(topics.RETENTION_COMMANDS, "managed-backups.retention"),
    ),
    Service("api", "managed_backups.services.api.app:run", "the HTTP API", PUBLISHER),
)


def broker_users() -> dict[str, TopicAccess]:
    """Every broker user of an installation (one per service, and the command line's) and what
    each may do."""
    return {**{s.name: s.broker for s in SERVICES}, COMMAND_LINE_USER: PUBLISHER}


def service_names() -> tuple[str, ...]:
    """Every service, in start order (what ``up`` starts and a deployment must run)."""
    return tuple(service.name for service in SERVICES)


def service(name: str) -> Service:
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown service {name!r}; one of {', '.join(service_names())}")


def service_main(name: str) -> ServiceMain:
    return service(name).main()
