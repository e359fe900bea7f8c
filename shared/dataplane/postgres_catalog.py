"""What a backup reads of a PostgreSQL catalog, in set-based queries.

Every query here runs in the database's snapshot (the coordinator's repeatable-read
transaction), so the tables, their definitions and their fingerprints are those the rows are
read at. Whatever the number of tables, a database costs a fixed number of queries: the
tables (:func:`read_tables`: columns, key, definition), the type closure of every column type
at once, the description of every type in those closures, the sequences (in one query, the
few never called in batches), and the
exact sizes (:func:`read_sizes`, read while the rows stream).

A table's **fingerprint** covers its oid, kind, access method, columns (names, types,
collations, generation, not-null, enum labels) and key, and the columns' whole type closure
(array elements, domain bases, composite attributes, range subtypes, multiranges, at any
depth: each type's name, kind, base, typmod, collation, enum labels, attributes and the
version of the extension owning it). A change of it stores the table whole in the next
incremental (see :mod:`.postgres_snapshots`). A closure holding a ``reg*`` type is flagged:
such a column prints other objects' current names, which no fingerprint can follow.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from .errors import pg_error
from .manifest import (
    Catalog,
    CatalogDatabase,
    CatalogSchema,
    CatalogTable,
    DatabaseBackup,
    DatabaseLocale,
    DatabaseProperties,
    KeyColumn,
    MatView,
    RoleSettings,
    SecurityLabel,
    SequenceValue,
)
from .postgres_snapshots import Retake
from .sql import DIFFABLE_KEY_TYPES, quote_ident

__all__ = [
    "DATABASES_SQL",
    "SKIPPED_DATABASES_SQL",
    "TABLE_DEFINITION_VERSION",
    "DbInfo",
    "Table",
    "TableStates",
    "catalog_schemas",
    "live_catalog",
    "locale_sql",
    "read_database_size",
    "read_large_object_count",
    "read_locale",
    "read_matviews",
    "read_properties",
    "read_schema_fingerprint",
    "read_schemas",
    "read_sequences",
    "read_sizes",
    "read_table_states",
    "read_tables",
]


# A database's size walks its directory (thousands of files on a schema of thousands of
# tables): it is read beside the catalog, not before the snapshots (:func:`read_database_size`).
DATABASES_SQL = """
SELECT d.datname, pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       has_database_privilege(d.oid, 'CONNECT'), d.oid::int8, d.datistemplate
FROM pg_database d
WHERE d.datallowconn
ORDER BY d.datname
"""

# Databases no backup can read: listed in the catalog with the reason, never left out silently.
SKIPPED_DATABASES_SQL = """
SELECT d.datname FROM pg_database d WHERE NOT d.datallowconn ORDER BY d.datname
"""

_PROPERTIES_SQL = """
SELECT pg_get_userbyid(d.datdba), d.datacl::text, d.datconnlimit,
       shobj_description(d.oid, 'pg_database'),
       ARRAY(SELECT coalesce(r.rolname, '') || chr(1) || array_to_string(s.setconfig, chr(2))
             FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
             WHERE s.setdatabase = d.oid ORDER BY 1),
       (SELECT t.spcname::text FROM pg_tablespace t WHERE t.oid = d.dattablespace),
       ARRAY(SELECT l.provider || chr(1) || l.label FROM pg_shseclabel l
             WHERE l.objoid = d.oid AND l.classoid = 'pg_database'::regclass ORDER BY 1)
