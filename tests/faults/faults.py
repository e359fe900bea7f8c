"""The faults: how each is injected, what shows it happened, what is checked after it beyond
the common invariants.

Each ``inject`` drives a day of work (or a restore, or a retention pass) with the fault in the
middle of it, heals it (restarts what it killed, resumes what it paused), and returns the
:class:`Evidence` that the fault really hit work in flight. The suite then waits until the
system settled and checks the invariants (``invariants.py``).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from managed_backups.contracts import topics
from managed_backups.services.relay.relay import RELAY_ROLE
from managed_backups.shared.broker_access import ADMIN_USER, KafkaAuth
from managed_backups.shared.dataplane.manifest import chain_prefix, manifest_key
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.restore import Restore, load_restore
from managed_backups.shared.faults import HOLDING
from tests.faults.invariants import BackupState, LogState, Report, behind, open_stores
from tests.faults.stack import (
    BACKUP_LEASE_SECONDS,
    LOCAL_REGION,
    RESTORE_LEASE_SECONDS,
    ServiceProcess,
    Stack,
)
from tests.faults.workload import DAY, Workload, wait_for


@dataclass
class Evidence:
    """What shows the fault happened (a fault that injects nothing proves nothing)."""

    notes: list[str] = field(default_factory=list)
    happened: bool = False
    facts: dict[str, Any] = field(default_factory=dict)

    def saw(self, note: str) -> None:
        self.notes.append(note)


Check = Callable[[Workload, LogState, Evidence], None]


@dataclass(frozen=True)
class Fault:
    title: str
    inject: Callable[[Workload], Awaitable[Evidence]]
    after: tuple[Check, ...] = ()


@dataclass
class Outcome:
    name: str
    title: str
    evidence: Evidence
    report: Report
    seconds: float

    def render(self) -> str:
        shown = "\n".join(f"  fault: {n}" for n in self.evidence.notes)
        return f"== {self.title} ({self.seconds:.0f} s)\n{shown}\n{self.report.render()}"

    def row(self) -> str:
        held = "all held" if self.report.held else "BROKEN"
        return f"| {self.title} | {'; '.join(self.evidence.notes)[:300]} | {held} | {self.seconds:.0f} s |"


# -- helpers ------------------------------------------------------------------------------------


async def running_backup_lease(work: Workload, timeout: float = 120) -> tuple[Any, ...]:
    """A backup lease whose backup is recorded IN_PROGRESS (a backup in the middle of its work)."""

    async def find() -> tuple[Any, ...] | None:
        running = {b.backup_id for b in await work.running_backups()}
        for lease in work.leases("backup"):
            if str(lease[1]) in running:
                return lease
        return None

    return await wait_for(find, "a backup in the middle of its work", timeout, every=0.1)


async def only_running(work: Workload, backup_ids: set[str], timeout: float = 300) -> None:
    """Wait until the backups running are ``backup_ids`` only (the others ended)."""

    async def check() -> bool:
        return {b.backup_id for b in await work.running_backups()} <= backup_ids

    await wait_for(check, f"only {backup_ids} running", timeout)


async def backup_ended(work: Workload, cluster_id: str, backup_id: str) -> Any:
    async def check() -> Any:
        state = await work.log()
        backup = state.backups.get((cluster_id, backup_id))
        return backup if backup is not None and backup.status != "IN_PROGRESS" else None

    return await wait_for(check, f"backup {backup_id} to end", 180)


def held_by(work: Workload, owner: str) -> set[str]:
    """The backups whose leases ``owner`` holds (a killed or paused executor may run several:
    all of them wait for the reaper)."""
    return {str(lease[1]) for lease in work.leases("backup") if str(lease[2]) == owner}


def cluster_of_backup(state: LogState, backup_id: str) -> str:
    return next(c for (c, b) in state.backups if b == backup_id)


def log_mentions(process: ServiceProcess, text: str) -> bool:
    return text in process.log_text()


# -- SIGKILL of each service mid-work -----------------------------------------------------------


async def kill_an_executor_mid_backup(
    work: Workload, evidence: Evidence
) -> tuple[tuple[Any, ...], set[str]]:
    """Move to the day's slot and SIGKILL the executor instance running one of its backups
    (then start it again): the lease it held, and every backup it left for the reaper."""
    stack = work.stack
    await work.next_day()
    lease = await running_backup_lease(work)
    victim = stack.owner_process(str(lease[2]))
    orphans = held_by(work, str(lease[2]))
    victim.kill()
    evidence.saw(f"SIGKILL {victim.instance} while it ran backup {lease[1]}")
    victim.start()
    return lease, orphans


async def executor_killed_mid_backup(work: Workload) -> Evidence:
    stack, evidence = work.stack, Evidence()
    assert stack.target_proxy is not None
    stack.target_proxy.slow(0.05)
    try:
        lease, orphans = await kill_an_executor_mid_backup(work, evidence)
    finally:
        stack.target_proxy.slow(0)
    backup_id = str(lease[1])
    await only_running(work, orphans)
    await asyncio.to_thread(stack.advance, BACKUP_LEASE_SECONDS + 5)
    state = await work.log()
    ended = await backup_ended(work, cluster_of_backup(state, backup_id), backup_id)
    evidence.saw(f"backup {backup_id} ended {ended.status}: {ended.error}")
    evidence.happened = ended.status == "FAILED" and "LEASE_EXPIRED" in (ended.error or "")
    evidence.facts["backup"] = (ended.cluster_id, backup_id, ended.chain_id, ended.region)
    return evidence


async def stale_lease_worker(work: Workload) -> Evidence:
    """SIGSTOP an executor mid-backup for longer than its lease: the other instance reaps the
    backup; then SIGCONT: whatever the paused worker writes now must be refused."""
    stack, evidence = work.stack, Evidence()
    assert stack.target_proxy is not None
    stack.target_proxy.slow(0.05)
    try:
        await work.next_day()
        lease = await running_backup_lease(work)
        victim = stack.owner_process(str(lease[2]))
        orphans = held_by(work, str(lease[2]))
        victim.pause()
        stack.target_proxy.slow(0)  # the paused worker's backup is frozen; the others end
        backup_id = str(lease[1])
        evidence.saw(f"SIGSTOP {victim.instance} while it ran backup {backup_id}")
        await only_running(work, orphans)
        await asyncio.to_thread(stack.advance, BACKUP_LEASE_SECONDS + 5)
        state = await work.log()
        cluster_id = cluster_of_backup(state, backup_id)
        ended = await backup_ended(work, cluster_id, backup_id)
        evidence.saw(f"the other instance reaped it: {ended.status} ({ended.error})")
        taken = [lease2 for lease2 in work.leases("backup") if str(lease2[1]) == backup_id]
        evidence.saw(f"lease now {[(str(t[2]), t[4]) for t in taken]}")
    finally:
        stack.target_proxy.slow(0)
    victim.resume()
    evidence.saw(f"SIGCONT {victim.instance}")

    async def refused() -> bool:
        return log_mentions(victim, "lost its lease")

    await wait_for(refused, "the resumed worker to meet its lost lease", 120)
    evidence.saw("the resumed worker logged its lost lease and stopped")
    evidence.happened = ended.status == "FAILED"
    evidence.facts["backup"] = (cluster_id, backup_id, ended.chain_id, ended.region)
    return evidence


def stale_writes_refused(work: Workload, state: LogState, evidence: Evidence) -> None:
    """The reaped backup stays FAILED (its worker's completion refused) and no manifest of it
    exists: the writes it made after losing its lease were refused."""
    cluster_id, backup_id, chain_id, region = evidence.facts["backup"]
    backup = state.backups[(cluster_id, backup_id)]
    assert backup.status in ("FAILED",) or backup.deleted, backup
    assert "LEASE_EXPIRED" in (backup.error or ""), backup
    store = open_stores(work.stack.region_stores())[region]
    assert not store.exists(manifest_key(cluster_id, chain_id, backup_id)), (
        "the stale worker wrote its manifest after losing its lease"
    )


# -- servers restarted, paused ------------------------------------------------------------------


async def event_store_restarted(work: Workload) -> Evidence:
    stack, evidence = work.stack, Evidence()
    assert stack.events_pg is not None and stack.target_proxy is not None
    stack.target_proxy.slow(0.02)
    try:
        await work.next_day()
        lease = await running_backup_lease(work)
        before = stack.events_pg.pid
        await asyncio.to_thread(stack.events_pg.restart)
        evidence.saw(
            f"restarted the event store's PostgreSQL (pid {before} -> {stack.events_pg.pid}) "
            f"while backup {lease[1]} ran"
        )
        evidence.happened = before != stack.events_pg.pid
    finally:
        stack.target_proxy.slow(0)
    return evidence


# -- the object store fails writes and deletes for a while -------------------------------------


async def object_store_fails_writes(work: Workload) -> Evidence:
    stack, evidence = work.stack, Evidence()
    assert stack.s3_proxy is not None
    stack.s3_proxy.fail_writes(True)
    began = time.monotonic()
    try:
        await work.next_day()

        async def refused_some() -> bool:
            return sum(stack.s3_proxy.refused.values()) >= 5  # type: ignore[union-attr]

        await wait_for(refused_some, "writes to be refused", 120)
        await asyncio.sleep(10)
    finally:
        stack.s3_proxy.fail_writes(False)
    refused = dict(stack.s3_proxy.refused)
    evidence.saw(
        f"the S3 proxy answered 503 to {refused} for {time.monotonic() - began:.0f} s "
        "(writes and deletes), then forwarded again"
    )
    evidence.happened = sum(refused.values()) > 0
    stack.s3_proxy.refused.clear()
    return evidence


# -- every message delivered twice --------------------------------------------------------------

COMMAND_GROUPS = {
    "scheduler": (topics.CLUSTER_COMMANDS, "managed-backups.scheduler"),
    "backup-executor": (topics.BACKUP_COMMANDS, "managed-backups.backup-executor"),
    "restore": (topics.RESTORE_COMMANDS, "managed-backups.restore"),
    "retention": (topics.RETENTION_COMMANDS, "managed-backups.retention"),
}


async def end_offsets(work: Workload, topic: str) -> dict[TopicPartition, int]:
    assert work.stack.kafka is not None
    auth = KafkaAuth(ADMIN_USER, work.stack.passwords[ADMIN_USER], "PLAIN")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=work.stack.kafka.bootstrap_servers, **auth.client_options()
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def rewind_group(work: Workload, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` (whose members are stopped): the broker redelivers every
    message after them."""
    assert work.stack.kafka is not None
    auth = KafkaAuth(ADMIN_USER, work.stack.passwords[ADMIN_USER], "PLAIN")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=work.stack.kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        **auth.client_options(),
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        for attempt in range(60):
            try:
                await consumer.commit(dict(offsets))
                return
            except Exception:  # the group still has members (a rebalance in progress)
                if attempt == 59:
                    raise
                await asyncio.sleep(1)
    finally:
        await consumer.stop()


async def results_per_command(work: Workload, since: dict[TopicPartition, int]) -> Counter[str]:
    assert work.stack.kafka is not None
    auth = KafkaAuth(ADMIN_USER, work.stack.passwords[ADMIN_USER], "PLAIN")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=work.stack.kafka.bootstrap_servers, **auth.client_options()
    )
    await consumer.start()
    counts: Counter[str] = Counter()
    import json

    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        ends = await consumer.end_offsets(list(since))
        async with asyncio.timeout(60):
            while await behind(consumer, ends):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        result = json.loads(record.value)
                        counts[str(result.get("command_id"))] += 1
    finally:
        await consumer.stop()
    return counts


