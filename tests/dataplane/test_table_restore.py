"""What a TABLE restore brings and what it refuses, against a real PostgreSQL.

A restored table comes back with everything ``pg_dump -t`` recreates for it (compared entry by
entry with the source's own ``pg_dump -t``: columns, defaults, constraints, indexes, triggers,
policies and the RLS flag, comments, grants, replica identity, storage settings, owner), with
what it needs that the target lacks (a domain, an enum, the functions its trigger and check
call) and its rows and sequence values. What the target has is used (a foreign key to one of
its tables, a default on one of its sequences); a conflicting definition, a partition or an
inheritance child without its parent are refused with the reason; whatever is left out is in
the result."""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.archive_toc import read_toc, read_toc_from
from managed_backups.shared.dataplane.engine import BackupRequest
from managed_backups.shared.dataplane.manifest import Manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_plan import (
    ClusterAccess,
    PlanError,
    RestoreOutcome,
    RestorePlan,
    TableRef,
    execute_plan,
    table_restore_objects,
)
from managed_backups.shared.dataplane.tools import find_pg_tool
from tests.restore_checks import table_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration

SETUP = """
CREATE ROLE {reader};
CREATE ROLE {gone};
CREATE DOMAIN public.year AS integer CONSTRAINT year_check CHECK (VALUE >= 1901 AND VALUE <= 2155);
CREATE TYPE public.rating AS ENUM ('G', 'PG', 'R');
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.updated := '2000-01-01'; RETURN NEW; END$$;
CREATE FUNCTION public.positive(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0';
CREATE TABLE public.films (
    id serial PRIMARY KEY, title text NOT NULL, released public.year, rating public.rating,
    length int CHECK (public.positive(length)), updated timestamptz, notes text);
ALTER TABLE public.films ALTER COLUMN notes SET STORAGE EXTERNAL;
ALTER TABLE public.films REPLICA IDENTITY FULL;
ALTER TABLE public.films ENABLE ROW LEVEL SECURITY;
CREATE POLICY short_only ON public.films USING (length < 200);
CREATE INDEX films_by_title ON public.films (lower(title));
CREATE TRIGGER films_touch BEFORE INSERT OR UPDATE ON public.films
  FOR EACH ROW EXECUTE FUNCTION public.touch();
COMMENT ON TABLE public.films IS 'what we show';
COMMENT ON COLUMN public.films.title IS 'its name';
GRANT SELECT ON public.films TO {reader};
GRANT UPDATE (notes) ON public.films TO {reader};
GRANT SELECT ON public.films TO {gone};
INSERT INTO public.films (title, released, rating, length)
  SELECT 'film ' || g, 1990 + g % 30, (ARRAY['G', 'PG', 'R'])[1 + g % 3]::public.rating, 90 + g % 60
  FROM generate_series(1, 200) g;
SELECT setval('public.films_id_seq', 500, false);
CREATE SEQUENCE public.shared_seq START 1000;
CREATE TABLE public.tickets (
    id int PRIMARY KEY, film_id int REFERENCES public.films,
    number bigint DEFAULT nextval('public.shared_seq'));
INSERT INTO public.tickets (id, film_id) SELECT g, g FROM generate_series(1, 50) g;
CREATE TABLE public.payments (id int, at date, amount numeric, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE public.payments_2023 PARTITION OF public.payments
  FOR VALUES FROM ('2023-01-01') TO ('2024-01-01') PARTITION BY RANGE (at);
CREATE TABLE public.payments_2023_h1 PARTITION OF public.payments_2023
  FOR VALUES FROM ('2023-01-01') TO ('2023-07-01');
CREATE TABLE public.payments_2023_h2 PARTITION OF public.payments_2023
  FOR VALUES FROM ('2023-07-01') TO ('2024-01-01');
CREATE TABLE public.payments_2024 PARTITION OF public.payments
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX payments_by_amount ON public.payments (amount);
INSERT INTO public.payments SELECT g, date '2023-01-01' + g, g FROM generate_series(1, 600) g;
CREATE TABLE public.animals (id int PRIMARY KEY, name text);
CREATE TABLE public.dogs (good bool) INHERITS (public.animals);
INSERT INTO public.dogs VALUES (1, 'rex', true);
"""
PAYMENTS = ["payments", "payments_2023", "payments_2023_h1", "payments_2023_h2", "payments_2024"]


