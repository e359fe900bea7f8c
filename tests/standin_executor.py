"""A stand-in for the backup-executor in scheduler tests: it answers every TakeBackup at once by
recording BackupStarted and BackupCompleted (or BackupFailed) in the event store, exactly as the
real executor's bookkeeping does, without touching a database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from aiokafka import AIOKafkaConsumer

from managed_backups.contracts import topics
from managed_backups.contracts.commands import TakeBackup
from managed_backups.services.runtime import Runtime
from managed_backups.shared.domain.backup import Backup
from managed_backups.shared.eventstore import IntegrityError


@dataclass
class StandInExecutor:
    kafka: str
    fail_when: Callable[[TakeBackup], bool] = lambda command: False
    received: list[TakeBackup] = field(default_factory=list)
    answered: int = 0

    def by_cluster(self, cluster_id: str) -> list[TakeBackup]:
        return [c for c in self.received if c.cluster_id == cluster_id]

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            topics.BACKUP_COMMANDS,
            bootstrap_servers=self.kafka,
            group_id="standin-executor",
            auto_offset_reset="latest",
            enable_auto_commit=True,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=20)
                for records in batch.values():
                    for record in records:
                        command = TakeBackup.model_validate_json(record.value)
                        self.received.append(command)
                        await asyncio.to_thread(self._answer, runtime, command)
                        self.answered += 1
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def _answer(self, runtime: Runtime, command: TakeBackup) -> None:
        now = runtime.clock.now()
        chain: UUID = command.chain_id or command.backup_id
        backup = Backup(
            backup_id=command.backup_id,
            cluster_id=command.cluster_id,
            backup_type=command.backup_type.value,
            chain_id=chain,
            reason=command.reason.value,
            region="r",
            retention_days=command.retention_days or 30,
            scheduled_for=command.scheduled_for,
            executor="stand-in",
            lease_until=now + timedelta(hours=1),
            command_id=command.command_id,
            at=now,
            by="stand-in",
        )
        if self.fail_when(command):
            backup.fail("TEST_FAILURE", "failed on purpose", "stand-in", now, "stand-in")
        else:
            backup.complete(
                as_of_time=now,
                size_bytes=1,
                database_count=0,
                catalog=[],
                manifest_key="test",
                expires_at=now + timedelta(days=command.retention_days or 30),
                at=now,
                by="stand-in",
            )
        with contextlib.suppress(IntegrityError):  # a duplicate TakeBackup does nothing
            runtime.store.save_all(backup)
