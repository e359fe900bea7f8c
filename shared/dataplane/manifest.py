"""Backup manifests: the one immutable document that makes a backup exist.

Layout in a region's object store::

    clusters/{cluster}/chains/{full_backup_id}/manifests/{backup_id}.json
    clusters/{cluster}/chains/{full_backup_id}/chunks/{hh}/{sha256}

A backup is *listed* (restorable) only once its manifest exists; the manifest is written last
and exactly once (:meth:`ObjectStore.put_new`). Chunks without a manifest are partial objects of
a backup whose writer died (see :mod:`.verify` for the clean-up rule).

Versioning: every manifest carries ``schema_version``. :func:`load_manifest` dispatches on it.
Version 2 only *adds* fields to version 1, so one model reads both: a version 1 document
validates with every version 2 field at its default, which means "not recorded" (``None``,
``[]``), and a version 1 document carrying a version 2 field is refused. Writers treat "not
recorded" as unknown and store whole (e.g. a database without a recorded ``oid`` cannot be
proven to be the same database). A future version that changes a shape gets its own model and
an upgrade function. Models are frozen and forbid unknown fields, so a manifest written by a
newer writer is refused loudly instead of being half-read.

Version 2 added: ``DatabaseBackup.oid``, ``is_template``, ``properties`` (owner, ACL,
connection limit, comment, database and role-in-database settings), ``matviews``,
``large_objects``; ``SequenceValue.is_called``; ``Catalog.skipped_databases``. Its schema
archive also holds the large objects (``pg_dump -b --exclude-table-data='*.*'``, where version 1
used ``--schema-only``), and table fingerprints cover the columns' whole type closure.

Version 3 adds ``TableBackup.data_offset`` (small tables share chunks:
a table's stream is a byte range of its chunks' concatenation),
``DatabaseBackup.schema_fingerprint``, the table mode ``UNCHANGED`` and a stored form that is
relative to the parent, so that an incremental of a schema of thousands of small tables, of
which a few changed, stores a few kilobytes instead of repeating every table's entry:

- an incremental's table in which no row changed and none was deleted since the previous
  backup is ``UNCHANGED``: it stores nothing, and a restore takes the table as the previous
  entries of the chain hold it;
- the stored document is a zstd frame of the JSON (readers tell it from the older, plain JSON
  documents by the frame's magic number; the object keeps its ``.json`` key), and an
  ``UNCHANGED`` entry is stored as its name and mode only (``{"schema_name", "name",
  "mode"}``): everything else (oid, fingerprint, columns, key, live rows, size) is the
  previous backup's entry for the same table, filled in when the manifest is read with its
  parent (:func:`read_manifest`, :func:`list_manifests` and :func:`load_chain` do;
  :func:`load_manifest` takes the parent as an argument). The model in memory always holds the
  whole entries, so nothing but this module sees the stored form.

Version 4 (what is written now) adds what else ``pg_dump --create`` keeps of a database:
``DatabaseBackup.locale`` (its locale provider, the ICU or builtin provider's locale, ICU
rules, collation version: :class:`DatabaseLocale`), and ``DatabaseProperties.tablespace`` and
``security_labels``. A version 3 or older database has no recorded locale: it is restored
with the libc provider and its ``collate``/``ctype``, as those versions did. Its stored form
is version 3's.

How a stored manifest is read, outermost first: an encrypted chain's objects are sealed
envelopes (:mod:`.sealing`: magic ``89 4d 42 45 01``), opened by the store sealed for the cluster
before the bytes reach :func:`_decode` (raw sealed bytes here are refused: they need the
cluster's key); then a zstd frame (its magic number: version 3 and later) or plain JSON
(versions 1 and 2); then ``schema_version`` picks the model. Encryption is therefore not a
schema version: any version can be stored sealed or not.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Literal

import zstandard
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .objectstore import ObjectNotFound, ObjectStore
from .sealing import is_sealed

__all__ = [
    "SCHEMA_VERSION",
    "BackupType",
    "Catalog",
    "CatalogDatabase",
    "CatalogSchema",
    "CatalogTable",
    "ChunkRef",
    "DatabaseBackup",
    "DatabaseLocale",
    "DatabaseProperties",
    "KeyColumn",
    "KeySet",
    "KeySetFormat",
    "Manifest",
    "ManifestError",
    "MatView",
    "PgSnapshot",
    "RoleSettings",
    "SecurityLabel",
    "SequenceValue",
    "SkippedDatabase",
    "TableBackup",
    "TableMode",
    "Totals",
    "chain_prefix",
    "check_chain",
    "chunk_key",
    "list_manifests",
    "load_chain",
    "load_manifest",
    "manifest_key",
    "read_catalog",
    "read_manifest",
    "save_manifest",
    "unchanged_entry",
]

SCHEMA_VERSION = 4
_VERSIONS = (1, 2, 3, 4)
_RELATIVE_VERSIONS = (3, 4)
"""Versions stored compressed and relative to the parent (``UNCHANGED`` entries)."""
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_MANIFEST_BYTES = 1 << 30
"""Largest decompressed manifest read (a guard against a corrupt frame header)."""
_STORED_UNCHANGED_FIELDS = frozenset({"schema_name", "name", "mode"})


class ManifestError(Exception):
    """A manifest is unreadable, of an unknown schema version, or a chain is inconsistent."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackupType(StrEnum):
    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"


