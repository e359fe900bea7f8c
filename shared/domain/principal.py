"""API keys issued by version 0.1: read, authenticated and revocable, never issued any more.

Such a key names its principal and its grants itself, and its ``ApiKeyIssued`` event carries a
SHA-256 of its secret (stored events are never rewritten, so it stays there; it never travels on
the wire: :func:`managed_backups.shared.eventstore.to_wire_event` leaves it out). Keys issued
today belong to a service account (:mod:`managed_backups.shared.domain.identity`) and no event
holds their hash. The class was named ``ApiKey``; its stored topics resolve here
(:mod:`managed_backups.shared.eventstore`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from managed_backups.shared.domain.errors import Conflict
from managed_backups.shared.domain.ids import api_key_aggregate_id


class LegacyApiKey(Aggregate):
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
        if self.revoked:
            raise Conflict(f"API key {self.key_id} is already revoked")
        self._revoked(key_id=self.key_id, at=at, by=by)

    class ApiKeyRevoked(Aggregate.Event):
        key_id: str
        at: datetime
        by: str

    @event(ApiKeyRevoked)
    def _revoked(self, key_id: str, at: datetime, by: str) -> None:
        self.revoked = True
