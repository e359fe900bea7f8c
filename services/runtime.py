"""Composition root shared by the services: settings → event store, database, clock, auth."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from managed_backups.shared import logs
from managed_backups.shared.bus import make_broker, subscribe_commands
from managed_backups.shared.clock import Clock, build_clock
from managed_backups.shared.command_tokens import CommandSigner, CommandVerifier
from managed_backups.shared.commands import CommandContext, CommandProcessor, Handler
from managed_backups.shared.eventstore import EventStore, open_event_store
from managed_backups.shared.secrets import ensure_private_dir
from managed_backups.shared.security import Authenticator, Principals
from managed_backups.shared.settings import Settings
from managed_backups.shared.sqldb import SqlDatabase, sqlite_path


@dataclass
class Runtime:
    settings: Settings
    store: EventStore
    db: SqlDatabase
    clock: Clock
    authenticator: Authenticator
    """API keys (the HTTP API's callers)."""
    verifier: CommandVerifier
    """Command tokens (every command consumer)."""

    def command_signer(self, signer: str) -> CommandSigner:
        """The key ``signer`` (the API, or a service that sends commands) signs commands with."""
        return CommandSigner.load_or_create(
            signer,
            self.settings.signing_keys_path,
            self.db,
            self.settings.command_token_seconds,
        )

    def close(self) -> None:
        self.db.close()
        self.store.close()


async def serve_commands(
    runtime: Runtime,
    stop: asyncio.Event,
    *,
    name: str,
    group: str,
    topic: str,
    commands: TypeAdapter[Any],
    handlers: dict[str, Handler],
    background: Callable[[asyncio.Event], Awaitable[None]],
    actor: str | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """A command service's life: consume ``topic`` in consumer group ``group`` as broker client
    ``name`` (each command's token checked, its outcome recorded as ``actor``, by default
    ``name``), run ``background(stop)`` (a reaper, the retention passes) until ``stop``, then
    stop consuming and call ``on_stop`` (e.g. cancel the jobs still running)."""
    settings = runtime.settings
    broker = make_broker(settings.kafka_bootstrap_servers, name, auth=settings.kafka_auth())
    processor = CommandProcessor(
        topic,
        commands,
        handlers,
        CommandContext(runtime.store, runtime.clock, actor or name),
        runtime.verifier,
    )
    subscribe_commands(broker, processor, group)
    await broker.start()
    try:
        await background(stop)
    finally:
        await broker.stop()
        if on_stop is not None:
            await on_stop()


def open_runtime(settings: Settings) -> Runtime:
    ensure_private_dir(settings.data_dir)
    store = open_event_store(settings.store_url)
    db = SqlDatabase(settings.store_url)
    if settings.store_url.startswith("sqlite"):
        private_sqlite_files(sqlite_path(settings.store_url))
    clock = build_clock(settings, db)
    return Runtime(
        settings,
        store,
        db,
        clock,
        Authenticator(store, db),
        CommandVerifier(db, Principals(store)),
    )


def private_sqlite_files(path: Path) -> None:
    """The embedded event store (and its journal files) readable by this user only."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def configure_logging(service: str, settings: Settings) -> None:
    """The service's logs (``shared/logs.py``): repeats rate-limited, a rotated file if set."""
    logs.configure_logging(
        service,
        settings.log_level,
        settings.log_file,
        settings.log_max_bytes,
        settings.log_backups,
    )
