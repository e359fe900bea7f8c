"""Encryption at rest: every chunk and manifest of a chain sealed under the chain's data key.

What is stored, per chain ``clusters/{cluster}/chains/{chain}/``:

- ``keys/{kek id}.json``: the chain's **data key** (32 random bytes, drawn when the chain's
  full backup writes its first object), *wrapped* by a key-encryption key of the cluster's
  (:mod:`.keys`), bound to this cluster and chain. Rotation adds one such object per new
  key-encryption key (:func:`rewrap_chain`); none is ever rewritten.
- every other object (chunks, manifests) is a **sealed envelope**: ``MAGIC`` (5 bytes,
  ``89 4d 42 45 01``, neither a zstd frame nor JSON), a 12-byte random nonce, then the
  AES-256-GCM ciphertext and tag of what was stored before encryption existed (a chunk's zstd
  frame, a manifest's zstd frame or JSON). The additional authenticated data is the envelope's
  header and the object's key, so an object altered, truncated, or moved to another key fails
  authentication.
- chunk names are an HMAC-SHA256 of the chunk's raw bytes under a key derived from the data
  key, not its SHA-256: the names reveal nothing of the content, and a chain deduplicates
  within itself exactly as before (one data key per chain).

Encryption and decryption key derivation: HKDF-SHA256 of the data key, one subkey for sealing
and one for chunk names.

How a sealed store reads (:class:`ClusterSealer`, attached to an :class:`~.objectstore.ObjectStore`
with :meth:`~.objectstore.ObjectStore.sealed_with`: every reader and writer of the data plane goes
through it unchanged): the chain's key objects are listed once per chain. A chain with a data
key opens only sealed objects (a plaintext object there is an error, never trusted); a chain
without one (written before this version) reads as it was stored, and an incremental continues
it unencrypted until its next full. Then the opened bytes go to the loaders as before
(``manifest._decode``: a zstd frame or JSON, then ``schema_version``).

Fail closed: a chain's data key is created (and wrapped) before its first object is written; if
the cluster has no usable key-encryption key that raises :class:`~.keys.KeyUnavailable` and
nothing is written. Reading a chain whose data key no available key unwraps (a customer key
revoked) raises :class:`~.keys.KeyUnavailable` before anything is read from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .keys import KEY_BYTES, ClusterKeys, KeyUnavailable, data_key_context
from .objectstore import ObjectExists, ObjectNotFound, ObjectStore, ObjectStoreError

__all__ = [
    "MAGIC",
    "OVERHEAD",
    "ChainKey",
    "ClusterSealer",
    "RewrapResult",
    "SealBroken",
    "chain_is_encrypted",
    "chains_of",
    "is_sealed",
    "rewrap_chain",
    "sealed_store",
]

MAGIC = b"\x89MBE\x01"
"""A sealed object's first bytes (``\\x89`` keeps it from ever reading as text or a zstd frame;
the last byte is the envelope's version)."""
_NONCE = 12
_TAG = 16
OVERHEAD = len(MAGIC) + _NONCE + _TAG
"""Bytes a sealed object has beyond what it seals."""
KEY_DIR = "keys"
KEY_OBJECT_FORMAT = "managed-backups data key"


class SealBroken(ObjectStoreError):
    """A stored object fails authentication: altered, truncated, moved, or stored in plaintext
    in an encrypted chain."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def is_sealed(data: bytes | memoryview) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def _subkey(data_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(data_key)


class ChainKey:
    """A chain's data key, ready to seal, open and name chunks."""

    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(_subkey(data_key, b"managed-backups v1 sealed objects"))
        self._names = _subkey(data_key, b"managed-backups v1 chunk names")

    def seal(self, key: str, data: bytes | memoryview) -> bytes:
        nonce = os.urandom(_NONCE)
        return MAGIC + nonce + self._aead.encrypt(nonce, bytes(data), MAGIC + key.encode())

    def open(self, key: str, data: bytes) -> bytes:
        if not is_sealed(data):
            raise SealBroken(key, "stored in plaintext in an encrypted chain")
        nonce = data[len(MAGIC) : len(MAGIC) + _NONCE]
        try:
            return self._aead.decrypt(nonce, data[len(MAGIC) + _NONCE :], MAGIC + key.encode())
        except InvalidTag:
            raise SealBroken(key, "fails authentication (altered, truncated or moved)") from None

    def chunk_name(self, raw: bytes | memoryview) -> str:
        return hmac.digest(self._names, raw, "sha256").hex()


def _split(key: str) -> tuple[str, str, str, str] | None:
    """(cluster, chain, chain prefix, rest) of ``clusters/{cluster}/chains/{chain}/{rest}``."""
    parts = key.split("/", 4)
    if len(parts) != 5 or parts[0] != "clusters" or parts[2] != "chains":
        return None
    return parts[1], parts[3], "/".join(parts[:4]), parts[4]


def _key_object_name(prefix: str, key_id: str) -> str:
    return f"{prefix}/{KEY_DIR}/{key_id}.json"


