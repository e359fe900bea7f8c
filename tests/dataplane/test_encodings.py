"""Every encoding PostgreSQL offers as a database encoding backs up and restores exactly.

One throw-away server holds a database in each server encoding (the list is checked against
the server: every other encoding name is refused as a database encoding). Each holds a
table with a text key and rows of every non-ASCII character the encoding can represent (from
a set of Latin, Cyrillic, Greek, Hebrew, Arabic, Thai, CJK and Korean characters; SQL_ASCII
holds raw bytes that are valid in no particular encoding, and UTF-8 text), and a table whose
name is non-ASCII where the encoding allows it. One full backup of the cluster (rows through
psycopg and packed small tables), then keys updated, deleted and re-inserted and an
incremental read through ``psql`` (``psql_min_bytes=0``); each database of the chain is
restored by the restore service's path (a DATABASE restore) and its rows compared with the
source's, byte for byte in the database's encoding. By default the chain is restored (its
full's streams merged with the incremental's: both paths); ``MANAGED_BACKUPS_ENCODINGS=all``
restores the full alone too (twice the restores: about 30 s more).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest, TableMode
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.postgres import PostgresAdapter
from managed_backups.shared.dataplane.restore_plan import ClusterAccess, RestorePlan, execute_plan
from tests.infra.postgres import LocalPostgres

pytestmark = pytest.mark.integration

SERVER_ENCODINGS = (
    "SQL_ASCII",
    "EUC_JP",
    "EUC_CN",
    "EUC_KR",
    "EUC_TW",
    "EUC_JIS_2004",
    "UTF8",
    "MULE_INTERNAL",
    "LATIN1",
    "LATIN2",
    "LATIN3",
    "LATIN4",
    "LATIN5",
    "LATIN6",
    "LATIN7",
    "LATIN8",
    "LATIN9",
    "LATIN10",
    "WIN1256",
    "WIN1258",
    "WIN866",
    "WIN874",
    "KOI8R",
    "WIN1251",
    "WIN1252",
    "ISO_8859_5",
    "ISO_8859_6",
    "ISO_8859_7",
    "ISO_8859_8",
    "WIN1250",
    "WIN1253",
    "WIN1254",
    "WIN1255",
    "WIN1257",
    "KOI8U",
)
CANDIDATES = "éßøÿŁőŠžĀ€ЖжΩαאعกếŞğıš漢字アあ한"
SQL_ASCII_BYTES = (b"\xe9t\xe9", b"\xff\xfe", "ünï".encode(), b"caf\xe9")


def database_name(encoding: str) -> str:
    return f"enc_{encoding.lower()}"


@dataclass
class Encoded:
    encoding: str
    values: list[bytes]
    """Non-ASCII values in the database's encoding."""
    odd_table: bytes | None = None
    """A non-ASCII table name in the database's encoding (``None``: none representable)."""
    expected: list[dict[bytes, tuple[int, str]]] = field(default_factory=list)


@dataclass
class Cluster:
    pg: LocalPostgres
    store: ObjectStore
    databases: dict[str, Encoded]
    chain: list[Manifest]


def representable(conn: psycopg.Connection[Any], encoding: str) -> list[bytes]:
    """The candidate characters ``encoding`` can represent, in it (asked of the server)."""
    if encoding == "SQL_ASCII":
        return list(SQL_ASCII_BYTES)
    # No conversion between UTF-8 and MULE_INTERNAL: through LATIN1, which converts to both.
    through = "LATIN1" if encoding == "MULE_INTERNAL" else None
    out = []
    for ch in CANDIDATES:
        try:
            if through:
                sql = "SELECT convert(convert_to(%s, %s), %s, %s)"
                row = conn.execute(sql, (ch, through, through, encoding)).fetchone()
            else:
                row = conn.execute("SELECT convert_to(%s, %s)", (ch, encoding)).fetchone()
        except psycopg.Error:
            continue
        assert row is not None
        out.append(bytes(row[0]))
    return out


def text_of(raw: bytes) -> str:
    """SQL for the text whose bytes in the database's encoding are ``raw``."""
    return f"convert_from('\\x{raw.hex()}'::bytea, current_setting('server_encoding'))"


def connect(pg: LocalPostgres, db: str) -> psycopg.Connection[Any]:
    """A session without conversion (text comes back as the database's bytes)."""
    return psycopg.connect(pg.url_for(db), autocommit=True, client_encoding="SQL_ASCII")