class TableMode(StrEnum):
    FULL = "FULL"
    """All rows, in a full backup."""
    DELTA = "DELTA"
    """Rows changed since the previous backup of the chain, plus the table's key set."""
    WHOLE = "WHOLE"
    """All rows, in an incremental (no usable key, definition changed, ...): see ``reason``."""
    UNCHANGED = "UNCHANGED"
    """Version 3, in an incremental: no row inserted, updated or deleted since the previous
    backup of the chain. Nothing stored (no data, no key set); the entry's other fields are the
    previous entry's, and a restore takes the table as the previous entries hold it."""


class KeySetFormat(StrEnum):
    RANGES = "RANGES"
    """Single integer key: COPY text lines ``lo<TAB>hi`` of maximal runs of consecutive keys."""
    KEYS = "KEYS"
    """COPY text lines of the key columns, in key order."""


class ChunkRef(_Model):
    """A stored chunk: SHA-256 of its raw bytes, raw size, stored (compressed) size."""

    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    stored: int = Field(ge=0)


class PgSnapshot(_Model):
    """The exported snapshot a backup was read in (64-bit transaction ids, ``xid8``)."""

    snapshot_id: str
    xmin: int
    xmax: int
    xip: list[int]
    text: str
    taken_at: datetime
    """``statement_timestamp()`` of the statement that took the snapshot."""

    @field_validator("taken_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)


class KeyColumn(_Model):
    name: str
    type: str
    """Base type name (``int4``, ``text``, ...)."""


class KeySet(_Model):
    format: KeySetFormat
    chunks: list[ChunkRef]
    keys: int
    """Number of keys (live rows) in the set."""
    size: int
    """Raw bytes of the key-set stream."""


class SequenceValue(_Model):
    schema_name: str
    name: str
    last_value: int | None
    """Version 1: ``None`` when the sequence was never used (restore leaves it at its start).
    Version 2: the sequence's ``last_value`` as stored (set whatever ``is_called``)."""
    is_called: bool | None = None
    """Version 2: ``setval(seq, last_value, is_called)`` restores the state exactly (after
    ``RESTART`` or ``setval(..., false)`` the next value is ``last_value`` itself)."""


class MatView(_Model):
    """A materialized view; a restore refreshes the populated ones, as ``pg_restore`` does."""

    schema_name: str
    name: str
    populated: bool


class RoleSettings(_Model):
    role: str | None
    """``None``: ``ALTER DATABASE ... SET``; a role: ``ALTER ROLE ... IN DATABASE ... SET``."""
    settings: list[str]
    """``name=value`` as ``pg_db_role_setting`` stores them."""


class SecurityLabel(_Model):
    provider: str
    label: str


class DatabaseProperties(_Model):
    """What ``pg_dump --create`` would say of the database itself."""

    owner: str
    acl: str | None
    """``datacl`` as text (``None``: the default privileges)."""
    connection_limit: int
    comment: str | None
    settings: list[RoleSettings]
    tablespace: str | None = None
    """Version 4: the database's default tablespace (``None``: not recorded)."""
    security_labels: list[SecurityLabel] = []
    """Version 4: ``SECURITY LABEL ... ON DATABASE`` (``pg_shseclabel``)."""


class DatabaseLocale(_Model):
    """Version 4: how the database sorts and classifies text, beyond ``collate`` and ``ctype``
    (``pg_database``'s locale columns, which differ by server version; see
    ``postgres_catalog.locale_sql``)."""

    provider: Literal["libc", "icu", "builtin"]
    """``datlocprovider`` (PostgreSQL 15 and later; ``libc`` before)."""
    locale: str | None = None
    """The ICU or builtin provider's locale: ``daticulocale`` (15, 16), ``datlocale`` (17 and
    later); ``None`` for libc."""
    icu_rules: str | None = None
    """``daticurules`` (16 and later)."""
    collation_version: str | None = None
    """``datcollversion`` (15 and later). Not given to ``CREATE DATABASE`` (the destination
    computes its own, as after ``pg_dump``); a restore says when they differ."""


class TableBackup(_Model):
    schema_name: str
    name: str
    oid: int
    fingerprint: str
    """SHA-256 of the table's definition (oid, columns, types, enum labels, key); a change
    means the next incremental stores the table WHOLE."""
    columns: list[str]
    """The COPY column list (generated columns excluded)."""
    key_columns: list[KeyColumn]
    """Primary key columns, empty if none."""
    ordered: bool
    """Rows are in key order with byte-comparable collation (``COLLATE "C"`` for text keys), so
    incrementals can be merged onto them."""
    mode: TableMode
    reason: str | None = None
    """Why an incremental stored the table WHOLE."""
    rows: int
    """Rows in this backup's data stream (all rows, or the changed rows for DELTA)."""
    live_rows: int
    """Rows of the table at the snapshot."""
    data: list[ChunkRef]
    data_size: int
    """Raw bytes of the data stream (COPY text)."""
    data_offset: int = Field(default=0, ge=0)
    """Version 3: where the data stream starts in the first chunk of ``data``. Small tables
    share chunks (a *pack*): ``data`` lists the chunks that hold the table's stream, which is
    ``data_size`` bytes from ``data_offset`` of their concatenation. 0 for a table stored in
    chunks of its own."""
    key_set: KeySet | None = None
    size_bytes: int
    """``pg_total_relation_size`` at backup time."""
    extension_condition: str | None = None
    """Version 2: an extension configuration table (``pg_extension_config_dump``): the rows
    kept are those of this ``WHERE`` clause (``""``: all), restored by appending to the rows
    ``CREATE EXTENSION`` made; ``None`` for an ordinary table."""


class DatabaseBackup(_Model):
    name: str
    encoding: str
    collate: str
    ctype: str
    size_bytes: int
    snapshot: PgSnapshot
    """The database's exported snapshot (one per database: PostgreSQL does not let a
    snapshot be imported into another database)."""
    schema_archive: list[ChunkRef]
    """``pg_dump -Fc`` archive without table data (filterable with ``pg_restore -l`` / ``-L``):
    version 1 ``--schema-only``, version 2 ``-b --exclude-table-data='*.*'`` (with large objects)."""
    schema_archive_size: int
    schema_fingerprint: str | None = None
    """Version 3: digest of the catalog state the schema archive was dumped from (see
    ``postgres_catalog.read_schema_fingerprint``). An incremental whose digest is the same
    references the previous archive's chunks instead of running ``pg_dump`` again; ``None``
    (not recorded, or some catalog unreadable) always dumps."""
    tables: list[TableBackup]
    sequences: list[SequenceValue] = []
    oid: int | None = None
    """Version 2: the database's identity; a database recreated or swapped in under the same
    name has another oid, and its next incremental stores every table whole."""
    is_template: bool = False
    properties: DatabaseProperties | None = None
    locale: DatabaseLocale | None = None
    """Version 4 (``None``: not recorded; restored with the libc provider)."""
    matviews: list[MatView] = []
    large_objects: int | None = None
    """Version 2: large objects in the schema archive (``None``: not recorded)."""

    @cached_property
    def _tables_by_name(self) -> dict[tuple[str, str], TableBackup]:
        return {(t.schema_name, t.name): t for t in self.tables}

    def table(self, schema: str, name: str) -> TableBackup | None:
        """The table ``schema.name`` of this database (a dict look-up: databases of
        thousands of tables are looked up once per table)."""
        return self._tables_by_name.get((schema, name))


class SkippedDatabase(_Model):
    name: str
    reason: str


class CatalogTable(_Model):
    name: str
    rows: int
    size_bytes: int


class CatalogSchema(_Model):
    name: str
    tables: list[CatalogTable]


class CatalogDatabase(_Model):
    name: str
    table_count: int
    """0 for a database without tables (views leave such databases out)."""
    size_bytes: int
    schemas: list[CatalogSchema]


class Catalog(_Model):
    databases: list[CatalogDatabase]
    skipped_databases: list[SkippedDatabase] = []
    """Databases of the cluster this backup does not hold, each with the reason."""

    @property
    def database_count(self) -> int:
        """Databases that hold at least one table (what the backups view counts)."""
        return sum(1 for db in self.databases if db.table_count > 0)


class Totals(_Model):
    logical_bytes: int
    """Raw bytes of every stream of this backup (COPY text, archives, key sets)."""
    stored_bytes: int
    """Stored (compressed) bytes of every chunk this backup references, each counted once."""
    new_stored_bytes: int
    """Bytes of the chunks this backup added to the store (its manifest comes on top: the
    size ``save_manifest`` returns)."""
    chunks: int
    """Distinct chunks referenced."""
    new_chunks: int


class Manifest(_Model):
    schema_version: Literal[1, 2, 3, 4] = 4
    engine: Literal["postgres"] = "postgres"
    backup_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    cluster_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    type: BackupType
    chain_id: str
    """The full backup this one belongs to (itself for a full)."""
    parent_id: str | None
    """The previous backup of the chain (``None`` for a full)."""
    data_from: datetime
    """Every transaction committed before this instant is in the backup (UTC): the earliest
    of the databases' snapshot times."""
    started_at: datetime
    completed_at: datetime
    server_version: str
    server_version_num: int
    system_identifier: int | None = None
    """``pg_control_system()``; ``None`` when the backup role may not read it."""
    timeline_id: int | None = None
    """``pg_control_checkpoint()``; ``None`` when the backup role may not read it."""
    globals_dump: list[ChunkRef]
    """``pg_dumpall --globals-only`` (roles, tablespaces) as SQL."""
    globals_without_passwords: bool = False
    databases: list[DatabaseBackup]
    catalog: Catalog
    totals: Totals

    @field_validator("data_from", "started_at", "completed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _version_1_has_no_version_2_fields(self) -> Manifest:
        if self.schema_version == 1:
            v2 = self.catalog.skipped_databases or any(
                db.oid is not None
                or db.properties is not None
                or db.matviews
                or db.large_objects is not None
                or db.is_template
                or any(seq.is_called is not None for seq in db.sequences)
                for db in self.databases
            )
            if v2:
                raise ValueError("a version 1 manifest cannot hold version 2 fields")
        if self.schema_version < 3 and any(
            db.schema_fingerprint or any(t.data_offset for t in db.tables) for db in self.databases
        ):
            raise ValueError(
                f"a version {self.schema_version} manifest cannot hold version 3 fields"
            )
        if self.schema_version < 4 and any(
            db.locale is not None
            or (
                db.properties is not None
                and (db.properties.tablespace is not None or db.properties.security_labels)
            )
            for db in self.databases
        ):
            raise ValueError(
                f"a version {self.schema_version} manifest cannot hold version 4 fields"
            )
        unchanged = any(t.mode == TableMode.UNCHANGED for db in self.databases for t in db.tables)
        if unchanged and (self.schema_version < 3 or self.type != BackupType.INCREMENTAL):
            raise ValueError("only a version 3 or later incremental can hold UNCHANGED tables")
        return self

    def database(self, name: str) -> DatabaseBackup:
        for db in self.databases:
            if db.name == name:
                return db
        raise KeyError(f"database {name!r} not in backup {self.backup_id}")

    def table(self, database: str, schema: str, table: str) -> TableBackup | None:
        for db in self.databases:
            if db.name == database:
                return db.table(schema, table)
        return None

    def chunk_refs(self) -> Iterator[ChunkRef]:
        """Every chunk this manifest references itself (not its parents'), with repeats."""
        yield from self.globals_dump
        for db in self.databases:
            yield from db.schema_archive
            for t in db.tables:
                yield from t.data
                if t.key_set is not None:
                    yield from t.key_set.chunks

    def to_json(self) -> bytes:
        """The whole document as JSON (every entry complete: readable without the parent)."""
        return self.model_dump_json(indent=None).encode()

    def to_stored(self) -> bytes:
        """What :func:`save_manifest` writes: versions 1 and 2 as JSON; versions 3 and 4 as a
        zstd frame of the JSON in which ``UNCHANGED`` entries keep only their name and mode
        (the rest is the parent's, see the module docstring)."""
        if self.schema_version not in _RELATIVE_VERSIONS:
            return self.to_json()
        # UNCHANGED entries are not dumped whole only to be cut down (thousands of them).
        dropped = set(TableBackup.model_fields) - _STORED_UNCHANGED_FIELDS
        relative = {
            i: {
                "tables": {
                    j: dropped for j, t in enumerate(db.tables) if t.mode == TableMode.UNCHANGED
                }
            }
            for i, db in enumerate(self.databases)
        }
        doc = self.model_dump(mode="json", exclude={"databases": relative})
        raw = json.dumps(doc, separators=(",", ":")).encode()
        # The document is repetitive: level 3 compresses it as well as 9, ten times faster.
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)


# ---------------------------------------------------------------------------- keys
def chain_prefix(cluster_id: str, chain_id: str) -> str:
    return f"clusters/{cluster_id}/chains/{chain_id}"


def chunk_key(cluster_id: str, chain_id: str, digest: str) -> str:
    return f"{chain_prefix(cluster_id, chain_id)}/chunks/{digest[:2]}/{digest}"


def manifest_key(cluster_id: str, chain_id: str, backup_id: str) -> str:
    return f"{chain_prefix(cluster_id, chain_id)}/manifests/{backup_id}.json"


# ---------------------------------------------------------------------------- I/O
_Raw = dict[str, object]


def _decode(data: bytes) -> _Raw:
    """A stored manifest's JSON object (version 3 documents are a zstd frame of it)."""
    if is_sealed(data):
        raise ManifestError("the manifest is encrypted: read it through the cluster's sealed store")
    if data[:4] == _ZSTD_MAGIC:
        try:
            data = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=_MAX_MANIFEST_BYTES
            )
        except zstandard.ZstdError as exc:
            raise ManifestError(f"manifest is not a readable zstd frame: {exc}") from None
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError("manifest is not a JSON object")
    return raw


