"""Errors of the data plane and how PostgreSQL's and its tools' failures map to them.

Every failure a backup or restore reports is a :class:`BackupError` (a :class:`RestoreError`
on the restore side) with a stable :class:`ErrorCode`, a human message (the first line of the
server's or tool's message, never a password: connection parameters travel without one) and
the ``step`` or statement that failed. :func:`pg_error` maps a psycopg error by its SQLSTATE,
:func:`tool_error` a client tool's standard error; both fall back to the message's text.
"""

from __future__ import annotations

import re
from enum import StrEnum

import psycopg

__all__ = [
    "BackupError",
    "ErrorCode",
    "RestoreError",
    "code_for",
    "pg_error",
    "tool_error",
]


class ErrorCode(StrEnum):
    CONNECTION_FAILED = "CONNECTION_FAILED"
    """The cluster (or one of its databases) could not be reached."""
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The backup role lacks a privilege (a table, a database, row-level security...)."""
    SNAPSHOT_FAILED = "SNAPSHOT_FAILED"
    DUMP_FAILED = "DUMP_FAILED"
    """A dump statement or tool failed for another reason."""
    STORE_FAILED = "STORE_FAILED"
    """The object store refused a write or read."""
    DUPLICATE_BACKUP = "DUPLICATE_BACKUP"
    """A manifest with this backup id already exists."""
    INVALID_CHAIN = "INVALID_CHAIN"
    """The previous backup given for an incremental does not fit."""
    UNSUPPORTED = "UNSUPPORTED"
    """Server version or feature not supported."""
    TOOL_MISSING = "TOOL_MISSING"
    NOT_FOUND = "NOT_FOUND"
    """A database or table is not in the backup."""
    CHUNK_MISSING = "CHUNK_MISSING"
    CHUNK_CORRUPT = "CHUNK_CORRUPT"
    """A chunk is damaged: wrong size or hash, or (encrypted) it fails authentication."""
    KEY_UNAVAILABLE = "KEY_UNAVAILABLE"
    """Encryption at rest: no usable key-encryption key (revoked, missing), or a chain's data
    key that no key of the cluster opens. Nothing was written in clear."""
    RESTORE_FAILED = "RESTORE_FAILED"
    """The destination refused the restored schema or rows."""
    CANCELLED = "CANCELLED"
    LEASE_LOST = "LEASE_LOST"
    """The worker lost its job's lease (reaped or taken anew): it stopped and wrote no result."""
    CHAIN_EXPIRED = "CHAIN_EXPIRED"
    """A scheduled incremental named a chain that has expired: refused, nothing was taken."""
    INTERNAL = "INTERNAL"


class BackupError(Exception):
    """A backup (or restore) failed: ``code``, ``message`` and the ``step`` that failed."""

    def __init__(
        self, code: ErrorCode | str, message: str, step: str, *, sqlstate: str | None = None
    ) -> None:
        self.code = ErrorCode(code)
        self.message = message
        self.step = step
        self.sqlstate = sqlstate
        super().__init__(f"{self.code.value}: {message} (step: {step})")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message, "step": self.step}


class RestoreError(BackupError):
    """A restore helper failed (same shape as :class:`BackupError`)."""


_OUT_OF_SHARED_MEMORY = "53200"
_SQLSTATE_RE = re.compile(r"ERROR:\s+([0-9A-Z]{5}):\s*([^\n]*)")
_ERROR_LINE_RE = re.compile(r"(?:error|ERROR|FATAL):\s*(.*)")


def code_for(sqlstate: str | None, text: str) -> ErrorCode:
    """The code for a failure: by SQLSTATE when the server gave one, else by the message."""
    low = text.lower()
    if sqlstate:
        if sqlstate == "42501":
            return ErrorCode.PERMISSION_DENIED
        if sqlstate.startswith("28"):
            return ErrorCode.AUTHENTICATION_FAILED
        if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "3D000"):
            return ErrorCode.CONNECTION_FAILED
        if sqlstate in ("22023", "0B000") and "snapshot" in low:
            return ErrorCode.SNAPSHOT_FAILED
        if sqlstate == "57014":
            return ErrorCode.CANCELLED
        return ErrorCode.DUMP_FAILED
    if "password authentication failed" in low or "no password supplied" in low:
        return ErrorCode.AUTHENTICATION_FAILED
    if "authentication failed" in low or "pg_hba.conf" in low:
        return ErrorCode.AUTHENTICATION_FAILED
    if "permission denied" in low or "must be superuser" in low or "must be owner" in low:
        return ErrorCode.PERMISSION_DENIED
    if (
        "connection to server" in low
        or "could not connect" in low
        or "connection refused" in low
        or "could not translate host" in low
        or "server closed the connection" in low
        or "timeout expired" in low
        or ("does not exist" in low and "database" in low)
    ):
        return ErrorCode.CONNECTION_FAILED
    if "snapshot" in low:
        return ErrorCode.SNAPSHOT_FAILED
    return ErrorCode.DUMP_FAILED


def pg_error(exc: psycopg.Error, step: str) -> BackupError:
    """A psycopg error as a :class:`BackupError`: its first line, its SQLSTATE, the step."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    hint = getattr(getattr(exc, "diag", None), "message_hint", None)
    if sqlstate == _OUT_OF_SHARED_MEMORY and hint:
        # "out of shared memory" alone does not say the lock table is too small.
        first = f"{first}: {hint}"
    return BackupError(code_for(sqlstate, text), first[:1000], step[:2000], sqlstate=sqlstate)


def tool_error(tool: str, rc: int, stderr: str, step: str) -> BackupError:
    """A client tool's failure as a :class:`BackupError`, from the first error line of its
    standard error (with ``VERBOSITY=verbose``, the SQLSTATE it prints)."""
    match = _SQLSTATE_RE.search(stderr)
    if match:
        sqlstate, message = match.group(1), match.group(2).strip()
        return BackupError(
            code_for(sqlstate, message), message[:1000], step[:2000], sqlstate=sqlstate
        )
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    message = ""
    for line in lines:
        m = _ERROR_LINE_RE.search(line)
        if m:
            message = m.group(1).strip()
            break
    if not message:
        message = lines[0] if lines else f"{tool} exited with status {rc}"
    full = "\n".join(lines)
    return BackupError(code_for(None, full or message), message[:1000], step[:2000])
