"""The recorded outcome of a command, saved atomically with the events the command caused.

Its id derives from who sent the command and its command id, so a redelivered or repeated command
finds it and answers the same result without acting again, two concurrent deliveries collide on
it and only one acts, and nobody can pre-empt another principal's command id. It keeps a hash of
the command's body (without the credential): the same command id with another body, topic or
type is refused (409) rather than answered with the first outcome.

Outcomes recorded by version 0.1 live at an id derived from the command id alone and carry no
hash (``CommandHandled`` version 1): they are still honoured for the principal who sent them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.shared.domain.ids import command_outcome_id, principal_command_outcome_id


class CommandOutcome(Aggregate):
    @staticmethod
    def create_id(command_id: UUID, by: str) -> UUID:
        return principal_command_outcome_id(by, command_id)

    @staticmethod
    def legacy_id(command_id: UUID) -> UUID:
        """Where version 0.1 recorded the outcome of ``command_id``."""
        return command_outcome_id(command_id)

    class CommandHandled(Aggregate.Created):
        class_version = 2
        command_id: UUID
        command_type: str
        cluster_id: str | None
        status: str
        code: int
        reason: str | None
        body_sha256: str | None
        at: datetime
        by: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["body_sha256"] = None

    @event(CommandHandled)
    def __init__(
        self,
        command_id: UUID,
        command_type: str,
        cluster_id: str | None,
        status: str,
        code: int,
        reason: str | None,
        body_sha256: str | None,
        at: datetime,
        by: str,
    ) -> None:
        self.command_id = command_id
        self.command_type = command_type
        self.cluster_id = cluster_id
        self.status = status
        self.code = code
        self.reason = reason
        self.body_sha256 = body_sha256
        self.by = by
        self.at = at
