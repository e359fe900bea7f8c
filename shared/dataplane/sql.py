"""SQL text the backup and the restore share.

- :func:`quote_ident` / :func:`quote_literal`: identifiers and literals, quoted the way
  PostgreSQL reads them (whatever the characters: the text is encoded in the database's
  encoding, see :func:`python_codec`);
- :data:`SESSION_SETTINGS`: the settings pinned in every session that reads or writes COPY text,
  so the text is deterministic and portable (dates in ISO, floats exact, bytea in hex, UTC,
  no row-level security hiding rows, ``search_path`` empty of user schemas);
- the key types an incremental supports (:data:`DIFFABLE_KEY_TYPES`), the order their keys
  are read in (:func:`order_by`) and the same order in Python (:func:`key_parser`), which the
  restore's merge relies on: the merge must order keys exactly as the backup's ``ORDER BY``
  did, or it would take a key for deleted or keep two versions of a row;
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
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg._encodings import pg2pyenc  # psycopg's own PostgreSQL → Python codec table
from psycopg.adapt import Buffer, Loader

from .errors import BackupError, ErrorCode
from .manifest import KeyColumn

__all__ = [
    "BYTES_KEY_TYPES",
    "C_COLLATE_TYPES",
    "DIFFABLE_KEY_TYPES",
    "INT_KEY_TYPES",
    "SESSION_SETTINGS",
    "TEXT_ORDER_KEY_TYPES",
    "TIME_KEY_TYPES",
    "connect",
    "copy_encoding",
    "copy_select_sql",
    "encode_statement",
    "encoded",
    "key_parser",
    "order_by",
    "python_codec",
    "quote_ident",
    "quote_literal",
    "time_key",
    "unescape_copy",
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
#: Key types whose order is their COPY text's bytes: merged by those bytes (text and varchar
#: read ``COLLATE "C"``; a uuid's order is its 16 bytes', as its lower-case hex text's; bool's
#: ``f`` before ``t``; bytea's hex text after ``\x``).
BYTES_KEY_TYPES = frozenset({"text", "varchar", "uuid", "bytea", "bool"})
#: Key types ordered ``COLLATE "C"``.
C_COLLATE_TYPES = frozenset({"text", "varchar"})
#: Date and time keys, in their own order (``-infinity`` first, ``infinity`` last, BC dates
#: before AD ones, years past 9999, fractional seconds), merged by the instant their text
#: names (:func:`time_key`; the session's ``DateStyle`` is ISO and its ``TimeZone`` UTC).
TIME_KEY_TYPES = frozenset({"date", "timestamp", "timestamptz"})
#: Keys read in the order of their text's bytes (``::text COLLATE "C"``) rather than their
#: type's: ``citext`` orders by ``lower()`` under the database's ctype, which Python cannot
#: reproduce for every locale. Merged by those bytes, the row's key text is its identity: a
#: primary key holds one row per equal key, so a key whose text changed (``'A'`` to ``'a'``)
#: is a changed row (in the delta) whose old text is absent from the key set (dropped).
TEXT_ORDER_KEY_TYPES = frozenset({"citext"})
#: Every key type an incremental stores as a delta (other keys: the table is stored whole).
DIFFABLE_KEY_TYPES = INT_KEY_TYPES | BYTES_KEY_TYPES | TIME_KEY_TYPES | TEXT_ORDER_KEY_TYPES


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
    merges key-ordered streams with plain byte comparisons whatever the collation;
    :data:`TEXT_ORDER_KEY_TYPES` by their text's bytes; others in their type's order, which
    :func:`key_parser` reproduces."""
    parts = []
    for kc in key_columns:
        expr = f"{alias}.{quote_ident(kc.name)}"
        if kc.type in C_COLLATE_TYPES:
            expr += ' COLLATE "C"'
        elif kc.type in TEXT_ORDER_KEY_TYPES:
            expr += '::text COLLATE "C"'
        parts.append(expr)
    return ", ".join(parts)


_ESCAPES = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
    ord("\\"): b"\\",
}


def unescape_copy(field: bytes) -> bytes:
    """Undo COPY text escaping (COPY TO only emits ``\\\\ \\b \\f \\n \\r \\t \\v``)."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    n = len(field)
    while i < n:
        c = field[i]
        if c == 0x5C and i + 1 < n:
            out += _ESCAPES.get(field[i + 1], field[i + 1 : i + 2])
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


_TIME_TEXT = re.compile(
    rb"(\d{4,})-(\d\d)-(\d\d)"
    rb"(?: (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?)?"
    rb"( BC)?"
)
_DAY_US = 86_400_000_000


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year 0 is 1 BC), as PostgreSQL
    counts them (H. Hinnant's algorithm; Python's floor division handles negative years)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def time_key(text: bytes) -> tuple[int, int]:
    """A ``date``, ``timestamp`` or ``timestamptz`` key's COPY text (``DateStyle`` ISO) as
    ``(rank, microseconds since 1970-01-01 UTC)``, which orders as PostgreSQL's ``ORDER BY``:
    ``-infinity`` (rank -1) before every value, ``infinity`` (rank 1) after; BC years (``0044-03-15
    BC`` is astronomical year -43), years past 9999, fractional seconds of 1 to 6 digits, and
    a UTC offset (``+00`` with ``TimeZone`` UTC; any other is applied). Raises ``ValueError``
    on any other text."""
    if text == b"infinity":
        return (1, 0)
    if text == b"-infinity":
        return (-1, 0)
    m = _TIME_TEXT.fullmatch(text)
    if m is None:
        raise ValueError(f"not an ISO date or timestamp: {text!r}")
    year = int(m[1])
    if m[12]:
        year = 1 - year
    micros = _days_from_civil(year, int(m[2]), int(m[3])) * _DAY_US
    if m[4] is not None:
        seconds = (int(m[4]) * 60 + int(m[5])) * 60 + int(m[6])
        micros += seconds * 1_000_000 + int((m[7] or b"").ljust(6, b"0"))
        if m[8] is not None:
            offset = (int(m[9]) * 60 + int(m[10] or 0)) * 60 + int(m[11] or 0)
            micros -= (offset if m[8] == b"+" else -offset) * 1_000_000
    return (0, micros)


def key_parser(key_type: str) -> Callable[[bytes], Any]:
    """How the restore's merge reads one key column's COPY text so that Python orders it as
    :func:`order_by` made the backup read it: integers as ``int``, dates and times by
    :func:`time_key`, every other diffable type by its unescaped bytes."""
    if key_type in INT_KEY_TYPES:
        return int
    if key_type in TIME_KEY_TYPES:
        return time_key
    return unescape_copy


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
