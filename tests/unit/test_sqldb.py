"""``?`` placeholders reach psycopg as ``%s`` only where they are placeholders."""

from __future__ import annotations

from managed_backups.shared.sqldb import to_psycopg


def test_placeholders_outside_quotes_only() -> None:
    assert to_psycopg("SELECT a FROM t WHERE b = ? AND c = ?") == (
        "SELECT a FROM t WHERE b = %s AND c = %s"
    )
    assert to_psycopg("SELECT '?', \"we?ird\" FROM t WHERE x = ?") == (
        "SELECT '?', \"we?ird\" FROM t WHERE x = %s"
    )
    assert to_psycopg("SELECT 'it''s ?' WHERE y LIKE '5%' AND z = ?") == (
        "SELECT 'it''s ?' WHERE y LIKE '5%%' AND z = %s"
    )
