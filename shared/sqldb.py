"""A small SQL helper over SQLite and PostgreSQL for the tables that are not events.

Read models (projections), the relay's position and the simulated clock live in the same database
as the event store. Statements are written with ``?`` placeholders and translated for psycopg
(:func:`to_psycopg`: quoted text is left alone).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


def to_psycopg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``, outside quoted literals and identifiers only (a
    ``?`` inside ``'...'`` or ``"..."`` stays as it is), and every literal ``%`` doubled."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if char == "%":
            out.append("%%")
            continue
        if quote is not None:
            if char == quote:
                quote = None  # a doubled quote ('') closes and reopens: same result
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append(char)
    return "".join(out)


DDL_LOCK_KEY = 0x6D625F64646C  # "mb_ddl"
"""The advisory lock that serialises the services' ``CREATE … IF NOT EXISTS`` on PostgreSQL."""


def _is_create_if_missing(sql: str) -> bool:
    head = " ".join(sql.split()[:6]).upper()
    return head.startswith("CREATE") and "IF NOT EXISTS" in head


class _PgCursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor
        self._ddl_locked = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not self._ddl_locked and _is_create_if_missing(sql):
            # Two processes starting at once (two instances of a service) both run ``CREATE
            # TABLE IF NOT EXISTS``; PostgreSQL checks the name before it inserts the catalog
            # rows, so the slower one fails with a unique violation on ``pg_type``. Held until
            # the transaction ends: the second one waits, then finds the table.
            self._cursor.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
            self._ddl_locked = True
        return self._cursor.execute(to_psycopg(sql), tuple(params))

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()


class SqlDatabase:
    """One connection guarded by a lock; call from worker threads (``asyncio.to_thread``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.dialect = "sqlite" if parts.scheme == "sqlite" else "postgres"
        self._lock = threading.RLock()
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._connect()

    def _connect(self) -> None:
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(path), timeout=60, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._sqlite = conn
        else:
            self._pg = psycopg.connect(postgres_conninfo(self.url), autocommit=False)

    @property
    def serial_pk(self) -> str:
        return (
            "INTEGER PRIMARY KEY AUTOINCREMENT"
            if self.dialect == "sqlite"
            else "BIGSERIAL PRIMARY KEY"
        )

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            if self._sqlite is not None:
                conn = self._sqlite
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn.cursor()
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                assert self._pg is not None
                if self._pg.closed:
                    self._connect()
                    assert self._pg is not None
                try:
                    with self._pg.cursor() as cursor:
                        yield _PgCursor(cursor)
                except BaseException:
                    self._pg.rollback()
                    raise
                self._pg.commit()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.transaction() as cursor:
            cursor.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.transaction() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def table_exists(self, name: str) -> bool:
        if self.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 FROM information_schema.tables WHERE table_name = ?"
        return bool(self.query(sql, (name,)))

    def close(self) -> None:
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
            if self._pg is not None:
                self._pg.close()


def sqlite_path(url: str) -> Path:
    # sqlite:///abs/path → /abs/path
    return Path(url.removeprefix("sqlite://"))


def postgres_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)
