"""Command tokens: the proof of the principal a command carries, which works for nothing else.

A command on a topic carries no API key. Its ``token`` is a JWT signed with Ed25519 (``EdDSA``)
whose claims bind it to this one command:

| claim | value |
|---|---|
| ``iss`` | the signer: ``api`` (the HTTP API, for the caller it authenticated) or a service |
| ``sub`` | the principal: ``key:<API key id>`` or ``service:<name>`` |
| ``aud`` | the topic it was signed for |
| ``jti`` | the command's ``command_id`` |
| ``body`` | SHA-256 of the topic and the command without its token (:func:`command_body_sha256`) |
| ``iat``, ``exp`` | when it was signed; ``command_token_seconds`` (default 600) later it expires |

Only the signers hold private keys (``<signing-keys-dir>/<signer>.ed25519``, mode 0600); the
services verify with the public keys in ``mb_command_signing_keys`` (each signer registers its own
at start). The API signs only ``key:`` subjects; a service signs only its own ``service:<name>``,
so a user's key can never stand in for a service nor a service for a user. Read from a topic, a
token is useless elsewhere: another topic, command id or body fails its checks, and replayed as it
is, it is the same command, which idempotency answers without acting again.

When the command is handled, :meth:`CommandVerifier.verify` checks the signature and the claims,
then asks the store for the principal (:class:`~managed_backups.shared.security.Principals`):
its grants as they are now, and a revoked or expired key refused, so a command of a key revoked
while it waited on a topic is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from managed_backups.shared.domain.errors import NotAuthenticated
from managed_backups.shared.secrets import create_private_file, ensure_private_dir
from managed_backups.shared.security import (
    KEY_SUBJECT,
    SERVICE_SUBJECT,
    Principal,
    Principals,
)
from managed_backups.shared.sqldb import SqlDatabase

TOKEN_FIELD = "token"
LEGACY_CREDENTIAL_FIELD = "credential"
"""Where version 0.1's commands carried the sender's API key (refused now, never stored)."""
API_SIGNER = "api"
TABLE = "mb_command_signing_keys"
ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 30
"""Clock skew tolerated between a signer and a service."""
DEFAULT_TOKEN_SECONDS = 600.0


def normalized(command: Mapping[str, Any]) -> dict[str, Any]:
    """The command as JSON will carry it (UUIDs and times as strings): what is signed is
    exactly what the service parses."""
    result: dict[str, Any] = json.loads(json.dumps(command, default=str))
    return result


def command_body_sha256(topic: str, command: Mapping[str, Any]) -> str:
    """What a token and a command id promise: this topic, this type, these fields (not the
    token: a repeated command with a new token is the same command)."""
    body = {k: v for k, v in command.items() if k not in (TOKEN_FIELD, LEGACY_CREDENTIAL_FIELD)}
    canonical = json.dumps([topic, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def may_sign_for(signer: str, subject: str) -> bool:
    """The API signs for API keys; a service for itself alone."""
    if signer == API_SIGNER:
        return subject.startswith(KEY_SUBJECT)
    return subject == f"{SERVICE_SUBJECT}{signer}"


class SigningKeys:
    """The public keys commands are verified with, by key id (``kid``): a row per signer key."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        self._cache: dict[str, tuple[str, Ed25519PublicKey]] = {}
        self._lock = threading.Lock()
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (kid TEXT PRIMARY KEY, signer TEXT NOT NULL, "
            "public_key TEXT NOT NULL)"
        )

    def register(self, kid: str, signer: str, public_key: Ed25519PublicKey) -> None:
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.db.execute(
            f"INSERT INTO {TABLE} (kid, signer, public_key) VALUES (?, ?, ?) "
            "ON CONFLICT (kid) DO NOTHING",
            (kid, signer, pem),
        )

    def find(self, kid: str) -> tuple[str, Ed25519PublicKey] | None:
        """(signer, public key) of ``kid``. A key id names one key for ever (it is derived from
        the key), so what was read once is kept."""
        with self._lock:
            if kid in self._cache:
                return self._cache[kid]
        rows = self.db.query(f"SELECT signer, public_key FROM {TABLE} WHERE kid = ?", (kid,))
        if not rows:
            return None
        key = serialization.load_pem_public_key(str(rows[0][1]).encode())
        if not isinstance(key, Ed25519PublicKey):
            return None
        found = (str(rows[0][0]), key)
        with self._lock:
            self._cache[kid] = found
        return found