def _stored_unchanged(raw: _Raw) -> Iterator[tuple[str, list[object], int]]:
    """(database name, its table list, index) of every entry stored relative to the parent."""
    databases = raw.get("databases")
    if raw.get("schema_version") not in _RELATIVE_VERSIONS or not isinstance(databases, list):
        return
    for db in databases:
        tables = db.get("tables") if isinstance(db, dict) else None
        if not isinstance(tables, list):
            continue
        for i, t in enumerate(tables):
            if isinstance(t, dict) and t.get("mode") == TableMode.UNCHANGED and "oid" not in t:
                yield str(db.get("name")), tables, i


def _needs_parent(raw: _Raw) -> bool:
    return next(_stored_unchanged(raw), None) is not None


def _validate(raw: _Raw, parent: Manifest | None) -> Manifest:
    version = raw.get("schema_version")
    if version not in _VERSIONS:
        raise ManifestError(f"unsupported manifest schema_version {version!r}")
    for db_name, tables, i in list(_stored_unchanged(raw)):
        entry = tables[i]
        assert isinstance(entry, dict)
        if set(entry) != _STORED_UNCHANGED_FIELDS:
            raise ManifestError(f"invalid version {version} manifest: UNCHANGED entry {entry!r}")
        if parent is None or parent.backup_id != raw.get("parent_id"):
            raise ManifestError(
                f"backup {raw.get('backup_id')} holds tables unchanged since its parent"
                f" {raw.get('parent_id')}: it is read with that parent"
            )
        previous = parent.table(db_name, str(entry["schema_name"]), str(entry["name"]))
        if previous is None:
            raise ManifestError(
                f"backup {raw.get('backup_id')}: unchanged table {db_name}.{entry['schema_name']}"
                f".{entry['name']} is not in its parent {parent.backup_id}"
            )
        tables[i] = unchanged_entry(previous).model_dump(mode="json")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise ManifestError(f"invalid version {version} manifest: {exc}") from None


