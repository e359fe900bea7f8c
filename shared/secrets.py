"""The secret store: each cluster's connection password, bound to that cluster's id; and beside
it, the salted hashes of the API keys' secrets (:class:`ApiKeySecrets`).

A row per cluster in the shared database (``mb_connection_secrets``), the password encrypted with
a key that lives only in the secrets directory (``<secrets-dir>/secret-store.key``, mode 0600 in
a 0700 directory), so a copy of the database alone reveals no password. The value is read back
only by the backup-executor, for that cluster's connections; it never goes into an event, a log,
an error or a view (the audit trail records *who changed* a cluster's secret, never the value or
a hash of it). Nothing here looks a password up by host, port, database or user.

The secret store's key can itself come from a key provider (:mod:`.dataplane.keys`; the
services pass the platform keyring, the one that wraps backups' data keys): it is then kept only
*wrapped* by that provider's current key (``<secrets-dir>/secret-store.key.wrapped``, JSON with
the key id), so a copy of the data directory and the database opens nothing without the
provider's key (keep the platform keys outside the data directory, or use a KMS adapter). A
plain key file left by an earlier version is wrapped and removed at first use; after the
provider's key is rotated, the next use wraps it by the new key.

Failures: a missing or wrong key raises :class:`SecretStoreError` (a secret that cannot be
decrypted is never replaced by "no password").
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import uuid
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from managed_backups.shared.dataplane.keys import KeyProvider, KeyUnavailable
from managed_backups.shared.sqldb import SqlDatabase

TABLE = "mb_connection_secrets"
API_KEY_TABLE = "mb_api_key_secrets"
KEY_FILE = "secret-store.key"
WRAPPED_KEY_FILE = "secret-store.key.wrapped"
WRAP_CONTEXT = b"managed-backups secret store key v1"
EMPTY_PASSFILE = "empty-pgpass"
MAX_SECRET_LENGTH = 1024


class SecretStoreError(Exception):
    pass


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by this user only; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) holding ``data``, or raise ``FileExistsError``. The file appears
    whole or not at all: it is written under a temporary name, then linked into place (two
    instances starting at once: the second never reads a half-written key; the fault suite's
    two schedulers did)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # atomic, and fails if another instance created it first
    finally:
        tmp.unlink(missing_ok=True)


class ConnectionSecrets:
    """Passwords keyed by cluster id. Thread-safe; call from worker threads."""

    def __init__(self, db: SqlDatabase, secrets_dir: Path, keys: KeyProvider | None = None) -> None:
        self.db = db
        self.dir = ensure_private_dir(secrets_dir)
        self.keys = keys
        """Wraps the store's key (``None``: a plain key file in the secrets directory)."""
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (cluster_id TEXT PRIMARY KEY, "
            "secret TEXT NOT NULL, changed_at TEXT NOT NULL)"
        )

    def _key(self) -> Fernet:
        with self._lock:
            if self._fernet is None and self.keys is not None:
                self._fernet = Fernet(self._wrapped_key(self.keys))
            if self._fernet is None:
                path = self.dir / KEY_FILE
                with contextlib.suppress(FileExistsError):  # another service created it
                    create_private_file(path, Fernet.generate_key())
                try:
                    self._fernet = Fernet(path.read_bytes().strip())
                except (OSError, ValueError) as exc:
                    raise SecretStoreError(f"the secret store key {path} is unusable") from exc
            return self._fernet

    def _wrapped_key(self, keys: KeyProvider) -> bytes:
        """The store's key, kept wrapped by ``keys`` (see the module docstring)."""
        wrapped_path, plain_path = self.dir / WRAPPED_KEY_FILE, self.dir / KEY_FILE
        try:
            if wrapped_path.exists():
                doc = json.loads(wrapped_path.read_text())
                key = keys.unwrap(doc["key_id"], base64.b64decode(doc["wrapped"]), WRAP_CONTEXT)
                if doc["key_id"] != keys.current_key_id():
                    self._write_wrapped(keys, key, replace=True)  # follow the rotated key
                plain_path.unlink(missing_ok=True)  # left by a migration cut short
                return key
            key = plain_path.read_bytes().strip() if plain_path.exists() else Fernet.generate_key()
            try:
                self._write_wrapped(keys, key, replace=False)
            except FileExistsError:  # another service created it first: use theirs
                return self._wrapped_key(keys)
            plain_path.unlink(missing_ok=True)
            return key
        except KeyUnavailable as exc:
            raise SecretStoreError(f"the secret store's key cannot be unwrapped: {exc}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise SecretStoreError(f"the secret store key {wrapped_path} is unusable") from exc

    def _write_wrapped(self, keys: KeyProvider, key: bytes, *, replace: bool) -> None:
        key_id, wrapped = keys.wrap(key, WRAP_CONTEXT)
        doc = json.dumps({"key_id": key_id, "wrapped": base64.b64encode(wrapped).decode()})
        tmp = self.dir / f"{WRAPPED_KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        create_private_file(tmp, doc.encode())
        if replace:
            tmp.replace(self.dir / WRAPPED_KEY_FILE)
            return
        try:
            os.link(tmp, self.dir / WRAPPED_KEY_FILE)  # fails if another process made it
        finally:
            tmp.unlink()

    def put(self, cluster_id: str, password: str, changed_at: str) -> None:
        if not password or len(password) > MAX_SECRET_LENGTH:
            raise ValueError(f"a password has 1 to {MAX_SECRET_LENGTH} characters")
        token = self._key().encrypt(password.encode()).decode()
        self.db.execute(
            f"INSERT INTO {TABLE} (cluster_id, secret, changed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (cluster_id) DO UPDATE SET secret = excluded.secret, "
            "changed_at = excluded.changed_at",
            (cluster_id, token, changed_at),
        )

    def get(self, cluster_id: str) -> str | None:
        rows = self.db.query(f"SELECT secret FROM {TABLE} WHERE cluster_id = ?", (cluster_id,))
        if not rows:
            return None
        try:
            return self._key().decrypt(str(rows[0][0]).encode()).decode()
        except InvalidToken:
            raise SecretStoreError(
                f"the secret of cluster {cluster_id} does not decrypt with the secret store's "
                f"key in {self.dir} (was the key replaced?)"
            ) from None

    def clusters(self) -> set[str]:
        """The clusters with a secret."""
        return {str(r[0]) for r in self.db.query(f"SELECT cluster_id FROM {TABLE}")}

    def delete(self, cluster_id: str) -> None:
        self.db.execute(f"DELETE FROM {TABLE} WHERE cluster_id = ?", (cluster_id,))

    def empty_passfile(self) -> Path:
        """An empty password file: what libpq reads instead of ``~/.pgpass``."""
        path = self.dir / EMPTY_PASSFILE
        with contextlib.suppress(FileExistsError):
            create_private_file(path, b"")
        return path


class ApiKeySecrets:
    """The salted hash of each API key's secret, by key id, in a table of its own
    (``mb_api_key_secrets``): never in an event (kept forever, published on the events topic),
    never in a view, a log or an error.

    The hash is HMAC-SHA256 keyed with a random salt per key (``hmac-sha256$<salt>$<digest>``).
    A secret is 256 random bits, not a password a person chose: nothing can be guessed from its
    hash, so a deliberately slow password hash would only slow every request down. The format
    names its algorithm, so another can be added and read beside it."""

    ALGORITHM = "hmac-sha256"

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {API_KEY_TABLE} (key_id TEXT PRIMARY KEY, "
            "hash TEXT NOT NULL, created_at TEXT NOT NULL)"
        )

    @classmethod
    def digest(cls, secret: str, salt: bytes) -> bytes:
        return hmac.new(salt, secret.encode(), hashlib.sha256).digest()

    @classmethod
    def hashed(cls, secret: str) -> str:
        salt = secrets.token_bytes(16)
        parts = (salt, cls.digest(secret, salt))
        return "$".join([cls.ALGORITHM, *(base64.b64encode(p).decode() for p in parts)])

    def put(self, key_id: str, secret: str, created_at: str) -> None:
        """Record a new key's hash (a key id is never reused: a second put is an error)."""
        self.db.execute(
            f"INSERT INTO {API_KEY_TABLE} (key_id, hash, created_at) VALUES (?, ?, ?)",
            (key_id, self.hashed(secret), created_at),
        )

    def matches(self, key_id: str, secret: str) -> bool:
        rows = self.db.query(f"SELECT hash FROM {API_KEY_TABLE} WHERE key_id = ?", (key_id,))
        if not rows:
            return False
        algorithm, _, rest = str(rows[0][0]).partition("$")
        salt, _, digest = rest.partition("$")
        if algorithm != self.ALGORITHM:
            return False
        expected = self.digest(secret, base64.b64decode(salt))
        return hmac.compare_digest(expected, base64.b64decode(digest))
