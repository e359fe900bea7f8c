"""Key-encryption keys (KEKs): who may open a chain's data key, behind one interface.

Every chain of backups (a full and its incrementals) is encrypted under a random *data key*
(:mod:`.sealing`); the data key is stored only *wrapped* by a key-encryption key, which never
leaves its provider. A :class:`KeyProvider` is anything that can wrap and unwrap a data key,
names its keys by id, and can rotate to a new key:

- :class:`LocalKeyring`: a directory of key files (32 random bytes, base64, one per file,
  ``<name>.key``). The **platform keyring** (every cluster's default; rotated by the operator)
  and each ADVANCED cluster's **customer keyring** (``<customer-keys-dir>/<cluster id>/``; the
  cluster's configured key names the file new data keys are wrapped by) are both of this kind.
  A key file removed from its directory is a revoked key: what only it wraps can no longer be
  opened.
- A cloud KMS adapter implements the same protocol: ``wrap``/``unwrap`` are the KMS's
  encrypt/decrypt with ``context`` as its encryption context, ``key_id`` the key version's
  name, ``rotate`` a new key version.

:class:`ClusterKeys` is what the data plane is handed for one cluster: the provider whose
current key wraps new data keys, and every provider whose keys may unwrap the cluster's older
ones (after a rotation, or a change from the platform key to a customer key).

Key material never appears in a message, an event or a log line: errors name key ids (a key
id holds a fingerprint, an HMAC of a fixed text under the key, never the key) and providers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .objectstore import ObjectStoreError

__all__ = [
    "KEY_BYTES",
    "ClusterKeys",
    "KeyProvider",
    "KeyUnavailable",
    "LocalKeyring",
    "data_key_context",
    "key_fingerprint",
    "new_key_file",
]

KEY_BYTES = 32
"""AES-256 keys: data keys and local key-encryption keys alike."""
_NONCE_BYTES = 12
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID_TEXT = b"managed-backups key-encryption key id v1"


class KeyUnavailable(ObjectStoreError):
    """No usable key: a key-encryption key is revoked, missing or unreadable, or a chain's data
    key cannot be unwrapped by any key the cluster has. Nothing is read or written in clear
    instead (the message names key ids, never key material)."""


class KeyProvider(Protocol):
    """A source of key-encryption keys (a local keyring, a cloud KMS)."""

    @property
    def name(self) -> str:
        """For messages: ``platform key``, ``customer key of cluster X``, a KMS key's name."""
        ...

    def owns(self, key_id: str) -> bool:
        """Whether ``key_id`` is one of this provider's ids (whatever the key's state)."""
        ...

    def current_key_id(self) -> str:
        """The key new data keys are wrapped by; :class:`KeyUnavailable` if there is none."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """``data_key`` encrypted under the current key, bound to ``context``: (key id, blob)."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """The data key; :class:`KeyUnavailable` when ``key_id`` is revoked or missing, or the
        blob does not authenticate under it with ``context``."""
        ...

    def rotate(self) -> str:
        """Make a new key current; returns its id (older keys still unwrap)."""
        ...


def key_fingerprint(key: bytes) -> str:
    """16 hex digits naming a key without revealing it (an HMAC of a fixed text under it)."""
    return hmac.digest(key, _ID_TEXT, "sha256").hex()[:16]


def _decode_key(text: bytes) -> bytes:
    try:
        key = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{len(key)} bytes instead of {KEY_BYTES}")
    return key


def new_key_file(path: Path) -> None:
    """Write a new random key to ``path`` (mode 0600), whole or not at all, never over an
    existing file (``FileExistsError``): a reader never sees a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
        os.link(tmp, path)
    finally:
        tmp.unlink()