def key_id_of(signer: str, public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{signer}-{hashlib.sha256(raw).hexdigest()[:16]}"


@dataclass(frozen=True)
class CommandSigner:
    signer: str
    kid: str
    private_key: Ed25519PrivateKey
    seconds: float = DEFAULT_TOKEN_SECONDS

    @classmethod
    def load_or_create(
        cls, signer: str, key_dir: Path, db: SqlDatabase, seconds: float = DEFAULT_TOKEN_SECONDS
    ) -> CommandSigner:
        """The signer's private key from ``key_dir`` (created, 0600, on first use), its public
        key registered for the services."""
        ensure_private_dir(key_dir)
        path = key_dir / f"{signer}.ed25519"
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            with contextlib.suppress(FileExistsError):  # another instance created it first
                create_private_file(path, pem)
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        kid = key_id_of(signer, private_key.public_key())
        SigningKeys(db).register(kid, signer, private_key.public_key())
        return cls(signer, kid, private_key, seconds)

    def sign(self, subject: str, topic: str, command: Mapping[str, Any]) -> str:
        if not may_sign_for(self.signer, subject):
            raise ValueError(f"signer {self.signer} may not sign for {subject}")
        now = int(time.time())
        claims = {
            "iss": self.signer,
            "sub": subject,
            "aud": topic,
            "jti": str(command["command_id"]),
            "body": command_body_sha256(topic, normalized(command)),
            "iat": now,
            "exp": now + int(self.seconds),
        }
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def signed(self, subject: str, topic: str, command: Mapping[str, Any]) -> dict[str, Any]:
        """``command`` as JSON will carry it, with its token."""
        body = normalized(command)
        return {**body, TOKEN_FIELD: self.sign(subject, topic, body)}


class CommandVerifier:
    """Who sent a command: its token checked, then its principal as the store says now."""

    def __init__(self, db: SqlDatabase, principals: Principals) -> None:
        self.keys = SigningKeys(db)
        self.principals = principals

    def verify(self, topic: str, data: Mapping[str, Any], command_id: UUID) -> Principal:
        token = data.get(TOKEN_FIELD)
        if not isinstance(token, str) or not token:
            if LEGACY_CREDENTIAL_FIELD in data:
                raise NotAuthenticated(
                    "this command carries an API key (the form of version 0.1): API keys no "
                    "longer travel on topics, and this one should be revoked; send the command "
                    "through the HTTP API or `managed-backups publish`, which sign it"
                )
            raise NotAuthenticated(
                "no token: a command is signed for its sender by the HTTP API "
                "(POST /api/v1/command-tokens) or by `managed-backups publish`"
            )
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated(f"the command's token is not valid: {exc}") from None
        found = self.keys.find(str(kid)) if kid else None
        if found is None:
            raise NotAuthenticated("the command's token is signed with an unknown key")
        signer, public_key = found
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=topic,
                issuer=signer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "sub", "aud", "jti", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated(
                "the command's token expired before the command was handled: send the "
                "command again (the same command_id) with a new token"
            ) from None
        except jwt.InvalidAudienceError:
            raise NotAuthenticated("the command's token was signed for another topic") from None
        except jwt.InvalidTokenError as exc:
            raise NotAuthenticated(f"the command's token is not valid: {exc}") from None
        if claims["jti"] != str(command_id):
            raise NotAuthenticated("the command's token was signed for another command_id")
        if claims.get("body") != command_body_sha256(topic, data):
            raise NotAuthenticated("the command's token was signed for another command body")
        subject = str(claims["sub"])
        if not may_sign_for(signer, subject):
            raise NotAuthenticated(f"signer {signer} may not sign for {subject}")
        return self.principals.of_subject(subject)
