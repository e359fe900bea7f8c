"""Composition root of the retention service: retention-commands consumer + the periodic pass.

``EnforceRetention`` on ``managed-backups.retention-commands`` runs a pass on demand (one cluster:
a principal who may change that cluster's backup settings; every cluster: an administrator). A
pass also runs every ``retention_interval_minutes`` of the system clock (simulated or not); a
simulated clock's reached time is reported once the pass for it has run.
``RotateEncryptionKeys`` starts key rotation jobs (:mod:`.key_rotation`), run under the same
lock as the passes; their expired leases are reaped at every turn of the loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import EnforceRetention, RetentionCommand
from managed_backups.services.retention.key_rotation import KeyRotations, rotate_handler
from managed_backups.services.retention.retention import Retention
from managed_backups.services.runtime import Runtime, serve_commands
from managed_backups.shared.access import load_cluster, may_administer
from managed_backups.shared.bus import ensure_topics
from managed_backups.shared.commands import CommandContext, Handled, Handler
from managed_backups.shared.domain.roles import Action
from managed_backups.shared.encryption import ClusterEncryption, platform_keyring
from managed_backups.shared.faults import fault_points
from managed_backups.shared.loops import run_until_stopped
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.security import Principal

log = logging.getLogger(__name__)
GROUP = "managed-backups.retention"
NAME = "retention"


def enforce_handler(retention: Retention, lock: asyncio.Lock) -> Handler:
    def handle(command: EnforceRetention, principal: Principal, context: CommandContext) -> Handled:
        if command.cluster_id is None:
            may_administer(principal)
        else:
            load_cluster(
                context.store,
                principal,
                Action.CHANGE_BACKUP_SETTINGS,
                command.cluster_id,
                live=False,  # a deleted cluster's backups are retention's to delete
            )

        async def run_pass() -> None:
            async with lock:
                report = await asyncio.to_thread(
                    retention.enforce, context.clock.now(), command.cluster_id
                )
            log.info("retention pass on demand (%s): %s", command.cluster_id or "all", report)

        return Handled([], command.cluster_id, follow_up=run_pass)

    return handle


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    name = f"{NAME}-{settings.instance}"
    encryption = ClusterEncryption(settings, runtime.store)
    retention = Retention(
        runtime.store,
        runtime.db,
        settings.region_store_url,
        NAME,
        ConnectionSecrets(runtime.db, settings.secrets_path, platform_keyring(settings)),
        encryption=encryption,
        fault_point=fault_points(settings),
    )
    lock = asyncio.Lock()
    rotations = KeyRotations(retention, encryption, name, lock, runtime.clock.now)
    interval = timedelta(minutes=settings.retention_interval_minutes)
    clock = runtime.clock

    async def passes(stop: asyncio.Event) -> None:
        """A retention pass every ``interval`` of the clock (and the key rotations' reaper):
        reading the clock reads the shared database when it is simulated, so the whole loop
        runs under :func:`run_until_stopped` and outlives a restart of that database."""
        due = clock.now()
        while not stop.is_set():
            now = clock.now()
            try:
                await asyncio.to_thread(rotations.reap_once, now)
                if now >= due:
                    async with lock:
                        report = await asyncio.to_thread(retention.enforce, now)
                    due = now + interval
                    if (
                        report.chains_deleted
                        or report.backups_expired
                        or report.leftovers_swept
                        or report.secrets_removed
                        or report.errors
                    ):
                        log.info("retention pass at %s: %s", now.isoformat(), report)
                if clock.simulated:  # everything due up to ``now`` is done
                    await asyncio.to_thread(clock.report_reached, NAME, now)
            except Exception:
                log.exception("retention pass failed; the next one retries")
            await clock.sleep_until(due, 1.0)

    async def background(stop: asyncio.Event) -> None:
        await run_until_stopped(passes, stop, "the retention loop")

    await serve_commands(
        runtime,
        stop,
        name=name,
        group=GROUP,
        topic=topics.RETENTION_COMMANDS,
        commands=TypeAdapter(RetentionCommand),
        handlers={
            "EnforceRetention": enforce_handler(retention, lock),
            "RotateEncryptionKeys": rotate_handler(rotations),
        },
        background=background,
        actor=NAME,
    )
