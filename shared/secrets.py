"""The secret store: each cluster's connection password, bound to that cluster's id; and beside
it, the salted hashes of the API keys' secrets (:class:`ApiKeySecrets`).

A row per cluster in the shared database (``mb_connection_secrets``), the password encrypted with
a key that lives only in the secrets directory (``<secrets-dir>/secret-store.key``, mode 0600 in
a 0700 directory), so a copy of the database alone reveals no password. The value is read back
only by the backup-executor, for that cluster's connections; it never goes into an event, a log,
an error or a view (the audit trail records *who changed* a cluster's secret, never the value or
a hash of it). Nothing here looks a password up by host, port, database or user.

Failures: a missing or wrong key raises :class:`SecretStoreError` (a secret that cannot be
decrypted is never replaced by "no password").
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from managed_backups.shared.sqldb import SqlDatabase

TABLE = "mb_connection_secrets"
API_KEY_TABLE = "mb_api_key_secrets"
KEY_FILE = "secret-store.key"
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class ConnectionSecrets:
    """Passwords keyed by cluster id. Thread-safe; call from worker threads."""

    def __init__(self, db: SqlDatabase, secrets_dir: Path) -> None:
        self.db = db
        self.dir = ensure_private_dir(secrets_dir)
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (cluster_id TEXT PRIMARY KEY, "
            "secret TEXT NOT NULL, changed_at TEXT NOT NULL)"
        )

    def _key(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                path = self.dir / KEY_FILE
                with contextlib.suppress(FileExistsError):  # another service created it
                    create_private_file(path, Fernet.generate_key())
                try:
                    self._fernet = Fernet(path.read_bytes().strip())
                except (OSError, ValueError) as exc:
                    raise SecretStoreError(f"the secret store key {path} is unusable") from exc
            return self._fernet

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
                f"the secret of cluster {cluster_id} does not decrypt with "
                f"{self.dir / KEY_FILE} (was the key replaced?)"
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