@dataclass
class Source:
    pg: PgServer
    db: str
    store: ObjectStore
    chain: list[Manifest]
    access: ClusterAccess
    reader: str
    gone: str

    def plan(self, target: str, *tables: str, **kwargs: object) -> RestorePlan:
        return RestorePlan(
            kind="TABLE",
            source_database=self.db,
            target_database=target,
            job_id=uuid.uuid4(),
            tables=tuple(TableRef("public", t) for t in tables),
            **kwargs,  # type: ignore[arg-type]
        )

    def run(self, plan: RestorePlan) -> RestoreOutcome:
        return execute_plan(self.store, self.chain, plan, self.access, lambda n: None)

    def sql(self, db: str, query: str) -> list[tuple[object, ...]]:
        with self.pg.connect(db) as conn:
            return [tuple(r) for r in conn.execute(query).fetchall()]  # type: ignore[arg-type]

    def dump_table(self, db: str, table: str) -> list[str]:
        """``pg_dump -t``'s lines for the table (owner and grants included), normalised and
        sorted (its order follows the objects' oids, which a restore does not keep)."""
        proc = subprocess.run(
            [find_pg_tool("pg_dump"), "--schema-only", "-t", f"public.{table}", "-d",
             self.pg.dsn_for(db)],
            capture_output=True, check=True, env={"PGPASSWORD": self.pg.password},
        )  # fmt: skip
        return sorted(
            line
            for line in proc.stdout.decode().splitlines()
            if line.strip() and not line.startswith(("--", "SET ", "SELECT pg_catalog", "\\"))
        )


