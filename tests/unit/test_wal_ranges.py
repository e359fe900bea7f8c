"""The block ranges an incremental reads in a large table from its WAL summaries (no server):
neighbours merged, a bounded number of TID range scans, the whole table when most of it was
written, and the SQL of those scans."""

from __future__ import annotations

from managed_backups.shared.dataplane.manifest import KeyColumn
from managed_backups.shared.dataplane.postgres_walsummary import (
    lsn_text,
    read_ranges,
    tid_ranges_sql,
)


def test_nearby_ranges_are_read_as_one_and_far_ones_apart() -> None:
    assert read_ranges(((3, 3), (10, 12), (500, 501)), 1000) == ((3, 12), (500, 501))
    assert read_ranges(((500, 501), (3, 3)), 1000, gap=0) == ((3, 3), (500, 501))
    assert read_ranges((), 1000) == ()


def test_an_open_range_swallows_what_follows_it() -> None:
    # a limit block: everything from block 800 on was cut and may have been written again
    assert read_ranges(((100, 100), (800, None), (900, 950)), 1000) == ((100, 100), (800, None))
    assert read_ranges(((790, 795), (800, None)), 1000) == ((790, None),)


def test_at_most_so_many_scans_the_nearest_merged_first() -> None:
    written = ((0, 0), (100, 100), (110, 110), (400, 400), (1000, 1000))  # gaps 99, 9, 289, 599
    assert read_ranges(written, 10_000, gap=0, most=3) == ((0, 110), (400, 400), (1000, 1000))
    assert read_ranges(written, 10_000, gap=0, most=4) == (
        (0, 0),
        (100, 110),
        (400, 400),
        (1000, 1000),
    )
    assert read_ranges(written, 10_000, gap=0, most=1) == ((0, 1000),)


def test_most_of_the_table_written_reads_it_whole() -> None:
    assert read_ranges(((0, 499),), 1000) == ((0, 499),)
    assert read_ranges(((0, 500),), 1000) is None
    assert read_ranges(((400, None),), 1000) is None
    assert read_ranges(((0, 0),), 0) is None  # statistics of an empty table: read it


def test_the_scans_sql() -> None:
    key = [KeyColumn(name="id", type="int4")]
    one = tid_ranges_sql('"s"."t"', ["id", "v"], key, "x", ((4, 6),))
    assert one == (
        'SELECT _t."id", _t."v" FROM ONLY "s"."t" AS _t WHERE'
        " _t.ctid >= '(4,0)'::tid AND _t.ctid < '(7,0)'::tid AND x ORDER BY _t.\"id\""
    )
    two = tid_ranges_sql('"t"', ["id"], key, "x", ((0, 0), (9, None)))
    assert two == (
        'SELECT _t."id" FROM (SELECT _t."id" FROM ONLY "t" AS _t WHERE'
        " _t.ctid >= '(0,0)'::tid AND _t.ctid < '(1,0)'::tid AND x UNION ALL"
        ' SELECT _t."id" FROM ONLY "t" AS _t WHERE _t.ctid >= \'(9,0)\'::tid AND x)'
        ' AS _t ORDER BY _t."id"'
    )


def test_wal_positions_print_as_postgresql_does() -> None:
    assert lsn_text(0) == "0/0"
    assert lsn_text((0x1A << 32) + 0x2B3C) == "1A/2B3C"