def unchanged_entry(previous: TableBackup) -> TableBackup:
    """The ``UNCHANGED`` entry of a table whose previous entry is ``previous``."""
    if previous.mode == TableMode.UNCHANGED:
        return previous
    return previous.model_copy(
        update={
            "mode": TableMode.UNCHANGED,
            "reason": None,
            "rows": 0,
            "data": [],
            "data_size": 0,
            "key_set": None,
        }
    )


def load_manifest(data: bytes, parent: Manifest | None = None) -> Manifest:
    """Parse a stored manifest of any known schema version into the current model.

    A version 3 incremental holding ``UNCHANGED`` tables is read with its ``parent`` (itself
    read with its own: :func:`read_manifest` does this)."""
    return _validate(_decode(data), parent)


def save_manifest(store: ObjectStore, manifest: Manifest) -> int:
    """Write the manifest once (fails with ``ObjectExists`` if it is already there); returns
    the bytes written."""
    data = manifest.to_stored()
    store.put_new(manifest_key(manifest.cluster_id, manifest.chain_id, manifest.backup_id), data)
    return len(data)


def _resolve(raw: _Raw, read_parent: Callable[[str], _Raw]) -> Manifest:
    """``raw`` validated, its parents read (with ``read_parent``) back to the first one that
    is stored whole."""
    pending = [raw]
    seen = {str(raw.get("backup_id"))}
    while _needs_parent(pending[-1]):
        parent_id = pending[-1].get("parent_id")
        if not isinstance(parent_id, str):
            raise ManifestError(f"backup {pending[-1].get('backup_id')} has no parent to read")
        if parent_id in seen:
            raise ManifestError(f"cycle in chain at {parent_id}")
        seen.add(parent_id)
        pending.append(read_parent(parent_id))
    parent: Manifest | None = None
    for item in reversed(pending):
        parent = _validate(item, parent)
    assert parent is not None
    return parent