@pytest.fixture(scope="module")
def source(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    suffix = uuid.uuid4().hex[:6]
    reader, gone = f"tr_reader_{suffix}", f"tr_gone_{suffix}"
    db = pg.create_database("tr_src")
    with pg.connect(db) as conn:
        conn.execute(SETUP.format(reader=reader, gone=gone))  # type: ignore[arg-type]
    store = ObjectStore((tmp_path_factory.mktemp("table-restore") / "store").as_uri())
    full = pg.adapter().full_backup(BackupRequest(store, "tr", f"full-{suffix}"))
    with pg.connect(db) as conn:  # an incremental on top: the restore reads the chain
        conn.execute("UPDATE public.films SET notes = 'seen' WHERE id % 10 = 0")
        conn.execute("INSERT INTO public.payments VALUES (1000, '2024-03-01', 7)")
    incremental = pg.adapter().incremental_backup(
        BackupRequest(store, "tr", f"incr-{suffix}"), full
    )
    with pg.connect() as conn:
        conn.execute(f'DROP OWNED BY "{gone}" CASCADE')
    with pg.connect(db) as conn:
        conn.execute(f'REVOKE ALL ON public.films FROM "{gone}"')
    with pg.connect() as conn:
        conn.execute(f'DROP ROLE "{gone}"')
    yield Source(
        pg, db, store, [full, incremental], ClusterAccess(pg.dsn_for(), password=pg.password),
        reader, gone,
    )  # fmt: skip
    pg.drop_database(db)
    with pg.connect() as conn:
        conn.execute(f'DROP OWNED BY "{reader}"')
        conn.execute(f'DROP ROLE "{reader}"')


@pytest.fixture
def target(source: Source, databases: list[str]) -> str:
    name = f"tr_dst_{uuid.uuid4().hex[:8]}"
    databases.append(name)
    return name


def test_a_table_comes_back_with_what_pg_dump_recreates_and_what_it_needs(
    source: Source, target: str
) -> None:
    outcome = source.run(source.plan(target, "films"))
    # The table's own entries equal the source's, owner, grants, policy, trigger included.
    assert source.dump_table(target, "films") == source.dump_table(source.db, "films")
    assert table_digest(source.pg.url_for(target), "public", "films") == table_digest(
        source.pg.url_for(source.db), "public", "films"
    )
    # What it needs, from the backup: the domain, the enum, the trigger's and check's functions.
    for label in ("domain", "type", "function", "function"):
        assert any(r.startswith(f"{label} {target}.public.") for r in outcome.restored)
    assert source.sql(target, "SELECT public.positive(1), 'PG'::public.rating::text") == [
        (True, "PG")
    ]
    # The owned sequence comes back not yet called: the next value is the source's (500).
    assert source.sql(target, "SELECT nextval('public.films_id_seq')") == [(500,)]
    # The grant to a role that no longer exists is left out, and said so.
    assert (
        f"GRANT SELECT ON TABLE public.films TO {source.gone}; (role {source.gone} does not exist)"
        in (outcome.left_out)
    )


def test_into_a_database_the_objects_it_has_are_used(source: Source, target: str) -> None:
    source.run(source.plan(target, "films"))
    with source.pg.connect(target) as conn:
        conn.execute("CREATE SEQUENCE public.shared_seq START 7")
    # No skip option: the foreign key to its films and the default on its sequence are kept.
    outcome = source.run(source.plan(target, "tickets", into_existing=True))
    assert source.dump_table(target, "tickets") == source.dump_table(source.db, "tickets")
    fks = source.sql(target, "SELECT convalidated FROM pg_constraint WHERE contype = 'f'")
    assert fks == [(True,)]
    assert any("sequence public.shared_seq" not in r for r in outcome.restored)
    assert not any("foreign key" in item or "default" in item for item in outcome.left_out)


def test_a_sequence_can_be_named_with_its_table(source: Source, target: str) -> None:
    plan = source.plan(
        target,
        "tickets",
        sequences=(TableRef("public", "shared_seq"),),
        skip_missing_foreign_keys=True,
    )
    outcome = source.run(plan)
    assert f"sequence {target}.public.shared_seq" in outcome.restored
    # The table as in the source, but for the foreign key the option left out (and listed).
    fk = [
        "ALTER TABLE ONLY public.tickets",
        "    ADD CONSTRAINT tickets_film_id_fkey FOREIGN KEY (film_id) REFERENCES public.films(id);",
    ]
    assert Counter(source.dump_table(target, "tickets")) == Counter(
        source.dump_table(source.db, "tickets")
    ) - Counter(fk)
    assert outcome.left_out == [
        "foreign key public.tickets.tickets_film_id_fkey references public.films: neither "
        "restored nor in the target (skip_missing_foreign_keys)"
    ]
    assert source.sql(target, "SELECT nextval('public.shared_seq')") == source.sql(
        source.db, "SELECT last_value + 1 FROM public.shared_seq"
    )


def test_a_conflicting_definition_is_refused_with_its_name(source: Source, target: str) -> None:
    with source.pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    with source.pg.connect(target) as conn:
        conn.execute("CREATE DOMAIN public.year AS integer CHECK (VALUE > 0)")
    with pytest.raises(PlanError) as refused:
        source.run(source.plan(target, "films", into_existing=True))
    assert refused.value.code == "DEFINITION_CONFLICT"
    assert "domain public.year" in refused.value.message
    assert source.sql(target, "SELECT count(*) FROM pg_class WHERE relname = 'films'") == [(0,)]


def test_a_partitioned_table_comes_with_its_partitions(source: Source, target: str) -> None:
    found = table_restore_objects(
        source.store, source.chain[-1], source.db, [TableRef("public", "payments")], source.access
    )
    assert [t.name for t in found.tables] == PAYMENTS
    source.run(source.plan(target, *PAYMENTS))
    for table in PAYMENTS:
        assert source.dump_table(target, table) == source.dump_table(source.db, table), table
    assert source.sql(target, "SELECT count(*), sum(amount) FROM public.payments") == source.sql(
        source.db, "SELECT count(*), sum(amount) FROM public.payments"
    )


def test_a_partition_attaches_to_its_parent_or_is_refused(source: Source, target: str) -> None:
    with pytest.raises(PlanError) as refused:
        source.run(source.plan(target, "payments_2024"))
    assert refused.value.code == "MISSING_DEPENDENCY"
    assert "public.payments_2024 is a partition of public.payments, which is neither restored" in (
        refused.value.message
    )
    with source.pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    with source.pg.connect(target) as conn:
        conn.execute(
            "CREATE TABLE public.payments (id int, at date, amount numeric, PRIMARY KEY (id, at))"
            " PARTITION BY RANGE (at)"
        )
        conn.execute("CREATE INDEX payments_by_amount ON public.payments (amount)")
    source.run(source.plan(target, "payments_2024", into_existing=True))
    assert source.dump_table(target, "payments_2024") == source.dump_table(
        source.db, "payments_2024"
    )
    assert source.sql(target, "SELECT count(*) FROM public.payments") == source.sql(
        source.db, "SELECT count(*) FROM public.payments_2024"
    )
    attached = source.sql(
        target,
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE c.relname LIKE 'payments_2024%'",
    )
    assert attached == [(3,)]  # the table, its primary key's index and the amount index


def test_an_inheritance_child_needs_its_parent(source: Source, target: str) -> None:
    with pytest.raises(PlanError) as refused:
        source.run(source.plan(target, "dogs"))
    assert "public.dogs inherits from public.animals, which is neither restored" in (
        refused.value.message
    )
    source.run(source.plan(target, "animals", "dogs"))
    assert source.dump_table(target, "dogs") == source.dump_table(source.db, "dogs")
    assert source.sql(target, "SELECT * FROM public.dogs") == [(1, "rex", True)]


def test_nothing_is_left_behind(source: Source, tmp_path: Path) -> None:
    with source.pg.connect() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [n for n in names if str(n).startswith("mb_restore_")]


def test_the_archive_toc_is_read_exactly(
    pg: PgServer, tmp_path: Path, databases: list[str]
) -> None:
    """Names with spaces, quotes and dots (which make ``pg_restore -l`` lines ambiguous) are
    read exactly, with the same entries, order and dependencies as ``pg_restore -l -v``."""
    db = pg.create_database("tr_toc")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute(
            'CREATE SCHEMA "a b"; CREATE TABLE "a b"."c d" (id serial PRIMARY KEY, "x.y" text);'
            'CREATE TABLE "a b"."c" (id int REFERENCES "a b"."c d");'
            "COMMENT ON TABLE \"a b\".\"c d\" IS 'odd'; SELECT lo_from_bytea(0, 'blob')"
        )
    archive = tmp_path / "schema.dump"
    env = {"PGPASSWORD": pg.password}
    subprocess.run(
        [find_pg_tool("pg_dump"), "-Fc", "-b", "--schema-only", "-f", str(archive), "-d",
         pg.dsn_for(db)],
        check=True, env=env,
    )  # fmt: skip
    entries = read_toc(archive)
    assert (
        read_toc_from(
            iter([archive.read_bytes()[i : i + 7] for i in range(0, archive.stat().st_size, 7)])
        )
        == entries
    )
    listing = subprocess.run(
        [find_pg_tool("pg_restore"), "-l", "-v", str(archive)],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    lines = [ln for ln in listing.splitlines() if ln and not ln.startswith(";")]
    assert [int(ln.split(";")[0]) for ln in lines] == [e.dump_id for e in entries]
    for line, e in zip(lines, entries, strict=True):
        assert line.startswith(
            f"{e.dump_id}; {e.catalog_oid} {e.oid} {e.desc} {e.namespace or '-'} {e.tag} "
        ), line
    tags = {(e.desc, e.namespace, e.tag) for e in entries}
    assert {
        ("TABLE", "a b", "c d"),
        ("TABLE", "a b", "c"),
        ("COMMENT", "a b", 'TABLE "c d"'),
    } <= tags
    fk = next(e for e in entries if e.desc == "FK CONSTRAINT")
    table = next(e for e in entries if e.tag == "c d" and e.desc == "TABLE")
    assert fk.tag == "c c_id_fkey" and table.dump_id in fk.dependencies
