"""The object-store abstraction (both stores), content-addressed chunks, manifests."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import zstandard
from pydantic import ValidationError

from managed_backups.shared.dataplane.chunks import (
    ChunkCorrupt,
    ChunkingParams,
    ChunkMissing,
    ChunkStore,
    StreamCancelled,
)
from managed_backups.shared.dataplane.manifest import (
    BackupType,
    Catalog,
    ChunkRef,
    DatabaseLocale,
    Manifest,
    ManifestError,
    Totals,
    load_manifest,
    manifest_key,
    read_manifest,
    save_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectExists, ObjectNotFound, ObjectStore
from tests.factories import database_backup

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------ object store
def test_write_once_semantics(store: ObjectStore) -> None:
    assert store.put_if_absent("a/b/c", b"one") is True
    assert store.put_if_absent("a/b/c", b"two") is False  # never overwritten
    assert store.get("a/b/c") == b"one"
    store.put_new("a/m.json", b"{}")
    with pytest.raises(ObjectExists):
        store.put_new("a/m.json", b"{ }")
    assert store.get("a/m.json") == b"{}"
    with pytest.raises(ObjectNotFound):
        store.get("a/none")
    assert store.exists("a/b/c") and not store.exists("a/none")
    store.put_new("ab/other", b"x")  # a sibling prefix that must not match "a"
    assert sorted(i.key for i in store.list("a")) == ["a/b/c", "a/m.json"]
    assert {i.key: i.size for i in store.list("a/b")} == {"a/b/c": 3}
    assert store.delete_prefix("a") == 2
    assert [i.key for i in store.list("a")] == [] and store.exists("ab/other")
    assert store.delete(["ab/other", "ab/missing"]) == 2
    with pytest.raises(Exception, match="whole store"):
        store.delete_prefix("/")


def test_concurrent_puts_of_one_key_write_once(store: ObjectStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: store.put_if_absent("race/k", b"same"), range(16)))
    assert results.count(True) == 1
    assert store.get("race/k") == b"same"


def test_credentials_never_in_url_or_repr(store: ObjectStore) -> None:
    assert "secret_access_key" not in store.url and "secret_access_key" not in repr(store)
    assert "access_key_id" not in store.url


# ------------------------------------------------------------------------------ chunks
def _blocks(total: int, block: int, seed: int = 1) -> Iterator[bytes]:
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        # semi-compressible text, like COPY output
        yield b"".join(
            b"%d\t%s\n" % (rng.randrange(10**9), b"x" * rng.randrange(40))
            for _ in range(n // 30 + 1)
        )[:n]
        sent += n


def test_stream_round_trip_bounded_buffers_and_dedupe(store: ObjectStore) -> None:
    params = ChunkingParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)
    data = b"".join(_blocks(24 << 20, 1 << 20))
    with ChunkStore(store, "c", "chain", max_inflight=3, workers=3) as chunks:
        tracemalloc.start()
        result = chunks.write_stream(
            (data[i : i + 1000] for i in range(0, len(data), 1000)), params
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.size == len(data)
        # the writer never holds more than its window plus one block, nor more than
        # max_inflight chunks in flight; measured allocations stay far below the stream size
        assert result.stats.peak_buffered <= params.window + 1000
        assert result.stats.peak_inflight <= 3
        assert peak < 4 * params.window + 3 * 2 * params.max_size + (2 << 20), peak
        assert all(params.min_size <= r.size <= params.max_size for r in result.chunks[:-1])
        assert b"".join(chunks.iter_chunks(result.chunks)) == data
        first_new = chunks.new_chunks
        assert first_new == len({r.hash for r in result.chunks})

        # the same stream again: nothing new; with bytes inserted near the start: CDC resyncs
        again = chunks.write_stream([data], params)
        assert again.chunks == result.chunks and chunks.new_chunks == first_new
        shifted = data[:5000] + b"INSERTED" + data[5000:]
        res3 = chunks.write_stream([shifted], params)
        assert chunks.new_chunks - first_new <= 2
        assert b"".join(chunks.iter_chunks(res3.chunks)) == shifted

    key = f"clusters/c/chains/chain/chunks/{result.chunks[0].hash[:2]}/{result.chunks[0].hash}"
    stored = store.get(key)
    assert zstandard.ZstdDecompressor().decompress(stored) == data[: result.chunks[0].size]
    assert hashlib.sha256(data[: result.chunks[0].size]).hexdigest() == result.chunks[0].hash


def test_reader_raises_missing_and_corrupt(store: ObjectStore) -> None:
    with ChunkStore(store, "c", "chain") as chunks:
        res = chunks.write_stream([b"hello world\n" * 1000])
        ref = res.chunks[0]
        wrong_size = ChunkRef(hash=ref.hash, size=ref.size + 1, stored=ref.stored)
        with pytest.raises(ChunkCorrupt):
            chunks.read_chunk(wrong_size)
        other = ChunkRef(hash="0" * 64, size=3, stored=3)
        with pytest.raises(ChunkMissing):
            list(chunks.iter_chunks([ref, other]))
        store.put_new(chunks.key("1" * 64), zstandard.ZstdCompressor().compress(b"abc"))
        with pytest.raises(ChunkCorrupt, match="sha256"):
            chunks.read_chunk(ChunkRef(hash="1" * 64, size=3, stored=12))
        store.put_new(chunks.key("2" * 64), b"not zstd at all")
        with pytest.raises(ChunkCorrupt, match="zstd"):
            chunks.read_chunk(ChunkRef(hash="2" * 64, size=3, stored=15))


def test_write_stream_cancel() -> None:
    store = ObjectStore("memory://")
    flag = threading.Event()
    flag.set()
    with ChunkStore(store, "c", "x") as chunks, pytest.raises(StreamCancelled):
        chunks.write_stream(_blocks(10 << 20, 1 << 20), cancel=flag)


# ------------------------------------------------------------------------------ manifests
def _manifest(backup_id: str = "b1") -> Manifest:
    now = datetime.now(UTC)
    return Manifest(
        backup_id=backup_id,
        cluster_id="c1",
        type=BackupType.FULL,
        chain_id=backup_id,
        parent_id=None,
        data_from=now,
        started_at=now,
        completed_at=now,
        server_version="15.0",
        server_version_num=150000,
        globals_dump=[],
        databases=[],
        catalog=Catalog(databases=[]),
        totals=Totals(logical_bytes=0, stored_bytes=0, new_stored_bytes=0, chunks=0, new_chunks=0),
    )


def test_manifest_versions_frozen_and_written_once() -> None:
    store = ObjectStore("memory://")
    m = _manifest()
    assert save_manifest(store, m) > 0
    with pytest.raises(ObjectExists):
        save_manifest(store, m)
    assert read_manifest(store, "c1", "b1", "b1") == m
    assert store.exists(manifest_key("c1", "b1", "b1"))
    raw = json.loads(m.to_json())
    assert raw["schema_version"] == 4
    stored = store.get(manifest_key("c1", "b1", "b1"))
    assert stored == m.to_stored() and stored[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert load_manifest(stored) == load_manifest(m.to_json()) == m
    with pytest.raises(ManifestError, match="schema_version 5"):
        load_manifest(json.dumps({**raw, "schema_version": 5}).encode())
    with pytest.raises(ManifestError, match="invalid version 4"):
        load_manifest(json.dumps({**raw, "surprise": True}).encode())
    with pytest.raises(ManifestError, match="not a readable zstd frame"):
        load_manifest(stored[:20])
    v3 = {**raw, "schema_version": 3}
    assert load_manifest(json.dumps(v3).encode()).schema_version == 3
    # a version 3 document may not carry version 4 fields (a database's locale)
    db = json.loads(
        database_backup(locale=DatabaseLocale(provider="icu", locale="und")).model_dump_json()
    )
    with pytest.raises(ManifestError, match="version 3 manifest cannot hold version 4"):
        load_manifest(json.dumps({**v3, "databases": [db]}).encode())
    assert load_manifest(json.dumps({**raw, "databases": [db]}).encode()).databases[0].locale
    v2 = {**raw, "schema_version": 2}
    assert load_manifest(json.dumps(v2).encode()).schema_version == 2
    # a version 1 document is read by the same model, but may not carry version 2 fields
    v1 = {**raw, "schema_version": 1}
    assert load_manifest(json.dumps(v1).encode()).schema_version == 1
    v1["catalog"] = {**raw["catalog"], "skipped_databases": [{"name": "x", "reason": "y"}]}
    with pytest.raises(ManifestError, match="version 1 manifest cannot hold version 2"):
        load_manifest(json.dumps(v1).encode())
    with pytest.raises(ManifestError, match="not JSON"):
        load_manifest(b"{")
    with pytest.raises(ValidationError):
        m.backup_id = "other"  # type: ignore[misc]
    naive = {**raw, "data_from": "2024-01-01T00:00:00"}
    with pytest.raises(ManifestError, match="timezone"):
        load_manifest(json.dumps(naive).encode())
