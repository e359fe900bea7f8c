"""SQL text the backup and the restore share.

- :func:`quote_ident` / :func:`quote_literal`: identifiers and literals, quoted the way
  PostgreSQL reads them (whatever the characters: the text is encoded in the database's
  encoding, see :func:`python_codec`);
- :data:`SESSION_SETTINGS`: the settings pinned in every session that reads or writes COPY text,
  so the text is deterministic and portable (dates in ISO, floats exact, bytea in hex, UTC,
  no row-level security hiding rows, ``search_path`` empty of user schemas);
- the key types an incremental supports (:data:`INT_KEY_TYPES`, :data:`BYTES_KEY_TYPES`) and
  the byte order their keys are read in (:func:`order_by`: text ``COLLATE "C"``), which the
  restore's merge relies on;
- :func:`copy_select_sql`: the query a table's rows are copied with.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg._encodings import pg2pyenc  # psycopg's own PostgreSQL → Python codec table

from .errors import BackupError, ErrorCode
from .manifest import KeyColumn

__all__ = [
    "BYTES_KEY_TYPES",
    "C_COLLATE_TYPES",
    "INT_KEY_TYPES",
    "SESSION_SETTINGS",
    "copy_select_sql",
    "order_by",
    "python_codec",
    "quote_ident",
    "quote_literal",
]

#: Session settings for every COPY (backup and restore): deterministic, portable text.
SESSION_SETTINGS: tuple[tuple[str, str], ...] = (
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("TimeZone", "UTC"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("client_min_messages", "warning"),
    ("row_security", "off"),
    ("search_path", "pg_catalog"),
)

#: Single-integer keys: key sets stored as ranges, merged numerically.
INT_KEY_TYPES = frozenset({"int2", "int4", "int8", "oid"})
#: Other key types an incremental supports: merged by their COPY text's bytes.
BYTES_KEY_TYPES = frozenset({"text", "varchar", "uuid", "bytea", "bool"})
#: Key types ordered ``COLLATE "C"``.
C_COLLATE_TYPES = frozenset({"text", "varchar"})


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a SQL string literal (``standard_conforming_strings`` is on)."""
    return "'" + value.replace("'", "''") + "'"


def python_codec(pg_encoding: str) -> str:
    """Python's codec for a PostgreSQL encoding name (``LATIN1`` → ``iso8859-1``); ``SQL_ASCII``
    maps to ``ascii`` and refuses non-ASCII text rather than guessing."""
    try:
        return pg2pyenc(pg_encoding.encode())
    except (KeyError, psycopg.NotSupportedError):
        raise BackupError(
            ErrorCode.UNSUPPORTED, f"no Python codec for encoding {pg_encoding}", "encode SQL"
        ) from None


def order_by(key_columns: Sequence[KeyColumn], alias: str = "_t") -> str:
    """The ``ORDER BY`` list of a key: text keys ``COLLATE "C"`` (byte order), so a restore
    merges key-ordered streams with plain byte comparisons whatever the collation."""
    parts = []
    for kc in key_columns:
        expr = f"{alias}.{quote_ident(kc.name)}"
        if kc.type in C_COLLATE_TYPES:
            expr += ' COLLATE "C"'
        parts.append(expr)
    return ", ".join(parts)


def copy_select_sql(
    qualified: str, columns: Sequence[str], key_columns: Sequence[KeyColumn], where: str = ""
) -> str:
    """``SELECT cols FROM ONLY t [WHERE ...] ORDER BY key`` as the backup's COPY uses it."""
    cols = ", ".join(f"_t.{quote_ident(c)}" for c in columns)
    sql = f"SELECT {cols} FROM ONLY {qualified} AS _t"
    if where:
        sql += f" WHERE {where}"
    if key_columns:
        sql += f" ORDER BY {order_by(key_columns)}"
    return sql