async def every_message_twice(work: Workload) -> Evidence:
    """Every command consumed since the fault began is delivered again (each consumer group
    rewound to where it was), and every event relayed since then is published again (the
    relay's position rewound)."""
    stack, evidence = work.stack, Evidence()
    assert stack.db is not None and stack.store is not None
    starts = {name: await end_offsets(work, topic) for name, (topic, _) in COMMAND_GROUPS.items()}
    results_start = await end_offsets(work, topics.COMMAND_RESULTS)
    relay_from = int(stack.db.query("SELECT position FROM mb_relay_position")[0][0])
    await work.next_day()
    restore_id = await work.start_restore("weekly-s3", "app_twice")
    await work.settle()
    for name in [*COMMAND_GROUPS, "relay"]:
        for process in stack.services[name]:
            process.stop()
    for name, (_, group) in COMMAND_GROUPS.items():
        await rewind_group(work, group, starts[name])
    stack.db.execute("UPDATE mb_relay_position SET position = ?", (relay_from,))
    for name in [*COMMAND_GROUPS, "relay"]:
        for process in stack.services[name]:
            process.start()
    evidence.saw(
        f"stopped the command consumers and the relays, rewound their groups to the fault's "
        f"start and the relay to position {relay_from}, restarted them"
    )
    total = sum(sum(o.values()) for o in starts.values())

    async def redelivered() -> Counter[str] | None:
        counts = await results_per_command(work, results_start)
        twice = [c for c, n in counts.items() if n >= 2]
        return counts if counts and len(twice) == len(counts) else None

    counts = await wait_for(redelivered, "every command to be answered twice", 180, every=2)
    evidence.saw(
        f"{len(counts)} commands answered {min(counts.values())}+ times each "
        f"(restore {restore_id} included); {total} messages were on the topics before"
    )
    evidence.happened = True
    await asyncio.to_thread(work.drop_target_database, "app_twice")
    return evidence


