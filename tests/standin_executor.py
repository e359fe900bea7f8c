"""A stand-in for the backup-executor in scheduler tests: it answers every TakeBackup at once by
recording BackupStarted and BackupCompleted (or BackupFailed) in the event store, exactly as the
real executor's bookkeeping does, without touching a database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from managed_backups.contracts import topics
from managed_backups.contracts.commands import TakeBackup
from managed_backups.services.runtime import Runtime
from managed_backups.shared.eventstore import IntegrityError
from tests.factories import backup_taken


@dataclass
class StandInExecutor:
    kafka: str
    fail_when: Callable[[TakeBackup], bool] = lambda command: False
    received: list[TakeBackup] = field(default_factory=list)
    answered: int = 0
    _consumer: AIOKafkaConsumer | None = field(default=None, init=False, repr=False)
    _offsets: AIOKafkaConsumer | None = field(default=None, init=False, repr=False)
    """A consumer of no topic, to read end offsets on a connection of its own: the broker answers
    a connection's requests in order, so asked on ``_consumer``'s it would wait behind the long
    poll of its fetch (up to ``fetch_max_wait_ms``, 500 ms)."""
    _in_hand: bool = field(default=False, init=False, repr=False)
    """True while a fetched batch is being answered (the consumer's position is already past it)."""

    def by_cluster(self, cluster_id: str) -> list[TakeBackup]:
        return [c for c in self.received if c.cluster_id == cluster_id]

    async def caught_up(self, timeout: float = 30) -> None:
        """Wait until every TakeBackup on the topic now was received and answered.

        Reads the topic's end offsets, then waits until the consumer owns every partition, its
        position reached them and no batch is in hand. A scheduler's sends are acknowledged before
        it reports a reached time, so after that report this proves ``received`` holds everything
        it sent: an assertion that a TakeBackup was *not* sent then cannot pass by being early."""
        async with asyncio.timeout(timeout):
            while True:
                consumer, offsets = self._consumer, self._offsets
                if consumer is not None and offsets is not None:
                    numbers = consumer.partitions_for_topic(topics.BACKUP_COMMANDS) or set()
                    wanted = {TopicPartition(topics.BACKUP_COMMANDS, n) for n in numbers}
                    if wanted and consumer.assignment() == wanted:
                        break
                await asyncio.sleep(0.005)
            ends: dict[TopicPartition, int] = await offsets.end_offsets(list(wanted))
            while True:
                positions = {tp: await consumer.position(tp) for tp in ends}
                if not self._in_hand and all(positions[tp] >= end for tp, end in ends.items()):
                    return
                await asyncio.sleep(0.005)

    async def run(self, runtime: Runtime, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            topics.BACKUP_COMMANDS,
            bootstrap_servers=self.kafka,
            group_id="standin-executor",
            auto_offset_reset="latest",
            enable_auto_commit=True,
        )
        offsets = AIOKafkaConsumer(bootstrap_servers=self.kafka)
        await consumer.start()
        await offsets.start()
        self._consumer, self._offsets = consumer, offsets
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=20)
                self._in_hand = bool(batch)
                for records in batch.values():
                    for record in records:
                        command = TakeBackup.model_validate_json(record.value)
                        self.received.append(command)
                        await asyncio.to_thread(self._answer, runtime, command)
                        self.answered += 1
                self._in_hand = False
        finally:
            self._consumer = self._offsets = None
            with contextlib.suppress(Exception):
                await offsets.stop()
            with contextlib.suppress(Exception):
                await consumer.stop()

    def _answer(self, runtime: Runtime, command: TakeBackup) -> None:
        backup = backup_taken(
            command,
            runtime.clock.now(),
            executor="stand-in",
            region="r",
            failed=self.fail_when(command),
        )
        with contextlib.suppress(IntegrityError):  # a duplicate TakeBackup does nothing
            runtime.store.save_all(backup)