def read_manifest(store: ObjectStore, cluster_id: str, chain_id: str, backup_id: str) -> Manifest:
    """The manifest of ``backup_id``, with the parents it is stored relative to read too."""

    def read(bid: str) -> _Raw:
        try:
            return _decode(store.get(manifest_key(cluster_id, chain_id, bid)))
        except ObjectNotFound:
            if bid == backup_id:
                raise
            raise ManifestError(f"backup {backup_id}: parent {bid} has no manifest") from None

    return _resolve(read(backup_id), read)


def read_catalog(store: ObjectStore, cluster_id: str, chain_id: str, backup_id: str) -> Catalog:
    """The catalog of ``backup_id`` alone: every version stores it whole, so its parents are
    not read (the views' table listings read a backup's catalog, not its tables' entries)."""
    raw = _decode(store.get(manifest_key(cluster_id, chain_id, backup_id)))
    version = raw.get("schema_version")
    if version not in _VERSIONS:
        raise ManifestError(f"unsupported manifest schema_version {version!r}")
    try:
        return Catalog.model_validate(raw.get("catalog"))
    except ValueError as exc:
        raise ManifestError(f"invalid version {version} manifest catalog: {exc}") from None


def list_manifests(store: ObjectStore, cluster_id: str, chain_id: str) -> list[Manifest]:
    """Every manifest of a chain, oldest first (by ``data_from``)."""
    prefix = f"{chain_prefix(cluster_id, chain_id)}/manifests/"
    raws = [
        _decode(store.get(info.key)) for info in store.list(prefix) if info.key.endswith(".json")
    ]
    by_id = {str(r.get("backup_id")): r for r in raws}
    done: dict[str, Manifest] = {}

    def resolved(bid: str, seen: frozenset[str] = frozenset()) -> Manifest:
        if bid in done:
            return done[bid]
        raw = by_id.get(bid)
        if raw is None:
            raise ManifestError(f"chain {chain_id}: backup {bid} has no manifest")
        parent: Manifest | None = None
        parent_id = raw.get("parent_id")
        if _needs_parent(raw) and isinstance(parent_id, str):
            if parent_id in seen:
                raise ManifestError(f"cycle in chain at {parent_id}")
            parent = resolved(parent_id, seen | {bid})
        done[bid] = _validate(raw, parent)
        return done[bid]

    out = [resolved(bid) for bid in by_id]
    return sorted(out, key=lambda m: (m.data_from, m.type != BackupType.FULL))


