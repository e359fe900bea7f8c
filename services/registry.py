"""The one table of services: what ``managed-backups up`` starts, what ``managed-backups service
NAME`` runs, what the test harness starts, and what a deployment (compose.yaml) must run.

Adding a service is one line here: its name, the ``module:function`` of its composition root (an
``async def run(runtime, stop)``), and what it does. Entry points are imported only when a
service is started, so one service's dependencies never load in another's process.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    def main(self) -> ServiceMain:
        module, _, function = self.entry_point.partition(":")
        main: ServiceMain = getattr(importlib.import_module(module), function)
        return main


SERVICES: tuple[Service, ...] = (
    Service(
        "relay",
        "managed_backups.services.relay.service:run",
        "publishes the event store's log to managed-backups.events",
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
    ),
    Service(
        "backup-executor",
        "managed_backups.services.executor.service:run",
        "takes and verifies backups",
    ),
    Service(
        "restore",
        "managed_backups.services.restore.service:run",
        "restores a cluster, a database or tables from a backup",
    ),
    Service(
        "retention",
        "managed_backups.services.retention.service:run",
        "expires backups by the retention rules and deletes their stored objects",
    ),
    Service("api", "managed_backups.services.api.app:run", "the HTTP API"),
)


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