async def restore_killed_mid_restore(work: Workload) -> Evidence:
    """SIGKILL the restore instance copying rows into the destination: the other instance reaps
    the job (``LEASE_EXPIRED``) and drops its temporary database; the destination stays as it
    was (no new database)."""
    stack, evidence = work.stack, Evidence()
    assert stack.target_proxy is not None
    before = await asyncio.to_thread(work.target_databases)
    stack.target_proxy.slow(0.05)
    try:
        restore_id = await work.start_restore("weekly-local", "app_killed")

        async def running_lease() -> tuple[Any, ...] | None:
            state = await work.log()
            if state.restores.get(restore_id, ("", ""))[1] != "RUNNING":
                return None
            temporary = [
                d for d in await asyncio.to_thread(work.target_databases) if "mb_restore_" in d
            ]
            job_id = str(Restore.create_id("weekly-local", UUID(restore_id)))
            leases = [r for r in work.leases("restore") if str(r[1]) in (job_id, restore_id)]
            return leases[0] if leases and temporary else None

        lease = await wait_for(running_lease, "the restore copying rows", 120, every=0.05)
        victim = stack.owner_process(str(lease[2]))
        victim.kill()
        evidence.saw(f"SIGKILL {victim.instance} while restore {restore_id} copied rows")
        victim.start()
    finally:
        stack.target_proxy.slow(0)
    await asyncio.to_thread(stack.advance, RESTORE_LEASE_SECONDS + 5)

    async def ended() -> str | None:
        state = await work.log()
        status = state.restores.get(restore_id, ("", ""))[1]
        return status if status in ("SUCCEEDED", "FAILED") else None

    status = await wait_for(ended, f"restore {restore_id} to end", 180)
    reason = await asyncio.to_thread(restore_error, work, restore_id)
    evidence.saw(f"restore {restore_id} ended {status}: {reason}")
    evidence.happened = status == "FAILED" and "LEASE_EXPIRED" in reason
    evidence.facts["databases_before"] = before
    return evidence