FROM pg_database d WHERE d.datname = current_database()
"""

_LOCALE_PROVIDERS: dict[str, Literal["libc", "icu", "builtin"]] = {
    "c": "libc",
    "i": "icu",
    "b": "builtin",
}


def locale_sql(server_version_num: int) -> str:
    """The query of the current database's locale (provider letter, the provider's locale,
    ICU rules, collation version) on a server of ``server_version_num``: ``datlocprovider``,
    ``daticulocale`` and ``datcollversion`` exist from 15, ``daticurules`` from 16, and 17
    renamed ``daticulocale`` to ``datlocale`` (the builtin provider's locale too); before 15
    every database is libc."""
    if server_version_num >= 170000:
        columns = "d.datlocprovider::text, d.datlocale, d.daticurules, d.datcollversion"
    elif server_version_num >= 160000:
        columns = "d.datlocprovider::text, d.daticulocale, d.daticurules, d.datcollversion"
    elif server_version_num >= 150000:
        columns = "d.datlocprovider::text, d.daticulocale, NULL::text, d.datcollversion"
    else:
        columns = "'c'::text, NULL::text, NULL::text, NULL::text"
    return f"SELECT {columns} FROM pg_database d WHERE d.datname = current_database()"


_MATVIEWS_SQL = """
SELECT n.nspname, c.relname, c.relispopulated FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""

_SCHEMAS_SQL = """
SELECT n.nspname FROM pg_namespace n
WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                  AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY n.nspname
"""

_HEAP_BYTES = """CASE WHEN c.reltuples < 0 THEN coalesce(pg_relation_size(c.oid), 0)
            ELSE c.relpages::int8 * current_setting('block_size')::int8 END"""
_TABLES_FROM = """FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam
"""
_TABLES_WHERE = """WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u')
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND (NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
       OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
ORDER BY n.nspname, c.relname
"""

_TABLES_SQL = f"""
SELECT c.oid::int8, n.nspname, c.relname,
       {_HEAP_BYTES},
       NULL::int8,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' ORDER BY a.attnum),
       ARRAY(SELECT a.attname::text FROM unnest(pk.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord),
       ARRAY(SELECT (CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END)::text
             FROM unnest(pk.conkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
             ORDER BY k.ord),
       (SELECT string_agg(concat_ws(':', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                                    a.attcollation, a.attgenerated, a.attnotnull,
                                    (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                     FROM pg_enum e
                                     WHERE e.enumtypid IN (a.atttypid, t.typbasetype, t.typelem))),
                          '|' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       coalesce(am.amname, 'heap'), c.relkind::text, c.relfilenode::int8,
       ARRAY(SELECT DISTINCT a.atttypid::int8 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT coalesce(x.extcondition[array_position(x.extconfig, c.oid)], '')
        FROM pg_extension x WHERE c.oid = ANY (x.extconfig) LIMIT 1)
{_TABLES_FROM}LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
{_TABLES_WHERE}"""

# The same tables, without their definitions: what changes without DDL (the heap's size, the
# storage after a TRUNCATE or rewrite, checked under the locks) and the access method.
_TABLE_STATES_SQL = f"""
SELECT c.oid::int8, n.nspname, c.relname, {_HEAP_BYTES}, coalesce(am.amname, 'heap'),
       c.relfilenode::int8
{_TABLES_FROM}{_TABLES_WHERE}"""

_COLUMN_TYPES_SQL = """
SELECT a.attrelid::int8, array_agg(DISTINCT a.atttypid::int8) FROM pg_attribute a
WHERE a.attrelid = ANY (%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY a.attrelid
"""

TABLE_DEFINITION_VERSION = 1
"""What a table's fingerprint is made of (:func:`table_from_row`). The schema fingerprint
includes it: a change of the material must bump it, or an incremental would reuse definitions
(see :class:`TableStates`) fingerprinted the old way."""

# The type closure of every column type of the database, in one set-based pass (a recursive
# query per table costs a millisecond each: seconds on a multi-tenant schema of thousands of
# tables). Per root type: every type reachable through array elements, domain bases, composite
# attributes, range subtypes and multirange ranges, to depth 32. Multiranges exist from
# PostgreSQL 14 (``pg_range.rngmultitypid``): on 13 that step is left out (see
# :func:`type_closures_sql`).
_MULTIRANGE_STEP = """
    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid"""
_TYPE_CLOSURES_SQL = """
WITH RECURSIVE roots AS (
  SELECT DISTINCT root FROM unnest(%s::oid[]) AS r(root)
), closure(root, typ, depth) AS (
  SELECT root, root, 0 FROM roots
  UNION
  SELECT cl.root, x.typ, cl.depth + 1 FROM closure cl JOIN pg_type t ON t.oid = cl.typ
  CROSS JOIN LATERAL (
    SELECT t.typelem WHERE t.typelem <> 0
    UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
    UNION ALL SELECT a2.atttypid FROM pg_attribute a2
              WHERE t.typrelid <> 0 AND a2.attrelid = t.typrelid AND a2.attnum > 0
                AND NOT a2.attisdropped
    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid{multirange}
  ) AS x(typ)
  WHERE cl.depth < 32
)
SELECT root::int8, array_agg(DISTINCT typ::int8) FROM closure GROUP BY root
"""

# What a type contributes to a fingerprint: name, kind, base, typmod, not-null, collation, enum
# labels, composite attributes, the owning extension's version; and whether it is a ``reg*``
# type (whose text follows other objects' names).
_TYPE_DESCRIPTIONS_SQL = """
SELECT t.oid::int8,
       concat_ws(':', t.oid, format_type(t.oid, NULL), t.typtype,
                 t.typbasetype, t.typtypmod, t.typnotnull, t.typcollation,
                 (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = t.oid),
                 (SELECT string_agg(a3.attname || ' ' || a3.atttypid || ' ' || a3.atttypmod
                                    || ' ' || a3.attcollation, ',' ORDER BY a3.attnum)
                  FROM pg_attribute a3 WHERE t.typrelid <> 0 AND a3.attrelid = t.typrelid
                    AND a3.attnum > 0 AND NOT a3.attisdropped),
                 (SELECT string_agg(x.extname || ' ' || x.extversion, ',')
                  FROM pg_depend dp JOIN pg_extension x ON x.oid = dp.refobjid
                  WHERE dp.classid = 'pg_type'::regclass AND dp.objid = t.oid
                    AND dp.deptype = 'e')),
       t.typnamespace = 'pg_catalog'::regnamespace
         AND t.typname IN ('regclass', 'regtype', 'regproc', 'regprocedure', 'regoper',
                           'regoperator', 'regconfig', 'regdictionary', 'regnamespace',
                           'regrole', 'regcollation')
FROM pg_type t WHERE t.oid = ANY (%s::oid[])
"""


# Exact sizes open every relation (its table, indexes, TOAST): about a millisecond per table
# on a fresh connection. They are read while the rows stream (the coordinator is idle then);
# planning uses the heap size from the statistics, as pg_dump -j orders its tables by relpages.
_TABLE_SIZES_SQL = """
SELECT x.oid::int8, coalesce(pg_total_relation_size(x.oid), 0)
FROM unnest(%s::oid[]) AS x(oid)
"""

# Every sequence with its value when it was called (``pg_sequence_last_value``: NULL when
# not): one set-based pass, instead of a scan of each sequence (thousands on a schema where
# every table has an identity column).
_SEQUENCES_SQL = """
SELECT n.nspname, c.relname, pg_sequence_last_value(c.oid) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
"""
_NO_RELATION_OID = re.compile(r"could not open relation with OID \d+")


@dataclass(frozen=True)
class DbInfo:
    name: str
    encoding: str
    collate: str
    ctype: str
    oid: int
    is_template: bool


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    heap_bytes: int
    """The heap's size from the statistics (``relpages``; exact when never analysed): it
    orders the streams and picks their transport, never what is read."""
    columns: list[str]
    key_columns: list[KeyColumn]
    fingerprint: str
    access_method: str
    text_follows_names: bool = False
    """A column's type closure holds a ``reg*`` type: its text follows other objects' names."""
    extension_condition: str | None = None
    """An extension configuration table: the ``WHERE`` clause of the rows ``pg_dump`` keeps
    (``""``: all); ``None`` for ordinary tables."""

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    def unsupported_key(self) -> str | None:
        if not self.key_columns:
            return "no primary key"
        for kc in self.key_columns:
            if kc.name not in self.columns:
                return f"primary key on generated column {kc.name}"
            if kc.type not in DIFFABLE_KEY_TYPES:
                return f"primary key type {kc.type} not supported for incrementals"
        return None


def read_tables(conn: psycopg.Connection[Any]) -> tuple[list[int], list[Table]]:
    """The tables to back up (their storage's ``relfilenode`` and :class:`Table`), in three
    set-based queries whatever the table count: the tables, the type closures of their column
    types, and what each type of those closures contributes to the fingerprints."""
    rows = conn.execute(_TABLES_SQL).fetchall()
    closures = _closure_texts(conn, [[int(t) for t in r[12]] for r in rows])
    tables = [table_from_row(row, closure) for row, closure in zip(rows, closures, strict=True)]
    return [int(r[11]) for r in rows], tables


def type_closures_sql(server_version_num: int) -> str:
    """The type-closure query for a server: with the multirange step from 14 on (13 has no
    multiranges, so leaving it out there loses nothing)."""
    return _TYPE_CLOSURES_SQL.format(
        multirange=_MULTIRANGE_STEP if server_version_num >= 140000 else ""
    )


def _closure_texts(
    conn: psycopg.Connection[Any], column_types: Sequence[Sequence[int]]
) -> list[str]:
    """For each table (given its column types), its columns' type closure: one description
    per type in oid order, ``;reg`` appended when a ``reg*`` type is in it."""
    roots = sorted({t for types in column_types for t in types})
    sql = type_closures_sql(int(conn.info.server_version))
    closures = {
        int(root): [int(t) for t in types] for root, types in conn.execute(sql, (roots,)).fetchall()
    }
    all_types = sorted({t for types in closures.values() for t in types})
    described = {
        int(oid): (str(text), bool(is_reg))
        for oid, text, is_reg in conn.execute(_TYPE_DESCRIPTIONS_SQL, (all_types,)).fetchall()
    }
    # Tables of a multi-tenant schema share their column types: one closure text per set.
    texts: dict[frozenset[int], str] = {}
    out = []
    for types_of in column_types:
        key = frozenset(types_of)
        closure = texts.get(key)
        if closure is None:
            types = sorted({t for root in key for t in closures.get(root, ())})
            parts = [described[t] for t in types if t in described]
            closure = ";".join(text for text, _reg in parts)
            if parts and any(reg for _text, reg in parts):
                closure += ";reg"
            texts[key] = closure
        out.append(closure)
    return out


@dataclass(frozen=True)
class TableStates:
    """The tables of a database without their definitions (:func:`read_table_states`), for an
    incremental whose schema fingerprint equals the previous backup's: the catalogs hold the
    same row versions, so every table's definition (columns, key, fingerprint, extension
    condition) is the one the previous manifest recorded, and :func:`read_tables`' query (the
    longest catalog read on a schema of thousands of tables) need not run again."""

    rows: list[tuple[Any, ...]]
    closures: list[str]

    def tables(self, previous: DatabaseBackup) -> tuple[list[int], list[Table]] | None:
        """``(relfilenodes, tables)`` as :func:`read_tables` gives them, the definitions from
        ``previous``; ``None`` when a table has no entry there under its oid and name."""
        entries = {t.oid: t for t in previous.tables}
        tables = []
        for (oid, schema, name, heap, am, _node), closure in zip(
            self.rows, self.closures, strict=True
        ):
            entry = entries.get(int(oid))
            if entry is None or (entry.schema_name, entry.name) != (schema, name):
                return None
            tables.append(
                Table(
                    oid=int(oid),
                    schema=str(schema),
                    name=str(name),
                    heap_bytes=int(heap),
                    columns=list(entry.columns),
                    key_columns=list(entry.key_columns),
                    fingerprint=entry.fingerprint,
                    access_method=str(am),
                    text_follows_names=closure.endswith(";reg"),
                    extension_condition=entry.extension_condition,
                )
            )
        return [int(r[5]) for r in self.rows], tables


def read_table_states(conn: psycopg.Connection[Any]) -> TableStates:
    """The tables' sizes, storage and access methods, and their columns' type closures (for
    the ``reg*`` check, which the previous manifest does not record)."""
    rows = conn.execute(_TABLE_STATES_SQL).fetchall()
    oids = [int(r[0]) for r in rows]
    types = {
        int(rel): [int(t) for t in of]
        for rel, of in conn.execute(_COLUMN_TYPES_SQL, (oids,)).fetchall()
    }
    return TableStates(rows, _closure_texts(conn, [types.get(oid, []) for oid in oids]))


def table_from_row(row: Sequence[Any], closure: str) -> Table:
    """``closure``: the columns' type closure, one description per type in oid order
    (``;reg`` appended when a ``reg*`` type is in it)."""
    oid, schema, name, heap, _total, cols, pk_cols, pk_types, coldef, am, relkind = row[:11]
    material = (
        f"{oid}|{relkind}|{am}|{coldef}|pk:{','.join(pk_cols)}:{','.join(pk_types)}|types:{closure}"
    )
    return Table(
        oid=int(oid),
        schema=str(schema),
        name=str(name),
        heap_bytes=int(heap),
        columns=[str(c) for c in cols],
        key_columns=[
            KeyColumn(name=str(c), type=str(t)) for c, t in zip(pk_cols, pk_types, strict=True)
        ],
        fingerprint=hashlib.sha256(material.encode()).hexdigest(),
        access_method=str(am),
        text_follows_names=closure.endswith(";reg"),
        extension_condition=None if row[13] is None else str(row[13]),
    )


def read_sequences(conn: psycopg.Connection[Any]) -> list[SequenceValue]:
    """``last_value`` and ``is_called`` of every sequence. Sequences are not transactional:
    this is their state now, as ``pg_dump`` reads it.

    One query reads the value of every called sequence (``pg_sequence_last_value``); the
    others (never called, ``RESTART``, ``setval(..., false)``: ``pg_sequences`` and that
    function hide their value) are read from the sequence itself, in batches. A sequence
    dropped since the snapshot raises :class:`Retake`."""
    try:
        listed = conn.execute(_SEQUENCES_SQL).fetchall()
    except psycopg.errors.InternalError as exc:
        # pg_sequence_last_value opens the sequence by oid: dropped since the snapshot.
        if _NO_RELATION_OID.search(str(exc)):
            raise Retake(f"a sequence was dropped: {str(exc).splitlines()[0]}") from None
        raise
    names = [(str(schema), str(name)) for schema, name, _value in listed]
    values = {n: (int(r[2]), True) for n, r in zip(names, listed, strict=True) if r[2] is not None}
    uncalled = [n for n in names if n not in values]
    for start in range(0, len(uncalled), 200):
        batch = uncalled[start : start + 200]
        sql = " UNION ALL ".join(
            f"SELECT {i}, last_value, is_called FROM {quote_ident(a)}.{quote_ident(b)}"
            for i, (a, b) in enumerate(batch)
        )
        try:
            read = conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable as exc:  # dropped since the snapshot
            raise Retake(f"a sequence was dropped: {str(exc).splitlines()[0]}") from None
        for i, value, called in read:
            values[batch[int(i)]] = (int(value), bool(called))
    return [
        SequenceValue(schema_name=a, name=b, last_value=values[a, b][0], is_called=values[a, b][1])
        for a, b in names
    ]


def read_locale(conn: psycopg.Connection[Any], server_version_num: int) -> DatabaseLocale:
    """The current database's locale provider and what goes with it (:func:`locale_sql`)."""
    row = conn.execute(locale_sql(server_version_num)).fetchone()
    assert row is not None
    provider, locale, rules, version = row
    return DatabaseLocale(
        provider=_LOCALE_PROVIDERS[str(provider)],
        locale=None if locale is None else str(locale),
        icu_rules=None if rules is None else str(rules),
        collation_version=None if version is None else str(version),
    )


def read_properties(conn: psycopg.Connection[Any]) -> DatabaseProperties:
    row = conn.execute(_PROPERTIES_SQL).fetchone()
    assert row is not None
    owner, acl, limit, comment, settings, tablespace, labels = row
    role_settings = []
    for item in settings:
        role, _sep, config = str(item).partition("\x01")
        role_settings.append(
            RoleSettings(role=role or None, settings=config.split("\x02") if config else [])
        )
    return DatabaseProperties(
        owner=str(owner),
        acl=None if acl is None else str(acl),
        connection_limit=int(limit),
        comment=None if comment is None else str(comment),
        settings=role_settings,
        tablespace=None if tablespace is None else str(tablespace),
        security_labels=[
            SecurityLabel(provider=p, label=label)
            for p, _sep, label in (str(item).partition("\x01") for item in labels)
        ],
    )


def read_sizes(conn: psycopg.Connection[Any], tables: Sequence[Table], db: str) -> dict[int, int]:
    """``pg_total_relation_size`` of every table, by oid (the tables are locked)."""
    try:
        rows = conn.execute(_TABLE_SIZES_SQL, ([t.oid for t in tables],)).fetchall()
    except psycopg.Error as exc:
        raise pg_error(exc, f"in database {db}: read table sizes") from None
    return {int(oid): int(size) for oid, size in rows}


def catalog_schemas(db: DatabaseBackup, schemas: list[str]) -> list[CatalogSchema]:
    by_schema: dict[str, list[CatalogTable]] = {s: [] for s in schemas}
    for t in db.tables:
        by_schema.setdefault(t.schema_name, []).append(
            CatalogTable(name=t.name, rows=t.live_rows, size_bytes=t.size_bytes)
        )
    return [CatalogSchema(name=s, tables=ts) for s, ts in sorted(by_schema.items())]


def read_schemas(conn: psycopg.Connection[Any]) -> list[str]:
    """The user schemas (extension-owned schemas left to ``CREATE EXTENSION``)."""
    return [str(r[0]) for r in conn.execute(_SCHEMAS_SQL).fetchall()]


def read_matviews(conn: psycopg.Connection[Any]) -> list[MatView]:
    """Materialized views and whether they are populated (a restore refreshes those)."""
    return [
        MatView(schema_name=str(a), name=str(b), populated=bool(c))
        for a, b, c in conn.execute(_MATVIEWS_SQL).fetchall()
    ]


def read_database_size(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def read_large_object_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def live_catalog(connect: Callable[..., psycopg.Connection[Any]]) -> Catalog:
    """The live catalog (row counts are the planner's estimates)."""
    with connect(step="connect") as conn:
        dbs = conn.execute(DATABASES_SQL).fetchall()
    out: list[CatalogDatabase] = []
    for name, *_rest in dbs:
        with connect(name, step=f"connect to database {name}") as conn:
            conn.execute("SET search_path = pg_catalog")
            conn.execute("SET jit = off")
            size = read_database_size(conn)
            schemas = [r[0] for r in conn.execute(_SCHEMAS_SQL).fetchall()]
            rows = conn.execute(
                "SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::int8,"
                " pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relpersistence IN ('p','u')"
                " AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"
                " ORDER BY 1, 2"
            ).fetchall()
        tables: dict[str, list[CatalogTable]] = {s: [] for s in schemas}
        for schema, table, est, tsize in rows:
            tables.setdefault(schema, []).append(
                CatalogTable(name=table, rows=int(est), size_bytes=int(tsize))
            )
        out.append(
            CatalogDatabase(
                name=name,
                table_count=len(rows),
                size_bytes=size,
                schemas=[CatalogSchema(name=s, tables=t) for s, t in sorted(tables.items())],
            )
        )
    return Catalog(databases=out)


# ---------------------------------------------------------------------------- schema fingerprint
_CATALOGS_SQL = """
SELECT c.relname::text, c.relisshared, has_table_privilege(c.oid, 'SELECT')
FROM pg_class c
WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'
ORDER BY c.relname
"""

_NOT_DUMPED_CATALOGS = frozenset({"pg_statistic", "pg_statistic_ext_data"})
"""Written by ``ANALYZE`` (every autovacuum run), never dumped by ``pg_dump`` 15."""

_IN_PLACE_SQL = {
    # Flags updated in place (no new row version) during CREATE/DROP INDEX CONCURRENTLY.
    "pg_index": "SELECT md5(string_agg(indexrelid::text || indisvalid::text || indisready::text"
    " || indislive::text, ',' ORDER BY indexrelid)) FROM pg_catalog.pg_index",
}
_SHARED_SQL = {
    # Names the dump prints (owners, grantees, tablespaces) live in shared catalogs.
    "pg_authid": "SELECT md5(string_agg(oid::text || ':' || rolname, ',' ORDER BY oid))"
    " FROM pg_catalog.pg_roles",
    "pg_tablespace": "SELECT md5(string_agg(oid::text || ':' || spcname, ',' ORDER BY oid))"
    " FROM pg_catalog.pg_tablespace",
    # The database's own properties, which the archive holds too (owner, ACL, connection limit,
    # settings, comment, security labels): its rows in the shared catalogs, by row version.
    "pg_database": "SELECT ctid::text || ':' || xmin::text FROM pg_catalog.pg_database"
    " WHERE datname = current_database()",
    "pg_db_role_setting": "SELECT md5(string_agg(ctid::text || ':' || xmin::text, ','"
    " ORDER BY ctid)) FROM pg_catalog.pg_db_role_setting WHERE setdatabase ="
    " (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
    "pg_shdescription": "SELECT md5(string_agg(ctid::text || ':' || xmin::text, ','"
    " ORDER BY ctid)) FROM pg_catalog.pg_shdescription WHERE objoid ="
    " (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
    "pg_shseclabel": "SELECT md5(string_agg(ctid::text || ':' || xmin::text, ','"
    " ORDER BY ctid)) FROM pg_catalog.pg_shseclabel WHERE objoid ="
    " (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
}
_SUBSCRIPTIONS_SQL = (
    "SELECT md5(string_agg(ctid::text || ':' || xmin::text, ',' ORDER BY ctid))"
    " FROM pg_catalog.pg_subscription WHERE subdbid ="
    " (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"
)
_USER_MAPPINGS_SQL = (
    "SELECT md5(string_agg(umid::text || ':' || srvid::text || ':' || umuser::text || ':'"
    " || coalesce(umoptions::text, ''), ',' ORDER BY umid)) FROM pg_catalog.pg_user_mappings"
)


def read_schema_fingerprint(
    conn: psycopg.Connection[Any], large_objects: int, server_version_num: int
) -> str | None:
    """A digest of everything ``pg_dump``'s schema archive is made of, in the snapshot: equal
    digests mean the archive would hold the same definitions, so an incremental reuses the
    previous archive instead of running ``pg_dump`` (on a schema of thousands of tables, the
    longest step of a backup). ``None`` when some of it cannot be read (the dump then runs).

    Every DDL statement writes catalog rows: a new row version (insert, update) has a new
    ``(ctid, xmin)`` and a deleted one disappears from the snapshot, so the set of ``(ctid,
    xmin)`` of every catalog of the database changes with any DDL, large-object write,
    comment, grant or security label. Not covered by that, and read as contents instead: the
    ``pg_index`` flags that ``CREATE``/``DROP INDEX CONCURRENTLY`` update in place, and the
    shared catalogs whose names the dump prints (roles, tablespaces; the database's own rows
    in ``pg_database``, ``pg_db_role_setting``, ``pg_shdescription`` and ``pg_shseclabel``
    and its subscriptions by row version, the latter when the role may read them: ``pg_dump``
    dumps them only for a superuser). Left out: ``pg_statistic`` and ``pg_statistic_ext_data`` (written by
    every ``ANALYZE``, not dumped), and the other in-place updates (``VACUUM``'s and
    ``ANALYZE``'s sizes and frozen xids in ``pg_class``, which the dump does not print). A
    false difference (a ``TRUNCATE``, a temporary table) only costs the dump.
    """
    parts: list[tuple[str, str]] = []
    try:
        # A catalog's rows are read in its physical order (a sort by ctid costs as much as the
        # rest): a plain sequential scan, neither joining another scan midway nor split
        # among parallel workers. Another order could only make the digest differ (the dump
        # then runs), never make two different catalogs equal.
        conn.execute("SET synchronize_seqscans = off")
        conn.execute("SET max_parallel_workers_per_gather = 0")
        catalogs = conn.execute(_CATALOGS_SQL).fetchall()
        for name, shared, readable in catalogs:
            name = str(name)
            if name in _NOT_DUMPED_CATALOGS:
                continue
            if shared:
                if name in _SHARED_SQL:
                    parts.append((name, _SHARED_SQL[name]))
                elif name == "pg_subscription" and readable:
                    parts.append((name, _SUBSCRIPTIONS_SQL))
                continue
            if not readable:
                if name == "pg_user_mapping":
                    parts.append((name, _USER_MAPPINGS_SQL))
                    continue
                if name == "pg_largeobject" and large_objects == 0:
                    continue
                return None
            parts.append(
                (
                    name,
                    "SELECT md5(string_agg(ctid::text || ':' || xmin::text, ','))"
                    f" FROM pg_catalog.{quote_ident(name)}",
                )
            )
            if name in _IN_PLACE_SQL:
                parts.append((f"{name} flags", _IN_PLACE_SQL[name]))
        sql = "SELECT " + ", ".join(f"({q})" for _n, q in parts)
        row = conn.execute(sql).fetchone()
    except psycopg.Error as exc:
        raise pg_error(exc, "read the schema fingerprint") from None
    assert row is not None
    digest = hashlib.sha256()
    digest.update(f"server={server_version_num}\n".encode())
    digest.update(f"tables={TABLE_DEFINITION_VERSION}\n".encode())
    for (name, _q), value in zip(parts, row, strict=True):
        digest.update(f"{name}={value}\n".encode())
    return digest.hexdigest()