def load_chain(store: ObjectStore, manifest: Manifest) -> list[Manifest]:
    """``manifest`` and its parents back to the full, oldest first (read from the store; each
    manifest is read once, whatever the parents it is stored relative to)."""
    raws: list[_Raw] = []
    seen = {manifest.backup_id}
    parent_id = manifest.parent_id
    child = manifest.backup_id
    while parent_id is not None:
        try:
            raw = _decode(
                store.get(manifest_key(manifest.cluster_id, manifest.chain_id, parent_id))
            )
        except ObjectNotFound:
            raise ManifestError(f"backup {child}: parent {parent_id} has no manifest") from None
        if parent_id in seen or str(raw.get("backup_id")) in seen:
            raise ManifestError(f"cycle in chain at {parent_id}")
        seen.add(parent_id)
        raws.append(raw)
        child = parent_id
        next_id = raw.get("parent_id")
        parent_id = next_id if isinstance(next_id, str) else None
    chain: list[Manifest] = []
    for raw in reversed(raws):
        chain.append(_validate(raw, chain[-1] if chain else None))
    chain.append(manifest)
    check_chain(chain)
    return chain


def check_chain(chain: Sequence[Manifest]) -> None:
    """Raise ``ManifestError`` unless ``chain`` is a full followed by its consecutive children."""
    if not chain:
        raise ManifestError("empty chain")
    head = chain[0]
    if head.type != BackupType.FULL or head.chain_id != head.backup_id:
        raise ManifestError(f"chain must start with a full backup, not {head.backup_id}")
    for prev, cur in itertools.pairwise(chain):
        if cur.type != BackupType.INCREMENTAL or cur.parent_id != prev.backup_id:
            raise ManifestError(f"{cur.backup_id} does not follow {prev.backup_id}")
        if cur.chain_id != head.backup_id or cur.cluster_id != head.cluster_id:
            raise ManifestError(f"{cur.backup_id} is not in chain {head.backup_id}")
