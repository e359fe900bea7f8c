"""The answer to every command, published on ``managed-backups.command-results``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from managed_backups.contracts.base import Contract
from managed_backups.contracts.enums import CommandStatus


class CommandResult(Contract):
    schema_version: Literal[1] = Field(default=1, description="Version of this message's shape.")
    command_id: UUID | None = Field(
        description="The command's id; None when the message could not even be parsed."
    )
    command_type: str | None = Field(
        default=None, description="The command's type, if it could be read."
    )
    status: CommandStatus = Field(description="ACCEPTED or REJECTED.")
    code: int = Field(
        description=(
            "HTTP-like status: 200 accepted, 400 bad value, 401 no or wrong credential, "
            "403 role missing, 404 unknown cluster, 409 conflict, 422 malformed."
        )
    )
    reason: str | None = Field(default=None, description="Why it was rejected, for a human.")
    cluster_id: str | None = Field(
        default=None, description="The cluster the command concerned, if known."
    )
    position: int | None = Field(
        default=None,
        description="Event-store position of the last event the command recorded, if any: "
        "a reader whose projection has reached it sees the change.",
    )
    handled_at: datetime = Field(description="When the command was handled, on the system's clock.")


class DeadLetter(Contract):
    """A message that could not be processed, kept for an operator with the error."""

    schema_version: Literal[1] = Field(default=1, description="Version of this message's shape.")
    topic: str = Field(description="Topic the message was read from.")
    partition: int = Field(description="Partition the message was read from.")
    offset: int = Field(description="Offset of the message in its partition.")
    key: str | None = Field(
        description="The message's key, decoded leniently; None if it had none."
    )
    payload: str = Field(description="The message as received (decoded leniently, truncated).")
    error: str = Field(description="Why the message could not be processed.")
    received_at: datetime = Field(description="When the dead letter was written.")
