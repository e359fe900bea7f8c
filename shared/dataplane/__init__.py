"""The data plane: what a backup physically is.

- :mod:`.objectstore`: one object-store abstraction chosen by URL (local directory, S3);
- :mod:`.chunks`: content-defined chunks, zstd, SHA-256, streamed with bounded memory;
- :mod:`.manifest`: the immutable per-backup manifest (versioned pydantic models);
- :mod:`.keys`, :mod:`.sealing`: encryption at rest (key providers; chains sealed under a data
  key wrapped by a key-encryption key, behind the object store);
- :mod:`.errors`: :class:`BackupError` and its codes, mapped from PostgreSQL's and tools' failures;
- :mod:`.sql`: SQL text shared by backup and restore (quoting, session settings, key types);
- :mod:`.tools`: finding and running PostgreSQL's client tools;
- :mod:`.engine`: the engine interface, a backup side and a restore side;
- :mod:`.postgres`: the ``postgres`` adapter (its docstring explains incremental change
  detection and why it is correct);
- :mod:`.restore_rows`: rebuilding tables from a chain, restoring into PostgreSQL;
- :mod:`.verify`: verifying backups, cleaning up partial objects.
"""

from .engine import BackupError, BackupRequest, EngineAdapter, ErrorCode, RestoreError
from .manifest import (
    BackupType,
    Catalog,
    Manifest,
    ManifestError,
    TableMode,
    list_manifests,
    load_chain,
    load_manifest,
    read_manifest,
)
from .objectstore import ObjectStore, ObjectStoreError, open_store
from .postgres import PostgresAdapter
from .restore_rows import iter_table_rows, restore_database, restore_table, rows_digest
from .verify import CleanupReport, VerifyReport, cleanup_partial, verify_backup

__all__ = [
    "BackupError",
    "BackupRequest",
    "BackupType",
    "Catalog",
    "CleanupReport",
    "EngineAdapter",
    "ErrorCode",
    "Manifest",
    "ManifestError",
    "ObjectStore",
    "ObjectStoreError",
    "PostgresAdapter",
    "RestoreError",
    "TableMode",
    "VerifyReport",
    "cleanup_partial",
    "iter_table_rows",
    "list_manifests",
    "load_chain",
    "load_manifest",
    "open_store",
    "read_manifest",
    "restore_database",
    "restore_table",
    "rows_digest",
    "verify_backup",
]