def digest(pg: LocalPostgres, db: str, table: bytes) -> tuple[int, str]:
    """(rows, md5 of every row's text in the database's own encoding, in key byte order),
    computed by the server: nothing is converted on its way to the client."""
    with connect(pg, db) as conn:
        relation = conn.execute(
            "SELECT quote_ident(c.relname) FROM pg_class c WHERE c.relkind = 'r'"
            " AND c.relnamespace = 'public'::regnamespace"
            " AND convert_to(c.relname, current_setting('server_encoding')) = %s",
            (table,),
        ).fetchone()
        assert relation is not None, f"{db}: no table {table!r}"
        row = conn.execute(
            b"SELECT count(*), md5(coalesce(string_agg(convert_to(t::text,"
            b" current_setting('server_encoding')), '\\x0a'::bytea ORDER BY t.k COLLATE \"C\"),"
            b" ''::bytea)) FROM public." + bytes(relation[0]) + b" t"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def tables_of(item: Encoded) -> list[bytes]:
    return [b"t"] + ([item.odd_table] if item.odd_table else [])


def record(cluster: Cluster) -> None:
    for name, item in cluster.databases.items():
        item.expected.append({t: digest(cluster.pg, name, t) for t in tables_of(item)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("encodings")
    with LocalPostgres() as pg:
        store = ObjectStore((tmp / "store").as_uri())
        databases: dict[str, Encoded] = {}
        with psycopg.connect(pg.url, autocommit=True) as conn:
            for encoding in SERVER_ENCODINGS:
                name = database_name(encoding)
                conn.execute(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING {encoding!r}'
                    " LC_COLLATE 'C' LC_CTYPE 'C'"
                )
                values = representable(conn, encoding)
                databases[name] = Encoded(encoding, values)
        for name, item in databases.items():
            with connect(pg, name) as conn:
                conn.execute("CREATE TABLE t (k text PRIMARY KEY, v text, n int)")
                rows = [f"({text_of(v)}, {text_of(v * 3)}, {i})" for i, v in enumerate(item.values)]
                rows += ["('plain', 'ascii', -1)", "('zz', NULL, -2)"]
                conn.execute(f"INSERT INTO t VALUES {', '.join(rows)}")
                multi = [v for v in item.values if len(v) > 1 or v[0] >= 0x80]
                if multi and item.encoding not in ("SQL_ASCII", "MULE_INTERNAL"):
                    odd = b"t_" + multi[0]
                    conn.execute(
                        "DO $$ BEGIN EXECUTE format('CREATE TABLE %I (k text PRIMARY KEY, v text)',"
                        f" {text_of(odd)}); EXECUTE format('INSERT INTO %I VALUES (%L, %L)',"
                        f" {text_of(odd)}, {text_of(multi[0])}, {text_of(multi[-1])}); END $$"
                    )
                    item.odd_table = odd
        adapter = PostgresAdapter(pg.dsn_for(), password=pg.password)
        full = adapter.full_backup(BackupRequest(store, "enc", "full"))
        result = Cluster(pg, store, databases, [full])
        record(result)
        for name, item in databases.items():
            with connect(pg, name) as conn:
                first, last = item.values[0], item.values[-1]
                conn.execute(
                    f"UPDATE t SET v = {text_of(last)}, n = n + 100 WHERE k = {text_of(first)}"
                )
                conn.execute(f"DELETE FROM t WHERE k = {text_of(last)} OR k = 'zz'")
                conn.execute(
                    f"INSERT INTO t VALUES ({text_of(last)}, 'back', 7), ('new', {text_of(first)}, 8)"
                )
        psql = PostgresAdapter(pg.dsn_for(), password=pg.password, psql_min_bytes=0)
        result.chain.append(
            psql.incremental_backup(BackupRequest(store, "enc", "incremental"), full)
        )
        record(result)
        yield result


def test_the_list_is_every_server_encoding(cluster: Cluster) -> None:
    """The fixture created a database in each encoding of the list; every other encoding name
    the server knows is refused as a database encoding (a client-only encoding)."""
    with psycopg.connect(cluster.pg.url, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT pg_encoding_to_char(i) FROM generate_series(0, 63) i"
                " WHERE pg_encoding_to_char(i) <> ''"
            ).fetchall()
        ]
        created = {
            str(r[0])
            for r in conn.execute(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname LIKE 'enc\\_%'"
            ).fetchall()
        }
        assert created == set(SERVER_ENCODINGS)
        for name in set(names) - created:
            with pytest.raises(psycopg.errors.UndefinedObject, match="not a valid encoding"):
                conn.execute(
                    f'CREATE DATABASE "probe" TEMPLATE template0 ENCODING {name!r}'
                    " LC_COLLATE 'C' LC_CTYPE 'C'"
                )


@pytest.mark.parametrize("encoding", SERVER_ENCODINGS)
def test_a_database_in_each_encoding_restores_exactly(cluster: Cluster, encoding: str) -> None:
    name = database_name(encoding)
    item = cluster.databases[name]
    assert item.values, f"{encoding}: no non-ASCII character to test with"
    assert cluster.chain[-1].table(name, "public", "t") is not None
    entry = cluster.chain[-1].table(name, "public", "t")
    assert entry is not None and entry.mode == TableMode.DELTA, entry
    for upto in (1, 2) if os.environ.get("MANAGED_BACKUPS_ENCODINGS") == "all" else (2,):
        target = f"restored_{uuid.uuid4().hex[:8]}"
        plan = RestorePlan("DATABASE", name, target, uuid.uuid4())
        access = ClusterAccess(cluster.pg.dsn_for(), password=cluster.pg.password)
        execute_plan(cluster.store, cluster.chain[:upto], plan, access, lambda n: None)
        got = {t: digest(cluster.pg, target, t) for t in tables_of(item)}
        with psycopg.connect(cluster.pg.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{target}"')
        assert got == item.expected[upto - 1], f"{encoding} at step {upto}"