def restore_error(work: Workload, restore_id: str) -> str:
    assert work.stack.store is not None
    job = load_restore(work.stack.store, "weekly-local", UUID(restore_id))
    return str(job.error) if job is not None else "not recorded"


def destination_as_it_was(work: Workload, state: LogState, evidence: Evidence) -> None:
    """The failed restore's destination is as it was: the same databases, none left half-made."""
    after = work.target_databases()
    assert after == evidence.facts["databases_before"], (evidence.facts["databases_before"], after)


async def broker_restarted(work: Workload) -> Evidence:
    """Restart the Kafka broker while a backup runs and the day's TakeBackups are in flight."""
    stack, evidence = work.stack, Evidence()
    assert stack.kafka is not None and stack.target_proxy is not None
    stack.target_proxy.slow(0.02)
    try:
        await work.next_day()
        lease = await running_backup_lease(work)
        before = stack.kafka.pid
        await asyncio.to_thread(stack.kafka.restart)
        evidence.saw(
            f"restarted the Kafka broker (pid {before} -> {stack.kafka.pid}) while backup "
            f"{lease[1]} ran"
        )
        evidence.happened = before != stack.kafka.pid
    finally:
        stack.target_proxy.slow(0)
    return evidence


async def backups_since(work: Workload, known: set[Any]) -> tuple[LogState, list[BackupState]]:
    """The log now, and its backups not among ``known`` (the keys of an earlier state's)."""
    state = await work.log()
    return state, [b for key, b in state.backups.items() if key not in known]


async def next_days_backups(work: Workload, state: LogState) -> list[BackupState]:
    """One more simulated day, settled: the backups it added to ``state``'s."""
    known = set(state.backups)
    await work.next_day()
    await work.settle()
    return (await backups_since(work, known))[1]


async def target_refuses_connections(work: Workload) -> Evidence:
    """The backup targets' server refuses connections for a day (the proxy in front of it cuts
    and refuses them), then answers again: that day's backups end FAILED (never hang or stay
    running), the next day's COMPLETE."""
    stack, evidence = work.stack, Evidence()
    proxy = stack.target_proxy
    assert proxy is not None
    known = set((await work.log()).backups)
    refused_before = proxy.refused
    proxy.refuse()
    try:
        await work.next_day()
        await work.settle()
    finally:
        proxy.accept()
    state, refused_day = await backups_since(work, known)
    evidence.saw(
        f"the target refused {proxy.refused - refused_before} connections for a day: its "
        f"{len(refused_day)} backups ended {sorted({b.status for b in refused_day})} "
        f"({sorted({(b.error or '').split(':')[0] for b in refused_day})})"
    )
    next_day = await next_days_backups(work, state)
    evidence.saw(f"answering again: the next day's {len(next_day)} backups ended "
                 f"{sorted({b.status for b in next_day})}")  # fmt: skip
    evidence.happened = (
        proxy.refused > refused_before
        and bool(refused_day)
        and all(b.status == "FAILED" for b in refused_day)
        and bool(next_day)
        and all(b.status == "COMPLETE" for b in next_day)
    )
    return evidence


async def follower_killed_mid_batch(
    work: Workload, service: str, position_table: str, active: str | None = None
) -> Evidence:
    """SIGKILL one instance of a log follower (the relay, the projections) while the log has
    events it has not yet passed (the day's backups being recorded), then start it again. For a
    service of which one instance is ``active`` at a time (the relay's role lease), the active
    one."""
    stack, evidence = work.stack, Evidence()
    assert stack.db is not None and stack.store is not None and stack.target_proxy is not None
    db, store = stack.db, stack.store
    victim = stack.instance(service, 0)
    stack.target_proxy.slow(0.02)
    try:
        await work.next_day()

        async def behind_the_log() -> tuple[int, int] | None:
            top = await asyncio.to_thread(store.max_position)
            rows = await asyncio.to_thread(db.query, f"SELECT position FROM {position_table}")
            at = int(rows[0][0]) if rows else 0
            return (at, top) if at < top else None

        at, top = await wait_for(behind_the_log, f"{service} behind the log", 120, every=0.01)
        if active is not None:
            holders = work.leases(active)
            victim = stack.owner_process(str(holders[0][2])) if holders else victim
        victim.kill()
        evidence.saw(f"SIGKILL {victim.instance} with the log at {top} and its position at {at}")
        victim.start()
    finally:
        stack.target_proxy.slow(0)
    evidence.happened = at < top
    return evidence