@dataclass(frozen=True)
class _Wrapped:
    key_id: str
    wrapped: bytes
    object_key: str


def _read_key_objects(raw: ObjectStore, prefix: str) -> list[_Wrapped]:
    found: list[_Wrapped] = []
    for info in raw.list(f"{prefix}/{KEY_DIR}/"):
        try:
            doc = json.loads(raw.get(info.key))
            if doc.get("format") != KEY_OBJECT_FORMAT or doc.get("version") != 1:
                raise ValueError("unknown format")
            found.append(_Wrapped(str(doc["key_id"]), base64.b64decode(doc["wrapped"]), info.key))
        except ObjectNotFound:
            continue  # deleted with its chain meanwhile
        except (ValueError, KeyError, TypeError):
            raise SealBroken(info.key, "is not a readable data key object") from None
    return found


def _write_key_object(
    raw: ObjectStore, prefix: str, key_id: str, wrapped: bytes, cluster_id: str, chain_id: str
) -> None:
    doc = {
        "format": KEY_OBJECT_FORMAT,
        "version": 1,
        "cipher": "AES-256-GCM",
        "cluster_id": cluster_id,
        "chain_id": chain_id,
        "key_id": key_id,
        "wrapped": base64.b64encode(wrapped).decode(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    raw.put_new(_key_object_name(prefix, key_id), json.dumps(doc, indent=1).encode())


def _unwrap_any(
    keys: ClusterKeys, objects: list[_Wrapped], cluster_id: str, chain_id: str
) -> bytes:
    """The data key, unwrapped by the first usable key (the current one first)."""
    context = data_key_context(cluster_id, chain_id)
    try:
        current = keys.current_key_id()
    except KeyUnavailable:
        current = ""
    errors: list[str] = []
    for item in sorted(objects, key=lambda o: o.key_id != current):
        if not keys.can_unwrap(item.key_id):
            errors.append(f"{item.key_id} belongs to no key provider of the cluster")
            continue
        try:
            data_key = keys.unwrap(item.key_id, item.wrapped, context)
        except KeyUnavailable as exc:
            errors.append(str(exc))
            continue
        if len(data_key) == KEY_BYTES:
            return data_key
        errors.append(f"{item.key_id} unwraps to a {len(data_key)}-byte key")
    raise KeyUnavailable(
        f"chain {chain_id} of cluster {cluster_id} is encrypted and no key of the cluster opens "
        f"its data key: {'; '.join(errors)}"
    )


class ClusterSealer:
    """Seals and opens one cluster's objects (see the module docstring). Thread-safe."""

    overhead = OVERHEAD

    def __init__(
        self, raw: ObjectStore, keys: ClusterKeys, encrypted_chains: Collection[str] = ()
    ) -> None:
        self.raw = raw
        self.keys = keys
        self.encrypted_chains = frozenset(encrypted_chains)
        """Chains the control plane recorded as stored encrypted: without key objects they are
        refused, never read as chains from before encryption (forged plaintext objects)."""
        self._lock = threading.Lock()
        self._chains: dict[str, ChainKey | None] = {}
        """Resolved chains: their key, or ``None`` for a chain without one (written before
        encryption) as seen by a reader."""
        self._writable: set[str] = set()
        """Chains resolved for writing (a new chain's key is created then)."""

    def _cluster_chain(self, key: str) -> tuple[str, str, str, str]:
        split = _split(key)
        if split is None:
            raise ObjectStoreError(f"{key} is not an object of a backup chain")
        if split[0] != self.keys.cluster_id:
            raise ObjectStoreError(f"{key} belongs to another cluster than {self.keys.cluster_id}")
        return split

    def chain_key(self, cluster_id: str, chain_id: str, *, writing: bool) -> ChainKey | None:
        """The chain's key (``None``: a chain stored before encryption). ``writing`` creates
        the key of a new chain, and refuses a chain whose key objects are gone."""
        prefix = f"clusters/{cluster_id}/chains/{chain_id}"
        with self._lock:
            if prefix in self._chains and (not writing or prefix in self._writable):
                return self._chains[prefix]
            resolved = self._resolve(prefix, cluster_id, chain_id, writing)
            self._chains[prefix] = resolved
            if writing:
                self._writable.add(prefix)
            return resolved

    def _resolve(
        self, prefix: str, cluster_id: str, chain_id: str, writing: bool
    ) -> ChainKey | None:
        if cluster_id != self.keys.cluster_id:
            raise ObjectStoreError(f"chain {chain_id} belongs to another cluster ({cluster_id})")
        for _attempt in range(2):
            objects = _read_key_objects(self.raw, prefix)
            if objects:
                return ChainKey(_unwrap_any(self.keys, objects, cluster_id, chain_id))
            if chain_id in self.encrypted_chains:
                raise KeyUnavailable(
                    f"chain {chain_id} is recorded as stored encrypted but its data key objects "
                    "are missing: it is not read as unencrypted"
                )
            if not writing:
                return None
            if self._legacy_chain(prefix, chain_id):
                return None
            data_key = os.urandom(KEY_BYTES)
            key_id, wrapped = self.keys.wrap(data_key, data_key_context(cluster_id, chain_id))
            try:
                _write_key_object(self.raw, prefix, key_id, wrapped, cluster_id, chain_id)
            except ObjectExists:
                continue  # another writer created it first: use theirs
            return ChainKey(data_key)
        raise ObjectStoreError(f"chain {chain_id}: its data key object could not be read back")

    def _legacy_chain(self, prefix: str, chain_id: str) -> bool:
        """A chain stored before encryption (manifests, no key object) is continued as it was;
        one whose manifests are sealed but whose key objects are gone is refused."""
        for info in self.raw.list(f"{prefix}/manifests/"):
            try:
                head = self.raw.get(info.key)
            except ObjectNotFound:
                continue
            if is_sealed(head):
                raise KeyUnavailable(
                    f"chain {chain_id} is encrypted but its data key objects are missing"
                )
            return True
        return False

    def seal(self, key: str, data: bytes | memoryview) -> bytes | memoryview:
        cluster_id, chain_id, _prefix, rest = self._cluster_chain(key)
        if rest.startswith(f"{KEY_DIR}/"):
            raise ObjectStoreError(f"{key}: data key objects are written by rotation only")
        chain = self.chain_key(cluster_id, chain_id, writing=True)
        return data if chain is None else chain.seal(key, data)

    def open(self, key: str, data: bytes) -> bytes:
        cluster_id, chain_id, _prefix, rest = self._cluster_chain(key)
        if rest.startswith(f"{KEY_DIR}/"):
            return data
        chain = self.chain_key(cluster_id, chain_id, writing=False)
        if chain is not None:
            return chain.open(key, data)
        if is_sealed(data):
            raise KeyUnavailable(
                f"{key} is encrypted but chain {chain_id} has no data key object (deleted?)"
            )
        return data

    def chunk_name(self, cluster_id: str, chain_id: str, raw: bytes, *, writing: bool) -> str:
        chain = self.chain_key(cluster_id, chain_id, writing=writing)
        return hashlib.sha256(raw).hexdigest() if chain is None else chain.chunk_name(raw)


def sealed_store(
    store: ObjectStore, keys: ClusterKeys, encrypted_chains: Collection[str] = ()
) -> ObjectStore:
    """``store`` as seen by one cluster: every object sealed under its chain's data key.
    ``encrypted_chains``: chains recorded as encrypted (see :class:`ClusterSealer`)."""
    raw = store.sealed_with(None)
    return raw.sealed_with(ClusterSealer(raw, keys, encrypted_chains))


def chain_is_encrypted(store: ObjectStore, cluster_id: str, chain_id: str) -> bool:
    """Whether the chain is stored encrypted, as ``store`` (sealed for the cluster) reads it."""
    sealer = store.sealer
    if not isinstance(sealer, ClusterSealer):
        return False
    return sealer.chain_key(cluster_id, chain_id, writing=False) is not None


@dataclass(frozen=True)
class RewrapResult:
    chain_id: str
    key_id: str | None
    """The key the chain's data key is now also wrapped by (``None``: a chain stored before
    encryption, nothing to wrap)."""
    added: bool
    """Whether this call wrote the key object (``False``: it was already there)."""


def rewrap_chain(
    store: ObjectStore,
    keys: ClusterKeys,
    chain_id: str,
    before_write: Callable[[], None] | None = None,
) -> RewrapResult:
    """Wrap the chain's data key by the cluster's current key-encryption key, in a key object
    of its own. Nothing else is read or written: chunks and manifests stay byte-identical, and
    the objects of the older keys stay (write-once). Idempotent. ``before_write`` is called
    right before the key object is written (a rotation worker's fence: it raises to refuse)."""
    raw = store.sealed_with(None)
    cluster_id = keys.cluster_id
    prefix = f"clusters/{cluster_id}/chains/{chain_id}"
    objects = _read_key_objects(raw, prefix)
    if not objects:
        return RewrapResult(chain_id, None, False)
    current = keys.current_key_id()
    if any(o.key_id == current for o in objects):
        return RewrapResult(chain_id, current, False)
    data_key = _unwrap_any(keys, objects, cluster_id, chain_id)
    key_id, wrapped = keys.wrap(data_key, data_key_context(cluster_id, chain_id))
    if before_write is not None:
        before_write()
    try:
        _write_key_object(raw, prefix, key_id, wrapped, cluster_id, chain_id)
    except ObjectExists:
        return RewrapResult(chain_id, key_id, False)
    return RewrapResult(chain_id, key_id, True)


def chains_of(store: ObjectStore, cluster_id: str) -> Iterator[str]:
    """The chain ids stored for ``cluster_id`` (one delimited listing)."""
    for prefix in store.list_dirs(f"clusters/{cluster_id}/chains/"):
        yield prefix.rstrip("/").rsplit("/", 1)[-1]
