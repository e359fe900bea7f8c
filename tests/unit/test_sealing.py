"""Encryption at rest, without infrastructure: the envelope, keyed chunk names, key providers,
rewrapping. (The same on real PostgreSQL and both object stores: tests/dataplane/test_encryption.py.)"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import obstore
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from managed_backups.shared.dataplane.chunks import ChunkCorrupt, ChunkStore
from managed_backups.shared.dataplane.keys import ClusterKeys, KeyUnavailable, LocalKeyring
from managed_backups.shared.dataplane.manifest import ChunkRef, ManifestError, load_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore, ObjectStoreError
from managed_backups.shared.dataplane.sealing import (
    MAGIC,
    OVERHEAD,
    SealBroken,
    rewrap_chain,
    sealed_store,
)

CLUSTER = "c1"
CHAIN = "chain-1"
DATA = b"".join(b"row %d with some text that compresses\n" % i for i in range(50_000))


def platform(tmp_path: Path, *, create_first: bool = True) -> LocalKeyring:
    return LocalKeyring(
        tmp_path / "platform", label="platform", name="platform key", create_first=create_first
    )


def keys_of(*providers: LocalKeyring | FakeKms, cluster: str = CLUSTER) -> ClusterKeys:
    return ClusterKeys(cluster, providers[0], providers)


def objects(raw: ObjectStore) -> dict[str, bytes]:
    return {info.key: raw.get(info.key) for info in raw.list("clusters")}


def overwrite(raw: ObjectStore, key: str, data: bytes) -> None:
    """What an attacker with write access to the bucket does (the store itself never
    overwrites)."""
    obstore.put(raw._store, key, data)


def write_chain(store: ObjectStore, chain: str = CHAIN) -> list[ChunkRef]:
    with ChunkStore(store, CLUSTER, chain) as chunks:
        return list(chunks.write_stream([DATA]).chunks)


def test_chunks_are_sealed_and_named_by_a_keyed_hash(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    store = sealed_store(raw, keys_of(platform(tmp_path)))
    with ChunkStore(store, CLUSTER, CHAIN) as chunks:
        result = chunks.write_stream([DATA])
        assert b"".join(chunks.iter_chunks(result.chunks)) == DATA
        raws = [chunks.read_chunk(ref) for ref in result.chunks]
    stored = objects(raw)
    chunk_objects = {k: v for k, v in stored.items() if "/chunks/" in k}
    assert len(chunk_objects) == len(result.chunks) > 1
    assert all(v.startswith(MAGIC) for v in chunk_objects.values())
    assert [k for k in stored if "/keys/" in k] == [
        f"clusters/{CLUSTER}/chains/{CHAIN}/keys/{store.sealer.keys.current_key_id()}.json"  # type: ignore[union-attr]
    ]
    # Names are not the content's SHA-256; sizes count the envelope.
    digests = {hashlib.sha256(r).hexdigest() for r in raws}
    assert not any(d in key for d in digests for key in stored)
    assert all(ref.stored == len(stored[f"{chunks.key(ref.hash)}"]) for ref in result.chunks)
    assert all(b"row 1" not in v for v in stored.values())
    # The same content in another chain (another data key) gets other names.
    with ChunkStore(store, CLUSTER, "chain-2") as other:
        again = other.write_stream([DATA])
    assert {r.hash for r in again.chunks}.isdisjoint({r.hash for r in result.chunks})


def test_a_chain_deduplicates_within_itself(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    store = sealed_store(raw, keys_of(platform(tmp_path)))
    first = write_chain(store)
    count = len(objects(raw))
    # A later writer of the same chain (a new sealer: another process) finds the same names.
    again = write_chain(sealed_store(raw, keys_of(platform(tmp_path))))
    assert again == first and len(objects(raw)) == count


def test_an_altered_truncated_moved_or_plaintext_chunk_fails_authentication(
    tmp_path: Path,
) -> None:
    raw = ObjectStore("memory://")
    store = sealed_store(raw, keys_of(platform(tmp_path)))
    refs = write_chain(store)
    with ChunkStore(store, CLUSTER, CHAIN) as chunks:
        first, second = refs[0], refs[1]
        key = chunks.key(first.hash)
        original = raw.get(key)
        cases = {
            "altered": original[:-1] + bytes([original[-1] ^ 1]),
            "truncated": original[:-5],
            "moved": raw.get(chunks.key(second.hash)),
            "plaintext": b"(\xb5/\xfd" + original[len(MAGIC) :],
        }
        for case, data in cases.items():
            overwrite(raw, key, data)
            with pytest.raises(ChunkCorrupt) as caught:
                chunks.read_chunk(first)
            reason = caught.value.reason
            assert ("plaintext" if case == "plaintext" else "authentication") in reason, case
        overwrite(raw, key, original)
        assert len(chunks.read_chunk(first)) == first.size


def test_without_a_usable_key_nothing_is_written(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    empty = platform(tmp_path, create_first=False)  # a configured directory holding no key
    store = sealed_store(raw, keys_of(empty))
    with ChunkStore(store, CLUSTER, CHAIN) as chunks:
        with pytest.raises(KeyUnavailable, match="platform key: no key file"):
            chunks.open_for_writing()
        with pytest.raises(KeyUnavailable):
            chunks.write_stream([DATA])
    customer = LocalKeyring(
        tmp_path / "customer", label="customer", name="customer key", current="k1"
    )
    with pytest.raises(KeyUnavailable, match="customer key 'k1' is not available"):
        write_chain(sealed_store(raw, keys_of(customer)))
    assert objects(raw) == {}


def test_a_chain_opens_only_with_a_key_that_wrapped_its_data_key(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    customer_dir = tmp_path / "customer"
    customer = LocalKeyring(customer_dir, label="customer", name="customer key", current="k1")
    (customer_dir).mkdir()
    (customer_dir / "k1.key").write_bytes(base64.b64encode(os.urandom(32)))
    refs = write_chain(sealed_store(raw, keys_of(customer, platform(tmp_path))))
    # The platform key never wrapped this chain's data key.
    with (
        ChunkStore(sealed_store(raw, keys_of(platform(tmp_path))), CLUSTER, CHAIN) as chunks,
        pytest.raises(KeyUnavailable, match="no key of the cluster opens its data key"),
    ):
        chunks.read_chunk(refs[0])
    # Another key under the same file name is another key id: it does not open it either.
    (customer_dir / "k1.key").write_bytes(base64.b64encode(os.urandom(32)))
    with (
        ChunkStore(sealed_store(raw, keys_of(customer)), CLUSTER, CHAIN) as chunks,
        pytest.raises(KeyUnavailable, match="is not available"),
    ):
        chunks.read_chunk(refs[0])


def test_a_data_key_object_opens_for_its_own_chain_only(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    keys = keys_of(platform(tmp_path))
    write_chain(sealed_store(raw, keys))
    [key_object] = [k for k in objects(raw) if "/keys/" in k]
    raw.put_new(key_object.replace(CHAIN, "chain-2"), raw.get(key_object))
    with pytest.raises(KeyUnavailable, match="does not authenticate"):
        write_chain(sealed_store(raw, keys), "chain-2")


def test_a_sealed_store_touches_its_own_clusters_objects_only(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    store = sealed_store(raw, keys_of(platform(tmp_path)))
    with pytest.raises(ObjectStoreError, match="another cluster"):
        store.put_new("clusters/c2/chains/x/manifests/y.json", b"{}")
    with pytest.raises(ObjectStoreError, match="not an object of a backup chain"):
        store.put_new("elsewhere/y.json", b"{}")
    assert objects(raw) == {}


def test_the_manifest_loader_refuses_sealed_bytes_read_without_the_key() -> None:
    with pytest.raises(ManifestError, match="encrypted"):
        load_manifest(MAGIC + os.urandom(40))


def test_rewrap_adds_a_key_object_and_changes_nothing_else(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    ring = platform(tmp_path)
    keys = keys_of(ring)
    refs = write_chain(sealed_store(raw, keys))
    before = objects(raw)
    new_id = ring.rotate()
    result = rewrap_chain(raw, keys, CHAIN)
    assert result.added and result.key_id == new_id
    assert rewrap_chain(raw, keys, CHAIN).added is False  # idempotent
    after = objects(raw)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {f"clusters/{CLUSTER}/chains/{CHAIN}/keys/{new_id}.json"}
    # The old key retired: the new one alone opens the chain.
    (tmp_path / "platform" / "k0001.key").unlink()
    with ChunkStore(sealed_store(raw, keys), CLUSTER, CHAIN) as chunks:
        assert b"".join(chunks.iter_chunks(refs)) == DATA
    assert rewrap_chain(raw, keys, "no-such-chain").key_id is None


class FakeKms:
    """What a cloud KMS adapter implements (an in-memory stand-in for the unit tier)."""

    def __init__(self) -> None:
        self.versions: dict[str, bytes] = {}
        self.disabled: set[str] = set()
        self.rotate()

    @property
    def name(self) -> str:
        return "KMS key projects/p/keys/backups"

    def owns(self, key_id: str) -> bool:
        return key_id.startswith("kms-")

    def current_key_id(self) -> str:
        return max(self.versions)

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        key_id = self.current_key_id()
        return key_id, nonce + AESGCM(self.versions[key_id]).encrypt(nonce, data_key, context)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        if key_id in self.disabled or key_id not in self.versions:
            raise KeyUnavailable(f"{self.name} version {key_id} is disabled")
        return AESGCM(self.versions[key_id]).decrypt(wrapped[:12], wrapped[12:], context)

    def rotate(self) -> str:
        key_id = f"kms-v{len(self.versions) + 1:03d}"
        self.versions[key_id] = AESGCM.generate_key(256)
        return key_id


def test_a_kms_adapter_plugs_in_through_the_provider_interface(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    kms = FakeKms()
    keys = keys_of(kms)
    refs = write_chain(sealed_store(raw, keys))
    kms.rotate()
    assert rewrap_chain(raw, keys, CHAIN).key_id == "kms-v002"
    kms.disabled.add("kms-v001")
    with ChunkStore(sealed_store(raw, keys), CLUSTER, CHAIN) as chunks:
        assert b"".join(chunks.iter_chunks(refs)) == DATA
    kms.disabled.add("kms-v002")
    with (
        ChunkStore(sealed_store(raw, keys), CLUSTER, CHAIN) as chunks,
        pytest.raises(KeyUnavailable, match="kms-v002 is disabled"),
    ):
        chunks.read_chunk(refs[0])


def test_the_envelope_overhead_is_fixed(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    store = sealed_store(raw, keys_of(platform(tmp_path)))
    key = f"clusters/{CLUSTER}/chains/{CHAIN}/manifests/b.json"
    store.put_new(key, b"{}")
    assert len(raw.get(key)) == 2 + OVERHEAD
    assert store.get(key) == b"{}"
    with pytest.raises(SealBroken):
        overwrite(raw, key, b"{}")
        store.get(key)


def test_a_chain_recorded_as_encrypted_is_refused_without_its_key_objects(tmp_path: Path) -> None:
    raw = ObjectStore("memory://")
    keys = keys_of(platform(tmp_path))
    write_chain(sealed_store(raw, keys))
    raw.delete_prefix(f"clusters/{CLUSTER}/chains/{CHAIN}")
    forged = write_chain(raw)  # a valid unencrypted chain at the same keys
    with ChunkStore(sealed_store(raw, keys), CLUSTER, CHAIN) as chunks:
        assert chunks.read_chunk(forged[0])  # read as a chain from before encryption...
    with (
        ChunkStore(sealed_store(raw, keys, encrypted_chains=[CHAIN]), CLUSTER, CHAIN) as chunks,
        pytest.raises(KeyUnavailable, match="recorded as stored encrypted"),
    ):
        chunks.read_chunk(forged[0])  # ...unless the control plane recorded it as encrypted