async def relay_killed_mid_publish(work: Workload) -> Evidence:
    return await follower_killed_mid_batch(work, "relay", "mb_relay_position", RELAY_ROLE)


async def projections_killed_mid_batch(work: Workload) -> Evidence:
    return await follower_killed_mid_batch(
        work, "projections", "mb_view_position WHERE name = 'views'"
    )


PAUSE_SECONDS = 15.0
"""How long a server stays stopped: longer than the broker's session timeout (10 s), so the
consumer groups lose their members; the simulated clock, kept in the event store, stands still."""


async def server_paused(work: Workload, which: str) -> Evidence:
    """SIGSTOP a server (its whole process group) while a backup runs, SIGCONT it after
    :data:`PAUSE_SECONDS`."""
    stack, evidence = work.stack, Evidence()
    assert stack.events_pg is not None and stack.kafka is not None
    assert stack.target_proxy is not None
    pid = stack.events_pg.pid if which == "event store" else stack.kafka.pid
    stack.target_proxy.slow(0.02)
    try:
        await work.next_day()
        lease = await running_backup_lease(work)
        stack.pause_server(pid)
        began = time.monotonic()
        try:
            await asyncio.sleep(PAUSE_SECONDS)  # the fault's length, not a wait for an outcome
        finally:
            stack.resume_server(pid)
        evidence.saw(
            f"SIGSTOP of the {which}'s server (pid {pid}) for {time.monotonic() - began:.0f} s "
            f"while backup {lease[1]} ran, then SIGCONT"
        )
        evidence.happened = True
    finally:
        stack.target_proxy.slow(0)
    return evidence


async def event_store_paused(work: Workload) -> Evidence:
    return await server_paused(work, "event store")


async def broker_paused(work: Workload) -> Evidence:
    return await server_paused(work, "broker")


# -- SIGKILL at a named fault point (``shared/faults.py``: the process holds there) -------------

HOLD_ENV = "MANAGED_BACKUPS_TEST_HOLD_AT"


def restart_holding(process: ServiceProcess, point: str | None) -> None:
    """Stop ``process`` (SIGTERM) and start it again holding at ``point`` (None: nowhere)."""
    process.stop()
    if point is None:
        process.env.pop(HOLD_ENV, None)
    else:
        process.env[HOLD_ENV] = point
    process.start()


def held_alone(stack: Stack, service: str, point: str) -> tuple[ServiceProcess, ServiceProcess]:
    """Stop ``service``'s instance 1 and restart instance 0 holding at ``point``: the victim
    alone does the work, and stops where the fault is to hit it."""
    victim, other = stack.instance(service, 0), stack.instance(service, 1)
    other.stop()
    restart_holding(victim, point)
    return victim, other


async def holding(process: ServiceProcess, point: str, timeout: float = 120) -> None:
    """Wait until ``process`` (its current run) logged that it holds at ``point``."""
    text = HOLDING.format(point)

    async def held() -> bool:
        if not process.alive():
            raise AssertionError(f"{process.instance} died before holding at {point}")
        return text in process.log_text().rsplit("=== start", 1)[-1]

    await wait_for(held, f"{process.instance} to hold at {point}", timeout, every=0.1)


