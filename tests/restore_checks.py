"""What restore tests compare: a table's row count and checksum, read the same way on the
source at backup time and on the restored copy."""

from __future__ import annotations

import hashlib

import psycopg

from managed_backups.shared.dataplane.postgres import SESSION_SETTINGS, quote_ident


def table_digest(url: str, schema: str, table: str, order: str = "1") -> tuple[int, str]:
    """(rows, md5 of the COPY text in ``order``) of ``schema.table`` in the database ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in SESSION_SETTINGS:
            conn.execute(f"SET {name} = '{value}'")
        md5 = hashlib.md5(usedforsecurity=False)
        rows = 0
        target = f"{quote_ident(schema)}.{quote_ident(table)}"
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY (SELECT * FROM {target} ORDER BY {order}) TO STDOUT") as copy,
        ):
            for block in copy:
                md5.update(bytes(block))
                rows += bytes(block).count(b"\n")
    return rows, md5.hexdigest()
