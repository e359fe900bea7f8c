"""Statements in every encoding, and date and time keys in PostgreSQL's order, without a server
(``tests/dataplane/test_encodings.py`` and ``test_key_order.py`` check both against one)."""

from __future__ import annotations

import pytest

from managed_backups.shared.dataplane.errors import BackupError
from managed_backups.shared.dataplane.sql import encode_statement, key_parser, time_key


def test_a_statement_is_sent_in_the_sessions_encoding() -> None:
    sql = 'COPY "résumé"."café" FROM STDIN'
    assert encode_statement(sql, "LATIN1", "LATIN1") == sql.encode("latin-1")
    assert encode_statement(sql, "LATIN1", "UTF8") == sql.encode()
    # A SQL_ASCII session converts nothing: a SQL_ASCII database's names are the UTF-8 the
    # catalog read gave.
    assert encode_statement(sql, "SQL_ASCII", "SQL_ASCII") == sql.encode()


def test_names_python_cannot_encode_become_unicode_escapes() -> None:
    sql = 'SELECT "a""é\\x", \'t\'\'漢\', "plain" FROM "😀"'
    sent = encode_statement(sql, "EUC_TW", "SQL_ASCII")
    assert sent == (b'SELECT U&"a""\\00E9\\\\x", U&\'t\'\'\\6F22\', "plain" FROM U&"\\+01F600"')
    with pytest.raises(BackupError, match="cannot be written in the encoding MULE_INTERNAL"):
        encode_statement("SELECT é", "MULE_INTERNAL", "SQL_ASCII")


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("-infinity", "4713-01-01 BC"),
        ("0044-03-15 12:00:00+00 BC", "0001-12-31 23:59:59.999999+00 BC"),
        ("0001-12-31 23:59:59.999999+00 BC", "0001-01-01 00:00:00+00"),
        ("2024-01-01 00:00:00+00", "2024-01-01 00:00:00.000001+00"),
        ("2024-01-01 00:00:00.09+00", "2024-01-01 00:00:00.1+00"),
        ("2024-01-01 00:00:00.5", "2024-01-01 00:00:01"),
        ("9999-12-31", "10000-01-01"),
        ("10000-01-01 00:00:00+00", "294276-12-31 23:59:59.999999+00"),
        ("2024-01-01 02:00:00+03", "2024-01-01 00:00:00.000001+00"),
        ("294276-12-31 23:59:59.999999+00", "infinity"),
        ("2000-02-28", "2000-02-29"),
        ("1900-02-28", "1900-03-01"),
    ],
)
def test_time_keys_order_as_postgresql_does(earlier: str, later: str) -> None:
    assert time_key(earlier.encode()) < time_key(later.encode())


def test_the_same_instant_is_the_same_key_and_others_are_refused() -> None:
    assert time_key(b"2024-01-01 02:00:00+02") == time_key(b"2024-01-01 00:00:00+00")
    assert time_key(b"2024-01-01 00:00:00.5+00") == time_key(b"2024-01-01 00:00:00.500000+00")
    for text in (b"yesterday", b"2024-13", b"01/02/2024", b"2024-01-01T00:00:00"):
        with pytest.raises(ValueError, match="not an ISO date or timestamp"):
            time_key(text)
    assert key_parser("timestamptz") is time_key and key_parser("int8") is int
    assert key_parser("citext")(b"tab\\there") == b"tab\there"