async def api_up(work: Workload, port: int, timeout: float = 120) -> None:
    async def answers() -> bool:
        try:
            return (await work.stack.http("GET", "/healthz", port=port)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(answers, f"the API on port {port}", timeout, every=0.2)


async def backups_ended(work: Workload, timeout: float = 300) -> None:
    """Every scheduled slot started and no backup running (without moving the clock past a
    retention pass, unlike ``settle``)."""

    async def idle() -> bool:
        state = await work.log()
        return all((c, b) in state.backups for c, b, _ in state.scheduled) and not any(
            b.status == "IN_PROGRESS" for b in state.backups.values()
        )

    await wait_for(idle, "the day's backups to end", timeout)


async def retention_killed_mid_deletion(work: Workload) -> Evidence:
    """Days go by until a chain expires; the only retention instance left running holds after
    deleting a batch of the expired chain's objects, before the deletion is recorded; it is
    SIGKILLed there and both instances started again."""
    stack, evidence = work.stack, Evidence()
    point = "retention-mid-deletion"
    victim, other = held_alone(stack, "retention", point)
    try:
        for _ in range(4):  # a day's backups, then the next retention pass; until it deletes
            now = await work.next_day()
            await backups_ended(work)
            when = await asyncio.to_thread(stack.advance, 3660)

            async def held_or_passed(when: datetime = when) -> str | None:
                if HOLDING.format(point) in victim.log_text().rsplit("=== start", 1)[-1]:
                    return "held"
                if not victim.alive():
                    raise AssertionError(f"{victim.instance} died")
                reached = stack.reached().get("retention")
                return "passed" if reached is not None and reached >= when else None

            if await wait_for(held_or_passed, "the retention pass", 120, every=0.1) == "held":
                break
        else:
            raise AssertionError(f"no chain expired in 4 days (the clock at {now})")
        state = await work.log()
        pending = {
            (b.cluster_id, b.chain_id)
            for b in state.backups.values()
            if b.status == "EXPIRED" and not b.deleted
        }
        stores = open_stores(stack.region_stores())
        left = {
            chain: len(list(stores[region].list(chain_prefix(*chain))))
            for chain in pending
            for region in {b.region for b in state.backups.values() if b.cluster_id == chain[0]}
        }
        victim.kill()
        evidence.saw(
            f"SIGKILL {victim.instance} holding mid-deletion (a batch of objects deleted, the "
            f"deletion not recorded): {len(pending)} expired chains not recorded deleted, "
            f"objects left in them {sorted(left.values())}"
        )
    finally:
        restart_holding(victim, None)
        other.start()
    evidence.happened = bool(pending)
    evidence.facts["pending"] = pending
    return evidence


def expired_chains_deleted(work: Workload, state: LogState, evidence: Evidence) -> None:
    """Every chain the killed worker was deleting is recorded deleted (by the other instance or
    the restarted one) and none of its objects is left."""
    stores = open_stores(work.stack.region_stores())
    for cluster_id, chain_id in evidence.facts["pending"]:
        members = [
            b
            for b in state.backups.values()
            if (b.cluster_id, b.chain_id) == (cluster_id, chain_id)
        ]
        assert members and all(b.deleted for b in members), members
        region = members[0].region
        assert not list(stores[region].list(chain_prefix(cluster_id, chain_id))), chain_id


async def scheduler_killed_between_record_and_send(work: Workload) -> Evidence:
    """The only scheduler instance left running records the day's slots (``BackupScheduled``)
    and holds before sending their TakeBackups; SIGKILL there, then both instances started
    again: the slots must each end in exactly one backup, sent again by one of them."""
    stack, evidence = work.stack, Evidence()
    point = "scheduler-between-record-and-send"
    victim, other = held_alone(stack, "scheduler", point)
    try:
        before = set((c, b) for c, b, _ in (await work.log()).scheduled)
        sent_before = await end_offsets(work, topics.BACKUP_COMMANDS)
        await asyncio.to_thread(work.touch_targets)
        await asyncio.to_thread(stack.advance, DAY)
        await holding(victim, point)
        state = await work.log()
        recorded = [(c, b) for c, b, _ in state.scheduled if (c, b) not in before]
        started = [key for key in recorded if key in state.backups]
        sent = await end_offsets(work, topics.BACKUP_COMMANDS)
        victim.kill()
        evidence.saw(
            f"SIGKILL {victim.instance} holding after recording {len(recorded)} slots "
            f"(BackupScheduled) and before sending: backup-commands end offsets "
            f"{'unchanged' if sent == sent_before else 'MOVED'}, {len(started)} of them started"
        )
    finally:
        restart_holding(victim, None)
        other.start()
    evidence.happened = bool(recorded) and sent == sent_before and not started
    evidence.facts["slots"] = recorded
    return evidence


def recorded_slots_ended_once(work: Workload, state: LogState, evidence: Evidence) -> None:
    """The slots recorded but never sent each ended in one COMPLETE or FAILED backup."""
    for key in evidence.facts["slots"]:
        backup = state.backups.get(key)
        assert backup is not None and backup.status in ("COMPLETE", "FAILED", "EXPIRED"), key


async def api_request_killed(
    work: Workload, victim: ServiceProcess, port: int, point: str, database: str
) -> tuple[str, set[str], dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Restart ``victim`` holding at ``point``, POST a restore to it, SIGKILL it once it holds;
    returns what the client got, the restores recorded before, the restore-commands end offsets
    before the request and at the kill."""
    restart_holding(victim, point)
    await api_up(work, port)
    known = set((await work.log()).restores)
    offsets = await end_offsets(work, topics.RESTORE_COMMANDS)
    request = asyncio.create_task(
        work.stack.http(
            "POST",
            "/api/v1/clusters/weekly-s3/restores",
            port=port,
            json={
                "type": "DATABASE",
                "objects": [{"database": "app"}],
                "restore_opts": {"new_db_name": database},
            },
        )
    )
    try:
        await holding(victim, point)
        at_kill = await end_offsets(work, topics.RESTORE_COMMANDS)
        victim.kill()
    finally:
        restart_holding(victim, None)
    try:
        response = await request
        got = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        got = f"{type(exc).__name__}"
    return got, known, offsets, at_kill


async def api_killed_mid_request(work: Workload) -> Evidence:
    """SIGKILL an API instance handling a restore request: once after the command was validated
    and signed but before it was published (nothing may be recorded), once after its result came
    back but before the client was answered (the restore runs, exactly once)."""
    stack, evidence = work.stack, Evidence()
    victim, port = stack.instance("api", 0), stack.api_ports[0]
    got, known, offsets, at_kill = await api_request_killed(
        work, victim, port, "api-before-publish", "app_api_lost"
    )
    state = await work.log()
    published = sum(at_kill.values()) - sum(offsets.values())
    unrecorded = set(state.restores) == known
    evidence.saw(
        f"SIGKILL {victim.instance} holding before publishing a StartRestore: the client got "
        f"{got}; {published} commands published, {len(set(state.restores) - known)} restores "
        "recorded"
    )
    first = got != "HTTP 200" and published == 0 and unrecorded

    got, known, offsets, at_kill = await api_request_killed(
        work, victim, port, "api-after-result", "app_api_once"
    )
    published = sum(at_kill.values()) - sum(offsets.values())

    async def ended() -> list[str] | None:
        state = await work.log()
        new = [s for r, (_, s) in state.restores.items() if r not in known]
        return new if new and all(s in ("SUCCEEDED", "FAILED") for s in new) else None

    await api_up(work, port)
    outcomes = await wait_for(ended, "the restore to end", 180)
    evidence.saw(
        f"SIGKILL {victim.instance} holding after the StartRestore was answered, before the "
        f"client was: the client got {got}; {published} command published; the restore "
        f"ran {len(outcomes)} time(s): {outcomes}"
    )
    databases = await asyncio.to_thread(work.target_databases)
    evidence.happened = (
        first and got != "HTTP 200" and published == 1 and outcomes == ["SUCCEEDED"]
        and "app_api_once" in databases and "app_api_lost" not in databases
    )  # fmt: skip
    await asyncio.to_thread(work.drop_target_database, "app_api_once")
    return evidence


# -- a full disk under the local object store ---------------------------------------------------


async def local_store_disk_full(work: Workload) -> Evidence:
    """The local region's tmpfs filled while its cluster's backup of the day writes there: that
    backup ends FAILED with a clear error, nothing of it listed; space freed, the next day's
    backup is COMPLETE."""
    stack, evidence = work.stack, Evidence()
    assert stack.tmpfs is not None and stack.store is not None
    if not stack.tmpfs_mounted:
        raise AssertionError("the full-disk fault needs the stack's tmpfs (run as root)")
    known = set((await work.log()).backups)
    filler = await asyncio.to_thread(stack.tmpfs_fill)
    filled, free = filler.stat().st_size, shutil.disk_usage(stack.tmpfs).free
    try:
        await work.next_day()
        await work.settle()
    finally:
        filler.unlink()
    state, that_day = await backups_since(work, known)
    local_day = [b for b in that_day if b.region == LOCAL_REGION]
    errors = []
    for b in local_day:
        backup = await asyncio.to_thread(load_backup, stack.store, b.cluster_id, UUID(b.backup_id))
        errors.append(backup.error if backup is not None and backup.error else {})
    evidence.saw(
        f"filled the local store's tmpfs ({filled >> 20} MiB filler, {free} bytes left): its "
        f"backups that day {[(b.backup_type, b.status) for b in local_day]}, "
        f"{[(e.get('code'), e.get('message', '')[-60:]) for e in errors]}"
    )
    next_day = [b for b in await next_days_backups(work, state) if b.region == LOCAL_REGION]
    evidence.saw(f"space freed: the next day's {[(b.backup_type, b.status) for b in next_day]}")
    evidence.happened = (
        free < 64 << 10
        and bool(local_day)
        and all(b.status == "FAILED" for b in local_day)
        and all("No space left on device" in e.get("message", "") for e in errors)
        and bool(next_day)
        and all(b.status == "COMPLETE" for b in next_day)
    )
    evidence.facts["failed"] = [(b.cluster_id, b.chain_id, b.backup_id) for b in local_day]
    return evidence


def no_manifest_of_failed(work: Workload, state: LogState, evidence: Evidence) -> None:
    """No manifest of a backup the full disk failed (no partial manifest)."""
    store = open_stores(work.stack.region_stores())[LOCAL_REGION]
    for cluster_id, chain_id, backup_id in evidence.facts["failed"]:
        assert not store.exists(manifest_key(cluster_id, chain_id, backup_id)), backup_id


# -- several faults at once ---------------------------------------------------------------------


async def mixed(work: Workload) -> Evidence:
    """One simulated day with four faults at once: the S3 store failing writes, an executor
    SIGKILLed mid-backup, the Kafka broker restarted, and every event of the day published
    twice (the relays stopped and rewound to the day's start)."""
    stack, evidence = work.stack, Evidence()
    assert stack.s3_proxy is not None and stack.target_proxy is not None
    assert stack.kafka is not None and stack.db is not None
    relay_from = int(stack.db.query("SELECT position FROM mb_relay_position")[0][0])
    refused_before = sum(stack.s3_proxy.refused.values())
    stack.s3_proxy.fail_writes(True)
    stack.target_proxy.slow(0.05)
    try:
        _, orphans = await kill_an_executor_mid_backup(work, evidence)
        before = stack.kafka.pid
        await asyncio.to_thread(stack.kafka.restart)
        evidence.saw(f"restarted the Kafka broker (pid {before} -> {stack.kafka.pid})")

        async def refused_some() -> bool:
            return sum(stack.s3_proxy.refused.values()) > refused_before  # type: ignore[union-attr]

        await wait_for(refused_some, "S3 writes to be refused", 120)
    finally:
        stack.s3_proxy.fail_writes(False)
        stack.target_proxy.slow(0)
    refused = sum(stack.s3_proxy.refused.values()) - refused_before
    evidence.saw(f"the S3 proxy answered 503 to {refused} writes, then forwarded again")
    for process in stack.services["relay"]:
        process.stop()
    stack.db.execute("UPDATE mb_relay_position SET position = ?", (relay_from,))
    for process in stack.services["relay"]:
        process.start()
    top = await asyncio.to_thread(stack.store.max_position)  # type: ignore[union-attr]
    evidence.saw(f"the relays rewound from {top} to {relay_from}: the day's events sent twice")
    await only_running(work, orphans)
    await asyncio.to_thread(stack.advance, BACKUP_LEASE_SECONDS + 5)
    evidence.happened = before != stack.kafka.pid and refused > 0 and top > relay_from
    return evidence


FAULTS: dict[str, Fault] = {
    "executor-killed-mid-backup": Fault(
        "SIGKILL of a backup-executor mid-backup", executor_killed_mid_backup
    ),
    "stale-lease-worker": Fault(
        "a backup-executor paused past its lease (SIGSTOP), then resumed",
        stale_lease_worker,
        (stale_writes_refused,),
    ),
    "event-store-restart": Fault(
        "restart of the event store's PostgreSQL with backups in flight", event_store_restarted
    ),
    "object-store-fails-writes": Fault(
        "the S3 store fails writes and deletes for a while", object_store_fails_writes
    ),
    "every-message-twice": Fault(
        "every message delivered twice (consumer groups and the relay rewound)",
        every_message_twice,
    ),
    "restore-killed-mid-restore": Fault(
        "SIGKILL of a restore instance mid-restore",
        restore_killed_mid_restore,
        (destination_as_it_was,),
    ),
    "broker-restart": Fault("restart of the Kafka broker with work in flight", broker_restarted),
    "relay-killed-mid-publish": Fault(
        "SIGKILL of the active relay with events not yet published", relay_killed_mid_publish
    ),
    "projections-killed-mid-batch": Fault(
        "SIGKILL of a projections instance with events not yet applied",
        projections_killed_mid_batch,
    ),
    "event-store-paused": Fault(
        "the event store's PostgreSQL paused (SIGSTOP) with a backup in flight",
        event_store_paused,
    ),
    "broker-paused": Fault(
        "the Kafka broker paused (SIGSTOP) with a backup in flight", broker_paused
    ),
    "target-refuses-connections": Fault(
        "a backup target refusing connections for a day, then answering again",
        target_refuses_connections,
    ),
    "retention-killed-mid-deletion": Fault(
        "SIGKILL of a retention instance mid-deletion",
        retention_killed_mid_deletion,
        (expired_chains_deleted,),
    ),
    "scheduler-killed-between-record-and-send": Fault(
        "SIGKILL of a scheduler between recording a slot and sending its TakeBackup",
        scheduler_killed_between_record_and_send,
        (recorded_slots_ended_once,),
    ),
    "api-killed-mid-request": Fault(
        "SIGKILL of an API instance mid-request (before publishing, after the result)",
        api_killed_mid_request,
    ),
    "local-store-disk-full": Fault(
        "a full disk under the local object store, then space freed",
        local_store_disk_full,
        (no_manifest_of_failed,),
    ),
    "mixed": Fault(
        "mixed: S3 failing writes, an executor killed mid-backup, the broker restarted and "
        "the day's events published twice, in one day",
        mixed,
    ),
}
ALL = tuple(FAULTS)
DEFAULT = (
    "executor-killed-mid-backup",
    "stale-lease-worker",
    "event-store-restart",
    "object-store-fails-writes",
    "every-message-twice",
    "restore-killed-mid-restore",
    "broker-restart",
    "target-refuses-connections",
    "relay-killed-mid-publish",
    "projections-killed-mid-batch",
    "scheduler-killed-between-record-and-send",
    "api-killed-mid-request",
    "local-store-disk-full",
    "retention-killed-mid-deletion",
)
"""Every fault but the two 15-second server pauses and the mixed round (``all`` adds them): the
pauses hold a server for a fixed time, the mixed round repeats four faults of this set at once
(about 90 s); without them the set stays within about four minutes."""
UUID_ = UUID
RESTORE_LEASE = RESTORE_LEASE_SECONDS