class LocalKeyring:
    """Key files in one directory, ``<name>.key`` each (see the module docstring).

    A key's id is ``<label>-<name>-<fingerprint>``: the same name holding another key is
    another id, so a replaced file never silently opens what the old one wrapped. The current
    key is the file named ``current`` (a customer's configured key) or, without one, the
    greatest name (the platform keyring: :meth:`rotate` adds ``k0002`` after ``k0001``).
    ``create_first``: an empty directory gets its first key (the default platform keyring of
    an embedded installation); a configured directory must already hold one, so a missing
    mount fails closed instead of encrypting under a key that would vanish with it.
    The directory is read at every call: a file removed (a revoked key) stops working at once.
    """

    def __init__(
        self,
        directory: Path,
        *,
        label: str,
        name: str,
        current: str | None = None,
        create_first: bool = False,
    ) -> None:
        self.directory = directory
        self.label = label
        self._name = name
        self.current = current
        self.create_first = create_first
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def _keys(self) -> dict[str, tuple[str, bytes]]:
        """Key name → (id, key) of every readable key file."""
        keys: dict[str, tuple[str, bytes]] = {}
        try:
            paths = sorted(self.directory.glob("*.key"))
        except OSError:
            return keys
        for path in paths:
            name = path.stem
            if not _KEY_NAME.match(name):
                continue
            try:
                key = _decode_key(path.read_bytes())
            except (OSError, ValueError):
                continue  # unreadable: as good as absent (named when it is the one asked for)
            keys[name] = (f"{self.label}-{name}-{key_fingerprint(key)}", key)
        return keys

    def owns(self, key_id: str) -> bool:
        return key_id.startswith(f"{self.label}-")

    def _current(self) -> tuple[str, bytes]:
        with self._lock:
            keys = self._keys()
            if not keys and self.current is None and self.create_first:
                with contextlib.suppress(FileExistsError):  # another process made it first
                    new_key_file(self.directory / "k0001.key")
                keys = self._keys()
        if self.current is not None:
            if self.current not in keys:
                raise KeyUnavailable(
                    f"{self.name} {self.current!r} is not available (revoked, missing or not a "
                    f"base64 {KEY_BYTES}-byte key)"
                )
            return keys[self.current]
        if not keys:
            raise KeyUnavailable(
                f"{self.name}: no key file (create one: `managed-backups keys rotate-platform`)"
            )
        return keys[max(keys)]

    def current_key_id(self) -> str:
        return self._current()[0]

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        key_id, key = self._current()
        nonce = os.urandom(_NONCE_BYTES)
        return key_id, nonce + AESGCM(key).encrypt(nonce, data_key, context)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        for kid, key in self._keys().values():
            if hmac.compare_digest(kid, key_id):
                try:
                    return AESGCM(key).decrypt(
                        wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context
                    )
                except InvalidTag:
                    raise KeyUnavailable(
                        f"a data key does not authenticate under {self.name} {key_id} "
                        "(the key object was altered or belongs to another chain)"
                    ) from None
        raise KeyUnavailable(f"{self.name} {key_id} is not available (revoked or missing)")

    def rotate(self) -> str:
        with self._lock:
            names = [p.stem for p in self.directory.glob("k[0-9][0-9][0-9][0-9].key")]
            number = max((int(n[1:]) for n in names), default=0) + 1
            new_key_file(self.directory / f"k{number:04d}.key")
            self.current = None if self.current is None else f"k{number:04d}"
        return self.current_key_id()


@dataclass(frozen=True)
class ClusterKeys:
    """One cluster's keys: ``wrapping`` wraps new data keys; any of ``providers`` (which
    include it) may unwrap older ones."""

    cluster_id: str
    wrapping: KeyProvider
    providers: Sequence[KeyProvider]

    def current_key_id(self) -> str:
        return self.wrapping.current_key_id()

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        return self.wrapping.wrap(data_key, context)

    def can_unwrap(self, key_id: str) -> bool:
        return any(p.owns(key_id) for p in self.providers)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        for provider in self.providers:
            if provider.owns(key_id):
                return provider.unwrap(key_id, wrapped, context)
        raise KeyUnavailable(
            f"key {key_id} belongs to none of cluster {self.cluster_id}'s key providers"
        )


def data_key_context(cluster_id: str, chain_id: str) -> bytes:
    """What a chain's wrapped data key is bound to: it opens for this chain only."""
    return hashlib.sha256(
        f"managed-backups data key v1\0{cluster_id}\0{chain_id}".encode()
    ).digest()
