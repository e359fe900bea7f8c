"""The recorded outcome of a command, saved atomically with the events the command caused.

Its id derives from the command id, so a redelivered or repeated command finds it and answers the
same result without acting again; two concurrent deliveries collide on it and only one acts.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.shared.domain.ids import command_outcome_id


class CommandOutcome(Aggregate):
    @staticmethod
    def create_id(command_id: UUID) -> UUID:
        return command_outcome_id(command_id)

    @event("CommandHandled")
    def __init__(
        self,
        command_id: UUID,
        command_type: str,
        cluster_id: str | None,
        status: str,
        code: int,
        reason: str | None,
        at: datetime,
        by: str,
    ) -> None:
        self.command_id = command_id
        self.command_type = command_type
        self.cluster_id = cluster_id
        self.status = status
        self.code = code
        self.reason = reason
        self.at = at
