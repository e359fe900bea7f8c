"""Verifying backups and cleaning up the partial objects of backups that never completed.

Verification (:func:`verify_backup`) reads every chunk a backup needs to be restored — its own,
and the chunks of earlier backups of the chain that its incremental tables build on (the base
rows and earlier deltas) — decompresses each, and checks its size and SHA-256. It reports the
missing and corrupt chunk keys instead of stopping at the first. :func:`verify_stored` starts
from the backup's id: a manifest of the chain that is missing or fails authentication (an
encrypted chain's manifest altered) is reported like a chunk, by its key; a chain whose key no
key of the cluster opens raises :class:`~.keys.KeyUnavailable`.

Partial objects and their clean-up (:func:`cleanup_partial`). Chunks are uploaded before the
manifest, and the manifest is written last, once: a backup whose writer died leaves chunks
but no manifest, and is never listed because listing goes by manifests. The rule:

- Only one chain is cleaned at a time, and every manifest in it must parse (otherwise nothing
  is deleted: we never guess what an unreadable manifest references).
- The manifests to keep are all of the chain's manifests, or those in ``keep`` (the backups the
  control plane recorded as complete); a manifest outside ``keep`` is deleted too, unless a
  kept backup builds on it (then the call fails: the caller's view is inconsistent).
- Every chunk of the chain that no kept manifest references is deleted. When no manifest is
  kept, the whole chain prefix is deleted.
- It must not run while a backup is being written into the same chain (its chunks have no
  manifest yet, and a chunk it found already stored it only references: content-addressed
  writes skip a key that exists). The retention service's leftover sweep
  (``services/retention/leftovers.py``) calls it under a handshake with the executor that
  guarantees this.
- The report says what went: the objects and their stored bytes (from one listing of the
  chain, so a caller records what the deletion freed).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .chunks import ChunkCorrupt, ChunkMissing, ChunkStore
from .manifest import (
    ChunkRef,
    Manifest,
    ManifestError,
    TableMode,
    chain_prefix,
    list_manifests,
    load_chain,
    manifest_key,
    read_manifest,
)
from .objectstore import ObjectNotFound, ObjectStore
from .sealing import SealBroken

__all__ = [
    "CleanupReport",
    "VerifyReport",
    "cleanup_partial",
    "required_chunks",
    "verify_backup",
    "verify_stored",
]


@dataclass
class VerifyReport:
    backup_id: str
    chunks_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def required_chunks(chain: Sequence[Manifest]) -> dict[str, ChunkRef]:
    """Every distinct chunk needed to restore ``chain[-1]`` (``chain`` from the full on)."""
    head = chain[-1]
    refs: dict[str, ChunkRef] = {}

    def add(items: Sequence[ChunkRef]) -> None:
        for ref in items:
            refs.setdefault(ref.hash, ref)

    add(head.globals_dump)
    by_id = {m.backup_id: i for i, m in enumerate(chain)}
    for db in head.databases:
        add(db.schema_archive)
        for t in db.tables:
            # The newest entry that stores something (UNCHANGED ones store nothing) brings its
            # data and its key set; a delta, the data of every entry down to its base.
            entry = t
            index = by_id[head.backup_id]
            key_set_added = False
            while True:
                add(entry.data)
                if entry.key_set is not None and not key_set_added:
                    add(entry.key_set.chunks)
                if entry.mode != TableMode.UNCHANGED:
                    key_set_added = True
                if entry.mode not in (TableMode.DELTA, TableMode.UNCHANGED):
                    break
                index -= 1
                prev = chain[index].table(db.name, t.schema_name, t.name) if index >= 0 else None
                if prev is None:
                    raise ManifestError(
                        f"{db.name}.{t.schema_name}.{t.name}: {entry.mode.lower()} entry"
                        " without base"
                    )
                entry = prev
    return refs


def verify_backup(
    store: ObjectStore,
    manifest: Manifest,
    *,
    chain: Sequence[Manifest] | None = None,
    workers: int = 4,
) -> VerifyReport:
    """Read and check every chunk ``manifest`` depends on (loading its parents if needed)."""
    if chain is None:
        chain = load_chain(store, manifest) if manifest.parent_id is not None else [manifest]
    if chain[-1].backup_id != manifest.backup_id:
        raise ManifestError("chain must end with the manifest to verify")
    refs = list(required_chunks(chain).values())
    report = VerifyReport(backup_id=manifest.backup_id)
    lock = threading.Lock()
    with ChunkStore(store, manifest.cluster_id, manifest.chain_id, workers=1) as chunks:

        def check(ref: ChunkRef) -> None:
            try:
                chunks.read_chunk(ref)
            except ChunkMissing as exc:
                with lock:
                    report.missing.append(exc.key)
                return
            except ChunkCorrupt as exc:
                with lock:
                    report.corrupt.append(exc.key)
                return
            with lock:
                report.chunks_checked += 1
                report.bytes_checked += ref.size

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
            list(pool.map(check, refs))
    report.missing.sort()
    report.corrupt.sort()
    return report


def verify_stored(
    store: ObjectStore, cluster_id: str, chain_id: str, backup_id: str, *, workers: int = 4
) -> VerifyReport:
    """Read the backup's manifest and its chain's, then :func:`verify_backup`. A manifest that
    is missing or fails authentication is reported (its key), not raised."""
    try:
        manifest = read_manifest(store, cluster_id, chain_id, backup_id)
        chain = load_chain(store, manifest) if manifest.parent_id is not None else [manifest]
    except ObjectNotFound as exc:
        return VerifyReport(backup_id=backup_id, missing=[str(exc)])
    except SealBroken as exc:
        return VerifyReport(backup_id=backup_id, corrupt=[exc.key])
    return verify_backup(store, manifest, chain=chain, workers=workers)


@dataclass
class CleanupReport:
    chain_id: str
    kept_manifests: list[str] = field(default_factory=list)
    deleted_manifests: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    deleted_bytes: int = 0
    """Stored bytes of the deleted objects (their sizes as listed)."""
    deleted_chain: bool = False


def cleanup_partial(
    store: ObjectStore,
    cluster_id: str,
    chain_id: str,
    *,
    keep: Collection[str] | None = None,
    manifests: Sequence[Manifest] | None = None,
    dry_run: bool = False,
) -> CleanupReport:
    """Delete the chain's objects no kept manifest references (see the module docstring).

    ``manifests``: the chain's manifests if the caller has just read them all
    (:func:`list_manifests`), so they are not read twice."""
    report = CleanupReport(chain_id=chain_id)
    if manifests is None:
        manifests = list_manifests(store, cluster_id, chain_id)  # raises if any is unreadable
    kept = [m for m in manifests if keep is None or m.backup_id in keep]
    dropped = [m for m in manifests if not (keep is None or m.backup_id in keep)]
    kept_ids = {m.backup_id for m in kept}
    dropped_ids = {m.backup_id for m in dropped}
    for m in kept:
        if m.parent_id is not None and m.parent_id in dropped_ids:
            raise ManifestError(
                f"kept backup {m.backup_id} builds on {m.parent_id}, which is not kept"
            )
    report.kept_manifests = sorted(kept_ids)
    report.deleted_manifests = sorted(dropped_ids)
    prefix = chain_prefix(cluster_id, chain_id)
    referenced: set[str] = set()
    for m in kept:
        referenced.update(ref.hash for ref in m.chunk_refs())
    chunk_prefix = f"{prefix}/chunks/"
    dropped_keys = {manifest_key(cluster_id, chain_id, m.backup_id) for m in dropped}
    doomed: list[str] = []
    for info in store.list(prefix):
        if not kept:
            goes = True  # nothing kept: the whole chain prefix
        elif info.key.startswith(chunk_prefix):
            goes = info.key.rsplit("/", 1)[-1] not in referenced
        else:
            goes = info.key in dropped_keys
        if goes:
            doomed.append(info.key)
            report.deleted_bytes += info.size
    if not dry_run:
        store.delete(doomed)
    report.deleted_objects = len(doomed)
    report.deleted_chain = not kept
    return report
