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
- :func:`copy_select_sql`: the query a table's rows are copied with;
- encodings (every encoding PostgreSQL offers for a database): :func:`connect` opens a session
  whose text is Unicode (client encoding UTF8; on a ``MULE_INTERNAL`` database, which the
  server cannot convert to UTF-8, SQL_ASCII with its text read as UTF-8); rows are copied in
  the database's own bytes (:func:`copy_encoding`: its own encoding, or SQL_ASCII, which
  converts nothing, where Python has no codec for it); and :func:`encode_statement` /
  :func:`encoded` give a statement's bytes for such a session (names and literals outside
  ASCII as ``U&`` escapes where Python cannot encode them, which the server converts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg._encodings import pg2pyenc  # psycopg's own PostgreSQL → Python codec table
from psycopg.adapt import Buffer, Loader

from .errors import BackupError, ErrorCode
from .manifest import KeyColumn

__all__ = [
    "BYTES_KEY_TYPES",
    "C_COLLATE_TYPES",
    "INT_KEY_TYPES",
    "SESSION_SETTINGS",
    "connect",
    "copy_encoding",
    "copy_select_sql",
    "encode_statement",
    "encoded",
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
    """Python's codec for a PostgreSQL encoding name (``LATIN1`` → ``iso8859-1``). ``SQL_ASCII``
    maps to ``utf-8``: a SQL_ASCII database's names are read through a UTF8 session, on which
    the server converts nothing, so their UTF-8 bytes are the database's own."""
    if pg_encoding == "SQL_ASCII":
        return "utf-8"
    try:
        return pg2pyenc(pg_encoding.encode())
    except (KeyError, psycopg.NotSupportedError):
        raise BackupError(
            ErrorCode.UNSUPPORTED, f"no Python codec for encoding {pg_encoding}", "encode SQL"
        ) from None


_NO_PYTHON_CODEC = frozenset({"EUC_TW", "MULE_INTERNAL"})
"""Server encodings psycopg has no codec for: a session in them cannot run a statement."""
_NO_UTF8_CONVERSION = frozenset({"MULE_INTERNAL"})
"""Server encodings PostgreSQL cannot convert to UTF-8 (a UTF8 session is refused)."""


def copy_encoding(db_encoding: str) -> str:
    """The client encoding of a session that copies the rows of a database in
    ``db_encoding``: the database's own, so COPY text is its bytes, or ``SQL_ASCII`` (which
    converts nothing: the same bytes) for the encodings psycopg has no codec for."""
    return "SQL_ASCII" if db_encoding in _NO_PYTHON_CODEC else db_encoding


class _Utf8Loader(Loader):
    """Text of a SQL_ASCII session read as UTF-8 (psycopg would give bytes)."""

    def load(self, data: Buffer) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise psycopg.DataError(
                f"text that is not UTF-8 in a database PostgreSQL cannot convert to UTF-8"
                f" (its names, comments and settings must be ASCII or UTF-8): {exc}"
            ) from None


_TEXT_OIDS = (25, 1043, 19, 1042, 18, 705)
"""``text``, ``varchar``, ``name``, ``bpchar``, ``"char"``, ``unknown``."""


def _text_as_utf8(conn: psycopg.Connection[Any]) -> None:
    for oid in _TEXT_OIDS:
        conn.adapters.register_loader(oid, _Utf8Loader)


def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection whose text is Unicode (``kwargs`` are psycopg's): client encoding
    UTF8; on a database PostgreSQL cannot convert to UTF-8 (``MULE_INTERNAL``: the UTF8 session
    is refused), SQL_ASCII with its text read as UTF-8, so its names must be ASCII.
    ``client_encoding`` in ``kwargs`` (a session copying rows, see :func:`copy_encoding`) is
    used as given; a SQL_ASCII one reads text as UTF-8 too."""
    wanted = kwargs.pop("client_encoding", None)
    if wanted is not None:
        conn = psycopg.connect(conninfo, client_encoding=wanted, **kwargs)
        if wanted == "SQL_ASCII":
            _text_as_utf8(conn)
        return conn
    try:
        return psycopg.connect(conninfo, client_encoding="UTF8", **kwargs)
    except psycopg.OperationalError as first:
        try:
            conn = psycopg.connect(conninfo, client_encoding="SQL_ASCII", **kwargs)
        except psycopg.Error:
            raise first from None
        if conn.info.parameter_status("server_encoding") not in _NO_UTF8_CONVERSION:
            conn.close()
            raise first from None
        _text_as_utf8(conn)
        return conn


_QUOTED = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'')


def _unicode_escaped(token: str) -> str:
    """A quoted identifier or literal as a ``U&`` one: ASCII, whatever its characters."""
    if token.isascii():
        return token
    out = []
    for ch in token:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isascii():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\{ord(ch):04X}")
        else:
            out.append(f"\\+{ord(ch):06X}")
    return "U&" + "".join(out)


def encode_statement(text: str, server_encoding: str, client_encoding: str) -> bytes:
    """``text`` as the bytes a session in ``client_encoding`` sends to a database in
    ``server_encoding``. A SQL_ASCII session converts nothing, so the bytes are the database's
    own: its encoding's, UTF-8 for a SQL_ASCII database (see :func:`python_codec`), and for
    the encodings Python has no codec for, ASCII with every quoted name or literal holding
    other characters written as a ``U&`` escape (``standard_conforming_strings`` is on), which
    the server converts into its encoding (it refuses what it cannot represent)."""
    encoding = server_encoding if client_encoding == "SQL_ASCII" else client_encoding
    if encoding in _NO_PYTHON_CODEC:
        text = _QUOTED.sub(lambda m: _unicode_escaped(m.group(0)), text)
        codec = "ascii"
    else:
        codec = python_codec(encoding)
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:
        raise BackupError(
            ErrorCode.UNSUPPORTED,
            f"a statement cannot be written in the encoding {encoding}: {exc}",
            "encode SQL",
        ) from None


def encoded(conn: psycopg.Connection[Any], text: str) -> bytes:
    """``text`` as ``conn`` must send it (see :func:`encode_statement`)."""
    info = conn.info
    return encode_statement(
        text,
        info.parameter_status("server_encoding") or "UTF8",
        info.parameter_status("client_encoding") or "UTF8",
    )


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
