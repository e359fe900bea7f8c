"""API keys: the principals every command and request is checked against.

Only a SHA-256 of the key's secret is recorded (events are kept forever; the secret never is).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.shared.domain.ids import api_key_aggregate_id


class ApiKey(Aggregate):
    @staticmethod
    def create_id(key_id: str) -> UUID:
        return api_key_aggregate_id(key_id)

    class ApiKeyIssued(Aggregate.Created):
        key_id: str
        principal: str
        grants: list[dict[str, Any]]
        secret_sha256: str
        at: datetime
        by: str

    @event(ApiKeyIssued)
    def __init__(
        self,
        key_id: str,
        principal: str,
        grants: list[dict[str, Any]],
        secret_sha256: str,
        at: datetime,
        by: str,
    ) -> None:
        self.key_id = key_id
        self.principal = principal
        self.grants = grants
        self.secret_sha256 = secret_sha256
        self.revoked = False

    def revoke(self, at: datetime, by: str) -> None:
        self._revoked(key_id=self.key_id, at=at, by=by)

    class ApiKeyRevoked(Aggregate.Event):
        key_id: str
        at: datetime
        by: str

    @event(ApiKeyRevoked)
    def _revoked(self, key_id: str, at: datetime, by: str) -> None:
        self.revoked = True
