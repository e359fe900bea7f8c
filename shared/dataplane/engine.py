"""The engine adapter interface: what the executor and the restore service need of an engine.

An adapter turns one database cluster into chunks and a :class:`~.manifest.Manifest`
(:meth:`EngineAdapter.full_backup`, :meth:`EngineAdapter.incremental_backup`), reports the live
catalog, and turns a chain of manifests back into table rows
(:meth:`EngineAdapter.iter_table_rows`) or a restored database. ``postgres`` is the first
(:mod:`.postgres`); a ``cockroachdb`` adapter implements the same methods.

The interface has a backup side (:class:`BackupEngine`: the executor) and a restore side
(:class:`RestoreEngine`: the restore service); :class:`EngineAdapter` is both.

Every failure the service should report is a :class:`BackupError` (:mod:`.errors`) with a
stable ``code``, a human message, and the ``step`` (or SQL statement) that failed. Messages never contain
passwords: connection parameters travel as a libpq DSN without password, and secrets through
the adapter's ``password`` / ``env`` arguments.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from .errors import BackupError, ErrorCode, RestoreError
from .manifest import Catalog, Manifest
from .objectstore import ObjectStore

__all__ = [
    "BackupEngine",
    "BackupError",
    "BackupRequest",
    "EngineAdapter",
    "ErrorCode",
    "RestoreEngine",
    "RestoreError",
]


@dataclass(frozen=True)
class BackupRequest:
    """One backup to take.

    ``known_chunks`` (hash → stored size) are chunks already in the chain that need no upload;
    the adapter adds the previous manifest's own. ``cancel`` aborts the backup as soon as
    every stream sees it (raises ``BackupError(CANCELLED)``). ``on_progress`` receives the
    fraction (0..1) of the estimated bytes done. ``on_snapshots`` is called once per group of
    databases whose snapshots were just taken (and whose tables are locked), with database name
    → exported snapshot id, before any of their rows is read: a caller may import a snapshot
    (``SET TRANSACTION SNAPSHOT``, ``pg_dump --snapshot``) to read the source exactly as the
    backup sees it (verification, the differential tests). It must not take locks that
    conflict with ``ACCESS SHARE`` nor return late: the backup waits for it.
    """

    store: ObjectStore
    cluster_id: str
    backup_id: str
    cancel: threading.Event | None = None
    on_progress: Callable[[float], None] | None = None
    known_chunks: Mapping[str, int] | None = None
    on_snapshots: Callable[[Mapping[str, str]], None] | None = None
    before_commit: Callable[[], None] | None = None
    """Called right before the manifest (the backup's commit) is written; it raises (e.g. a
    ``BackupError(LEASE_LOST)`` when the worker's fencing token is stale) to refuse the write."""


class BackupEngine(ABC):
    """The backup side: what the executor needs of an engine."""

    engine: ClassVar[str]

    @abstractmethod
    def full_backup(self, request: BackupRequest) -> Manifest:
        """Take a full backup; the new chain's id is ``request.backup_id``."""

    @abstractmethod
    def incremental_backup(self, request: BackupRequest, previous: Manifest) -> Manifest:
        """Take an incremental on top of ``previous`` (the latest backup of its chain)."""

    @abstractmethod
    def catalog(self) -> Catalog:
        """The live catalog: databases → schemas → tables with sizes and row estimates."""


class RestoreEngine(ABC):
    """The restore side: reading a chain of manifests back (no connection to the source)."""

    engine: ClassVar[str]

    @abstractmethod
    def iter_table_rows(
        self,
        store: ObjectStore,
        chain: Sequence[Manifest],
        database: str,
        schema: str,
        table: str,
    ) -> Iterator[bytes]:
        """The table's rows at ``chain[-1]``, as the engine's row stream, verified."""


class EngineAdapter(BackupEngine, RestoreEngine):
    """Both sides of one engine (``postgres``: :class:`~.postgres.PostgresAdapter`)."""
