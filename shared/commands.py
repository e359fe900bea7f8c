"""Idempotent, authenticated command handling shared by every service.

``CommandProcessor.process`` takes a raw message and always returns a ``CommandResult`` (never
raises): unparseable → 422 and a dead-letter entry; no token, a token that does not verify for
this command, or a revoked or expired key → 401 (``shared/command_tokens.py``); a field that
does not validate → 400 naming it; a rule that refuses → its status and reason. The outcome of an
authenticated command is saved atomically with the events it causes, keyed by its principal and
``command_id``: a repeated command changes nothing and gets the same result.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from pydantic import TypeAdapter, ValidationError

from managed_backups.contracts.enums import CommandStatus
from managed_backups.contracts.results import CommandResult
from managed_backups.shared.clock import Clock
from managed_backups.shared.command_tokens import CommandVerifier, command_body_sha256
from managed_backups.shared.domain.errors import Malformed, Refused
from managed_backups.shared.domain.outcome import CommandOutcome
from managed_backups.shared.eventstore import EventStore, IntegrityError
from managed_backups.shared.security import Principal

log = logging.getLogger(__name__)
security_log = logging.getLogger("managed_backups.security")
"""Refusals of callers without rights: kept here, never in the cluster's audit trail."""
MAX_CONFLICT_RETRIES = 8
MAX_COMMAND_BYTES = 256 * 1024
"""No command needs more (the contracts bound every list and string); larger is refused unread."""
MAX_JSON_DEPTH = 32
"""Commands nest a few levels; deeper input is refused before it is parsed."""
MAX_REASON_CHARS = 2000
_COMMAND_ID = re.compile(rb'"command_id"\s*:\s*"([0-9a-fA-F-]{36})"')


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` nests arrays/objects deeper than ``limit`` (strings are skipped), in one
    pass without recursion: what a recursive parser would choke on is refused first."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def command_id_hint(raw: bytes) -> UUID | None:
    """The command id of a message that cannot be parsed, if it names one: its sender is then
    answered rather than left waiting."""
    match = _COMMAND_ID.search(raw[:4096])
    if match is None:
        return None
    try:
        return UUID(match.group(1).decode())
    except ValueError:
        return None


@dataclass
class Handled:
    """What a handler decided: the aggregates to save (atomically with the outcome)."""

    aggregates: list[Aggregate] = field(default_factory=list)
    cluster_id: str | None = None
    follow_up: Callable[[], Awaitable[None]] | None = None
    """Run after the save succeeded (e.g. publishing a command to another service)."""


@dataclass(frozen=True)
class CommandContext:
    store: EventStore
    clock: Clock
    service: str


Handler = Callable[[Any, Principal, CommandContext], Handled]


@dataclass(frozen=True)
class Processed:
    result: CommandResult
    dead_letter_error: str | None = None
    follow_up: Callable[[], Awaitable[None]] | None = None


def describe_validation_error(exc: ValidationError, tag: str | None) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error["loc"]]
        if loc and tag is not None and loc[0] == tag:
            loc = loc[1:]
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(parts)


class CommandProcessor:
    def __init__(
        self,
        topic: str,
        adapter: TypeAdapter[Any],
        handlers: dict[str, Handler],
        context: CommandContext,
        verifier: CommandVerifier,
    ) -> None:
        self.topic = topic
        self.adapter = adapter
        self.handlers = handlers
        self.context = context
        self.verifier = verifier

    def _result(
        self,
        command_id: UUID | None,
        command_type: str | None,
        code: int,
        reason: str | None = None,
        cluster_id: str | None = None,
        position: int | None = None,
    ) -> CommandResult:
        return CommandResult(
            command_id=command_id,
            command_type=command_type,
            status=CommandStatus.ACCEPTED if code < 300 else CommandStatus.REJECTED,
            code=code,
            reason=reason[:MAX_REASON_CHARS] if reason else reason,
            cluster_id=cluster_id,
            position=position,
            handled_at=self.context.clock.now(),
        )

    def process(self, raw: bytes) -> Processed:
        try:
            return self._process(raw)
        except Exception as exc:  # a bug or an outage must not stop the consumer
            log.exception("command processing failed on %s", self.topic)
            error = f"internal error: {type(exc).__name__}: {exc}"
            return Processed(
                self._result(command_id_hint(raw), None, 500, error), dead_letter_error=error
            )

    def _unreadable(self, raw: bytes, error: str) -> Processed:
        return Processed(
            self._result(command_id_hint(raw), None, 422, error), dead_letter_error=error
        )

    def _process(self, raw: bytes) -> Processed:
        if len(raw) > MAX_COMMAND_BYTES:
            return self._unreadable(
                raw, f"message of {len(raw)} bytes exceeds the {MAX_COMMAND_BYTES}-byte limit"
            )
        if json_depth_exceeds(raw, MAX_JSON_DEPTH):
            return self._unreadable(raw, f"message is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return self._unreadable(raw, f"message is not valid JSON: {exc}")
        if not isinstance(data, dict):
            error = f"a command must be a JSON object, got {type(data).__name__}"
            return Processed(self._result(None, None, 422, error), dead_letter_error=error)
        command_type = data.get("type") if isinstance(data.get("type"), str) else None
        try:
            command_id: UUID | None = UUID(str(data.get("command_id")))
        except ValueError:
            command_id = None
        if command_id is None or command_type is None:
            missing = "command_id (a UUID)" if command_id is None else "type"
            error = f"the command has no valid {missing}"
            return Processed(
                self._result(command_id, command_type, 422, error), dead_letter_error=error
            )
        named = data.get("cluster_id") or data.get("destination_cluster_id")
        cluster_hint = named if isinstance(named, str) else None
        try:
            principal = self.verifier.verify(self.topic, data, command_id)
        except Refused as refused:
            security_log.warning(
                "unauthenticated %s %s on %s: %s",
                command_type,
                command_id,
                self.topic,
                refused.reason,
            )
            return Processed(
                self._result(command_id, command_type, refused.code, refused.reason, cluster_hint)
            )
        try:
            command = self.adapter.validate_python(data)
        except ValidationError as exc:
            reason = describe_validation_error(exc, command_type)
            return Processed(self._result(command_id, command_type, 400, reason, cluster_hint))
        body_sha256 = command_body_sha256(self.topic, data)
        for _ in range(MAX_CONFLICT_RETRIES):
            known = self._known_outcome(command_id, principal)
            if known is not None:
                if known.body_sha256 is not None and known.body_sha256 != body_sha256:
                    reason = (
                        f"command_id {command_id} was already used by {principal.name} for "
                        "another command; choose a new command_id for a new command"
                    )
                    return Processed(
                        self._result(command_id, command_type, 409, reason, cluster_hint)
                    )
                return Processed(
                    self._result(
                        command_id,
                        known.command_type,
                        known.code,
                        known.reason,
                        known.cluster_id,
                        self.context.store.max_position(),
                    )
                )
            try:
                return self._handle(
                    command, command_id, command_type, principal, cluster_hint, body_sha256
                )
            except IntegrityError:
                # Another instance (or a redelivery) recorded concurrently: re-read and decide again.
                continue
        return Processed(
            self._result(command_id, command_type, 409, "too many concurrent changes; retry")
        )

    def _known_outcome(self, command_id: UUID, principal: Principal) -> CommandOutcome | None:
        store = self.context.store
        known = store.get_or_none(
            CommandOutcome.create_id(command_id, principal.name), CommandOutcome
        )
        if known is not None:
            return known
        legacy = store.get_or_none(CommandOutcome.legacy_id(command_id), CommandOutcome)
        return legacy if legacy is not None and legacy.by == principal.name else None

    def _handle(
        self,
        command: Any,
        command_id: UUID,
        command_type: str,
        principal: Principal,
        cluster_hint: str | None,
        body_sha256: str,
    ) -> Processed:
        handler = self.handlers.get(command_type)
        now = self.context.clock.now()
        try:
            if handler is None:
                raise Malformed(f"{command_type} is not handled on {self.topic}")
            handled = handler(command, principal, self.context)
        except Refused as refused:
            if not refused.audited:
                security_log.warning(
                    "refused %s %s from %s on %s: %s",
                    command_type,
                    command_id,
                    principal.name,
                    cluster_hint,
                    refused.reason,
                )
            outcome = CommandOutcome(
                command_id=command_id,
                command_type=command_type,
                # A refusal of a caller without rights stays out of the cluster's audit trail.
                cluster_id=cluster_hint if refused.audited else None,
                status=CommandStatus.REJECTED.value,
                code=refused.code,
                reason=refused.reason,
                body_sha256=body_sha256,
                at=now,
                by=principal.name,
            )
            position = self.context.store.save_all(outcome)
            return Processed(
                self._result(
                    command_id, command_type, refused.code, refused.reason, cluster_hint, position
                )
            )
        outcome = CommandOutcome(
            command_id=command_id,
            command_type=command_type,
            cluster_id=handled.cluster_id,
            status=CommandStatus.ACCEPTED.value,
            code=200,
            reason=None,
            body_sha256=body_sha256,
            at=now,
            by=principal.name,
        )
        position = self.context.store.save_all(*handled.aggregates, outcome)
        return Processed(
            self._result(command_id, command_type, 200, None, handled.cluster_id, position),
            follow_up=handled.follow_up,
        )
