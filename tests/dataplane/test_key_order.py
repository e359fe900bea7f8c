"""The restore's merge orders keys exactly as the backup's ``ORDER BY`` read them, for every key
type an incremental diffs: thousands of values of each type (random over the type's whole
range, and the edges: ``infinity``, BC dates, years past 9999, fractional seconds of every
length, escapes in text), read by PostgreSQL in :func:`~...sql.order_by`'s order with the
backup's session settings, must be strictly increasing under :func:`~...sql.key_parser`."""

from __future__ import annotations

import pytest

from managed_backups.shared.dataplane.manifest import KeyColumn
from managed_backups.shared.dataplane.sql import DIFFABLE_KEY_TYPES, key_parser, order_by

from .conftest import PgServer, source_rows

pytestmark = pytest.mark.integration

_RANDOM_INSTANTS = """
SELECT timestamptz '4713-01-01 00:00:00+00 BC' + (random() * 106000000)::int8 * interval '1 day'
       + (random() * 86400e6)::int8 * interval '1 microsecond'
FROM generate_series(1, 3000)
"""
EDGE_INSTANTS = [
    "-infinity",
    "infinity",
    "4713-01-01 00:00:00+00 BC",
    "0044-03-15 12:00:00+00 BC",
    "0001-12-31 23:59:59.999999+00 BC",
    "0001-01-01 00:00:00+00",
    "0999-12-31 23:59:59.9+00",
    "1000-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "10000-01-01 00:00:00+00",
    "294276-12-31 23:59:59.999999+00",
    "2024-01-01 00:00:00+00",
    "2024-01-01 00:00:00.000001+00",
    "2024-01-01 00:00:00.00001+00",
    "2024-01-01 00:00:00.1+00",
    "2024-01-01 00:00:00.12+00",
    "2024-01-01 00:00:00.5+00",
    "2024-01-01 00:00:01+00",
    "2024-02-29 23:59:59.999999+00",
    "1900-02-28 12:00:00+00",
]
VALUES = {
    "timestamptz": (_RANDOM_INSTANTS, EDGE_INSTANTS),
    "timestamp": (
        _RANDOM_INSTANTS.replace("SELECT ", "SELECT (", 1).replace(
            "\nFROM", ")::timestamp\nFROM", 1
        ),
        [e.replace("+00", "") for e in EDGE_INSTANTS],
    ),
    "date": (
        "SELECT date '4713-01-01 BC' + (random() * 2140000000)::int FROM generate_series(1, 3000)",
        [
            "-infinity",
            "infinity",
            "4713-01-01 BC",
            "0001-01-01 BC",
            "0001-01-01",
            "10000-01-01",
            "5874897-12-31",
            "2000-02-29",
            "1999-12-31",
        ],
    ),
    "int8": (
        "SELECT (random() * 2e18 - 1e18)::int8 FROM generate_series(1, 3000)",
        ["-9223372036854775808", "9223372036854775807", "0", "-1"],
    ),
    "int4": ("SELECT (random() * 4e9 - 2e9)::int4 FROM generate_series(1, 1000)", ["0"]),
    "int2": ("SELECT g::int2 FROM generate_series(-32768, 32767, 97) g", ["32767"]),
    "oid": ("SELECT (random() * 4e9)::int8::oid FROM generate_series(1, 1000)", ["4294967295"]),
    "text": (
        "SELECT md5(g::text) || chr(9) || chr(92) || chr(10) || g FROM generate_series(1, 1000) g",
        ["", "a", "A", "ä", "Z", "zz", "tab\there", "back\\slash", "new\nline", "\x01", "ü"],
    ),
    "varchar": ("SELECT md5(g::text)::varchar FROM generate_series(1, 500) g", ["Ä", "a"]),
    "uuid": ("SELECT gen_random_uuid() FROM generate_series(1, 1000)", []),
    "bytea": (
        "SELECT decode(md5(g::text), 'hex') FROM generate_series(1, 500) g",
        ["\\x", "\\x00", "\\xff", "\\x0001"],
    ),
    "bool": ("SELECT true UNION SELECT false", []),
    "citext": (
        "SELECT md5(g::text)::citext || 'X' FROM generate_series(1, 500) g",
        ["Alice", "ALICE2", "bob", "Bob2", "ärger", "ÄRGER2", "a_b", "A-B", "tab\there"],
    ),
}


def test_every_diffable_type_is_checked() -> None:
    assert set(VALUES) == DIFFABLE_KEY_TYPES


@pytest.mark.parametrize("key_type", sorted(VALUES))
def test_the_merge_orders_keys_as_the_backup_read_them(
    pg: PgServer, databases: list[str], key_type: str
) -> None:
    db = pg.create_database("keys")
    databases.append(db)
    random_sql, edges = VALUES[key_type]
    with pg.connect(db) as conn:
        if key_type == "citext":
            conn.execute("CREATE EXTENSION citext")
        conn.execute(f"CREATE TABLE k (v {key_type} PRIMARY KEY)")
        conn.execute(f"INSERT INTO k ({random_sql}) ON CONFLICT DO NOTHING")
        for edge in edges:
            conn.execute("INSERT INTO k VALUES (%s) ON CONFLICT DO NOTHING", (edge,))
        count = conn.execute("SELECT count(*) FROM k").fetchone()
    key = KeyColumn(name="v", type=key_type)
    lines = source_rows(pg, db, f"SELECT _t.v FROM public.k AS _t ORDER BY {order_by([key])}")
    assert count is not None and len(lines) == count[0] > 1
    parse = key_parser(key_type)
    keys = [parse(line.rstrip(b"\n")) for line in lines]
    disorder = [
        (a, b) for a, b, x, y in zip(lines, lines[1:], keys, keys[1:], strict=False) if not x < y
    ]
    assert not disorder, f"{key_type}: {disorder[:3]}"
