"""The differential catalogue: schema features x concurrent operations x positions in a chain.

Add a scenario by appending a :class:`~.harness.Scenario` to ``CATALOGUE``: setup statements,
then steps (the first is the full backup, the others incrementals), each with statements run
``before`` the backup and ``during`` it (after its snapshots are taken). ``fast=True`` puts it in
the default test run; the whole catalogue runs with ``MANAGED_BACKUPS_DIFFERENTIAL=all``.
"""

from __future__ import annotations

from .harness import Db, Scenario, Step, on

# ------------------------------------------------------------------------------ ordinary schemas
FEATURES_SETUP = on(
    "app",
    """
    CREATE SCHEMA "Sales Team";
    CREATE TABLE "Sales Team"."Order Lines" (
        "Id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        qty int NOT NULL, price numeric(12, 2),
        total numeric GENERATED ALWAYS AS (qty * price) STORED,
        at timestamptz DEFAULT '2024-05-01 10:00+02', tags text[], doc jsonb, span tstzrange,
        addr inet, raw bytea, ok bool, f float8, i interval);
    INSERT INTO "Sales Team"."Order Lines" (qty, price, tags, doc, span, addr, raw, ok, f, i)
    SELECT g, g / 7.0, ARRAY['a' || g, NULL, 'tab	x'], jsonb_build_object('g', g, 'n', NULL),
           tstzrange('2024-01-01', '2024-01-01'::timestamptz + g * interval '1 hour'),
           ('10.0.' || (g % 250) || '.1')::inet, decode(md5(g::text), 'hex'), g % 2 = 0,
           g * 1.1e-3, g * interval '1 minute'
    FROM generate_series(1, 500) g;
    CREATE TABLE words (w text PRIMARY KEY, n int);
    INSERT INTO words VALUES ('Zebra', 1), ('apple', 2), (E'new\\nline', 3), ('ünï', 4),
        (E'back\\\\slash', 5), ('', 6);
    CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
    INSERT INTO pairs SELECT g % 10, 'b' || g, 'v' FROM generate_series(1, 300) g;
    CREATE TABLE nokey (a int, b text);
    INSERT INTO nokey SELECT g % 7, 'x' FROM generate_series(1, 100) g;
    CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v text);
    INSERT INTO scratch SELECT g, 'u' FROM generate_series(1, 50) g;
    CREATE TABLE measures (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE measures_2023 PARTITION OF measures FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
    CREATE TABLE measures_2024 PARTITION OF measures FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    INSERT INTO measures SELECT g, date '2023-06-01' + g, g FROM generate_series(1, 400) g;
    CREATE TABLE animals (id int PRIMARY KEY, name text);
    CREATE TABLE dogs (good bool) INHERITS (animals);
    INSERT INTO animals VALUES (1, 'cat'); INSERT INTO dogs VALUES (2, 'rex', true);
    CREATE TABLE secrets (id int PRIMARY KEY, owner text, v text);
    ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
    CREATE POLICY mine ON secrets USING (owner = current_user);
    INSERT INTO secrets SELECT g, 'nobody', 'hidden' FROM generate_series(1, 20) g;
    CREATE TABLE blobs (id int PRIMARY KEY, body text);
    INSERT INTO blobs SELECT g, string_agg(md5(g::text || h::text), '') FROM generate_series(1, 3) g,
        generate_series(1, 40000) h GROUP BY g;
    CREATE SEQUENCE plain_seq;
    SELECT nextval('plain_seq') FROM generate_series(1, 5);
    """,
)

FEATURES_CHANGES = on(
    "app",
    """
    UPDATE "Sales Team"."Order Lines" SET qty = qty + 1 WHERE "Id" % 10 = 0;
    DELETE FROM "Sales Team"."Order Lines" WHERE "Id" % 17 = 0;
    INSERT INTO "Sales Team"."Order Lines" (qty, price) SELECT g, 1 FROM generate_series(1, 30) g;
    UPDATE words SET n = n + 100 WHERE w IN ('Zebra', '');
    DELETE FROM words WHERE w = 'apple'; INSERT INTO words VALUES ('apple', 99), ('Ångström', 7);
    DELETE FROM pairs WHERE a = 3; UPDATE pairs SET v = 'w' WHERE a = 4;
    INSERT INTO nokey VALUES (1, 'y');
    UPDATE scratch SET v = 'changed' WHERE id < 5;
    UPDATE measures SET at = date '2024-02-01' WHERE id = 5;
    UPDATE dogs SET name = 'max'; UPDATE secrets SET v = 'seen' WHERE id = 3;
    UPDATE blobs SET body = body || 'x' WHERE id = 2;
    SELECT nextval('plain_seq');
    """,
)

BASICS = Scenario(
    name="features-three-steps",
    fast=True,
    setup=FEATURES_SETUP,
    steps=(
        Step(),
        Step(before=FEATURES_CHANGES),
        Step(before=on("app", "DELETE FROM words; TRUNCATE nokey", "VACUUM FULL pairs")),
    ),
)

# ------------------------------------------------------------------------------ state not in rows
SEQUENCES = Scenario(
    known_failure="sequence state after RESTART / setval(false) is lost",
    name="sequences-in-every-state",
    fast=True,
    setup=on(
        "app",
        "CREATE SEQUENCE used; SELECT nextval('used') FROM generate_series(1, 3)",
        "CREATE SEQUENCE never_used START 40",
        "CREATE SEQUENCE set_false; SELECT setval('set_false', 70, false)",
        "CREATE SEQUENCE restarted; SELECT nextval('restarted'); ALTER SEQUENCE restarted RESTART WITH 500",
        "CREATE TABLE ident (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)",
        "INSERT INTO ident DEFAULT VALUES",
    ),
    steps=(
        Step(),
        Step(
            before=on(
                "app",
                "SELECT nextval('set_false')",
                "ALTER SEQUENCE used RESTART",
                "SELECT setval('never_used', 41, false)",
            )
        ),
    ),
)

MATVIEWS = Scenario(
    known_failure="materialized views restored unpopulated",
    name="materialized-views",
    fast=True,
    setup=on(
        "app",
        "CREATE TABLE base (id int PRIMARY KEY, v int)",
        "INSERT INTO base SELECT g, g % 5 FROM generate_series(1, 100) g",
        "CREATE MATERIALIZED VIEW counts AS SELECT v, count(*) AS n FROM base GROUP BY v",
        "CREATE UNIQUE INDEX ON counts (v)",
        "CREATE MATERIALIZED VIEW on_counts AS SELECT sum(n) AS total FROM counts",
        "CREATE MATERIALIZED VIEW empty_view AS SELECT * FROM base WITH NO DATA",
    ),
    steps=(
        Step(),
        Step(
            before=on(
                "app",
                "INSERT INTO base VALUES (1000, 7)",
                "REFRESH MATERIALIZED VIEW counts",
                "REFRESH MATERIALIZED VIEW on_counts",
            )
        ),
    ),
)

LARGE_OBJECTS = Scenario(
    known_failure="large objects not backed up",
    name="large-objects-with-owners-and-acls",
    fast=True,
    roles=("alice", "bob"),
    setup=on(
        "app",
        "SELECT lo_from_bytea(424242, convert_to(repeat('large object ', 20000), 'UTF8'))",
        "ALTER LARGE OBJECT 424242 OWNER TO <<role:alice>>",
        "GRANT SELECT ON LARGE OBJECT 424242 TO <<role:bob>>",
        "SELECT lo_from_bytea(424243, '\\x00ff00')",
        "CREATE TABLE docs (id int PRIMARY KEY, body oid)",
        "INSERT INTO docs VALUES (1, 424242), (2, 424243)",
    ),
    steps=(
        Step(),
        Step(before=on("app", "SELECT lo_put(424243, 1, '\\xaabb')", "SELECT lo_unlink(424242)")),
    ),
)

DATABASE_SETTINGS = Scenario(
    known_failure="database settings, comment, owner, ACL not backed up",
    name="database-settings-comments-owner-grants",
    fast=True,
    roles=("owner", "reader"),
    setup=on(
        None,
        "ALTER DATABASE <<db:app>> SET work_mem = '7MB'",
        'ALTER DATABASE <<db:app>> SET search_path = app, "Other Schema", public',
        "ALTER DATABASE <<db:app>> SET default_text_search_config = 'pg_catalog.english'",
        "ALTER ROLE <<role:reader>> IN DATABASE <<db:app>> SET statement_timeout = '5s'",
        "COMMENT ON DATABASE <<db:app>> IS 'the app''s database'",
        "ALTER DATABASE <<db:app>> OWNER TO <<role:owner>>",
        "ALTER DATABASE <<db:app>> CONNECTION LIMIT 40",
        "REVOKE ALL ON DATABASE <<db:app>> FROM PUBLIC",
        "GRANT CONNECT, TEMPORARY ON DATABASE <<db:app>> TO <<role:reader>> WITH GRANT OPTION",
    )
    + on("app", "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)"),
    steps=(
        Step(),
        Step(before=on(None, "ALTER DATABASE <<db:app>> RESET work_mem")),
    ),
)

TEMPLATES = Scenario(
    known_failure="template and no-connection databases left out silently",
    name="template-and-no-connection-databases",
    fast=True,
    databases={"app": Db(), "tmpl": Db(), "closed": Db()},
    setup=on("tmpl", "CREATE TABLE seed (id int PRIMARY KEY)", "INSERT INTO seed VALUES (1)")
    + on(
        None,
        "ALTER DATABASE <<db:tmpl>> IS_TEMPLATE true",
        "ALTER DATABASE <<db:closed>> ALLOW_CONNECTIONS false",
    ),
    steps=(Step(skipped=("closed",)),),
)

# ------------------------------------------------------------------------------ concurrent DDL
TWO_DBS = {"first": Db(), "second": Db()}
TWO_DBS_SETUP = on(
    "first",
    "CREATE TABLE a (id int PRIMARY KEY, v text)",
    "INSERT INTO a SELECT g, 'a' FROM generate_series(1, 2000) g",
) + on(
    "second",
    "CREATE TABLE b (id int PRIMARY KEY, v text)",
    "INSERT INTO b SELECT g, 'b' FROM generate_series(1, 2000) g",
    "CREATE TABLE c (id int PRIMARY KEY, v int)",
    "INSERT INTO c SELECT g, g FROM generate_series(1, 500) g",
    "CREATE TABLE gone (id int PRIMARY KEY)",
    "INSERT INTO gone SELECT generate_series(1, 10)",
)

CONCURRENT_TRUNCATE = Scenario(
    known_failure="tables locked late: TRUNCATE in another database empties the backup; DROP crashes it",
    name="truncate-reload-rewrite-drop-during-a-multi-database-backup",
    fast=True,
    databases=TWO_DBS,
    setup=TWO_DBS_SETUP,
    steps=(
        Step(during=on("second", "TRUNCATE b")),
        Step(
            during=on(
                "second",
                "BEGIN; TRUNCATE c; INSERT INTO c SELECT g, -g FROM generate_series(1, 100) g;"
                " COMMIT",
                "ALTER TABLE b ALTER COLUMN v TYPE varchar(20)",
                "DROP TABLE gone",
            )
        ),
        Step(during=on("first", "VACUUM FULL a")),
    ),
)

# ------------------------------------------------------------------------------ identity
BLUE_GREEN = Scenario(
    known_failure="a database swapped in under the same name is diffed against the old one",
    name="blue-green-database-swap-and-table-rename-swap",
    fast=True,
    databases={"app": Db(), "green": Db(create=False), "blue": Db(create=False)},
    setup=on(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'blue' FROM generate_series(1, 300) g",
        "CREATE TABLE live (id int PRIMARY KEY, v text)",
        "CREATE TABLE live_next (id int PRIMARY KEY, v text)",
        "INSERT INTO live SELECT g, 'old' FROM generate_series(1, 50) g",
        "INSERT INTO live_next SELECT g, 'next' FROM generate_series(1, 50) g",
    )
    + on(None, "CREATE DATABASE <<db:green>> TEMPLATE <<db:app>>")
    + on("green", "UPDATE t SET v = 'green' WHERE id % 2 = 0"),
    steps=(
        Step(),
        Step(
            before=on(
                None,
                "ALTER DATABASE <<db:app>> RENAME TO <<db:blue>>",
                "ALTER DATABASE <<db:green>> RENAME TO <<db:app>>",
            )
            + on(
                "app",
                "BEGIN; ALTER TABLE live RENAME TO live_old; ALTER TABLE live_next RENAME TO live;"
                " COMMIT",
            ),
            whole=("app.public.t", "app.public.live"),
        ),
    ),
)

# ------------------------------------------------------------------------------ type closure
TYPE_CLOSURE = Scenario(
    known_failure="composite/domain/reg*/generated-key changes stored as unreplayable deltas",
    name="definition-changes-that-rewrite-text-without-writing-rows",
    fast=True,
    setup=on(
        "app",
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        "CREATE TYPE feeling AS (m mood, level int)",
        "CREATE DOMAIN small_mood AS mood",
        "CREATE DOMAIN wrapped AS small_mood",
        "CREATE TABLE deep (id int PRIMARY KEY, f feeling, fs feeling[], w wrapped)",
        "INSERT INTO deep SELECT g, ROW('sad', g)::feeling, ARRAY[ROW('ok', 1)::feeling], 'sad'"
        " FROM generate_series(1, 20) g",
        "CREATE TABLE refs (id int PRIMARY KEY, r regclass, t regtype)",
        "CREATE TABLE target_table (id int)",
        "INSERT INTO refs VALUES (1, 'target_table', 'mood')",
        "CREATE TYPE pt AS (x int, y int)",
        "CREATE TABLE points (id int PRIMARY KEY, p pt)",
        "INSERT INTO points VALUES (1, ROW(1, 2))",
        "CREATE TABLE gen_key (a int, b int GENERATED ALWAYS AS (a * 2) STORED PRIMARY KEY)",
        "INSERT INTO gen_key (a) SELECT generate_series(1, 10)",
    ),
    steps=(
        Step(),
        Step(
            before=on(
                "app",
                "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'",
                "ALTER TABLE target_table RENAME TO renamed_table",
                "ALTER TYPE mood RENAME TO humour",
                "ALTER TYPE pt ADD ATTRIBUTE z int",
                "INSERT INTO gen_key (a) VALUES (100)",
                "DELETE FROM gen_key WHERE a = 1",
            ),
            whole=("app.public.deep", "app.public.refs", "app.public.points", "app.public.gen_key"),
        ),
    ),
)

# ------------------------------------------------------------------------------ encodings
ENCODINGS = Scenario(
    known_failure="the psql stream sends UTF-8 SQL to a LATIN1 session",
    name="latin1-database-non-ascii-identifiers-both-streams",
    fast=True,
    databases={"app": Db(encoding="LATIN1")},
    adapter={"psql_min_bytes": 0},
    setup=on(
        "app",
        'CREATE SCHEMA "résumé"',
        'CREATE TABLE "résumé"."café" ("naïve" text PRIMARY KEY, "größe" int)',
        "INSERT INTO \"résumé\".\"café\" VALUES ('é', 1), ('ÿ', 2), ('a', 3)",
        'CREATE SEQUENCE "séquence"; SELECT nextval(\'"séquence"\')',
    ),
    steps=(
        Step(),
        Step(before=on("app", 'UPDATE "résumé"."café" SET "größe" = 9 WHERE "naïve" = \'é\'')),
    ),
)

ENCODINGS_PSYCOPG = Scenario(
    name="latin1-database-psycopg-stream",
    fast=False,
    databases={"app": Db(encoding="LATIN1")},
    setup=ENCODINGS.setup,
    steps=ENCODINGS.steps,
)

# ------------------------------------------------------------------------------ the longer ones
MANY_SCHEMAS = Scenario(
    name="many-schemas-and-tables",
    setup=on(
        "app",
        """
        DO $$ BEGIN FOR s IN 1..30 LOOP
          EXECUTE format('CREATE SCHEMA tenant_%s', s);
          FOR t IN 1..5 LOOP
            EXECUTE format('CREATE TABLE tenant_%s.t%s (id int PRIMARY KEY, v text)', s, t);
            EXECUTE format('INSERT INTO tenant_%s.t%s SELECT g, md5(g::text) FROM generate_series(1, 20) g', s, t);
          END LOOP; END LOOP; END $$
        """,
    ),
    steps=(
        Step(),
        Step(before=on("app", "UPDATE tenant_3.t2 SET v = 'x'; DROP TABLE tenant_4.t1")),
        Step(before=on("app", "CREATE TABLE tenant_4.t1 (id int PRIMARY KEY, v text)")),
    ),
)

PARTITION_CHURN = Scenario(
    name="partitions-attached-detached-and-etl-reload",
    setup=on(
        "app",
        "CREATE TABLE m (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE m1 PARTITION OF m FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')",
        "INSERT INTO m SELECT g, date '2023-01-01' + g FROM generate_series(1, 300) g",
        "CREATE TABLE staging (id int PRIMARY KEY, v text)",
        "INSERT INTO staging SELECT g, 'one' FROM generate_series(1, 1000) g",
    ),
    steps=(
        Step(),
        Step(
            before=on(
                "app",
                "CREATE TABLE m2 (id int, at date, PRIMARY KEY (id, at))",
                "INSERT INTO m2 SELECT g, date '2024-01-01' + g FROM generate_series(1, 50) g",
                "ALTER TABLE m ATTACH PARTITION m2 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
                "BEGIN; TRUNCATE staging; INSERT INTO staging SELECT g, 'two' FROM"
                " generate_series(1, 900) g; COMMIT",
            )
        ),
        Step(
            before=on(
                "app", "ALTER TABLE m DETACH PARTITION m1", "CLUSTER staging USING staging_pkey"
            )
        ),
    ),
)

LONG_TRANSACTION = Scenario(
    name="cluster-and-vacuum-full-during-backups",
    setup=on(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 3000) g",
    ),
    steps=(
        Step(during=on("app", "CLUSTER t USING t_pkey")),
        Step(
            before=on("app", "UPDATE t SET v = 'w' WHERE id < 100"),
            during=on("app", "VACUUM FULL t"),
        ),
    ),
)

CATALOGUE: tuple[Scenario, ...] = (
    BASICS,
    SEQUENCES,
    MATVIEWS,
    LARGE_OBJECTS,
    DATABASE_SETTINGS,
    TEMPLATES,
    CONCURRENT_TRUNCATE,
    BLUE_GREEN,
    TYPE_CLOSURE,
    ENCODINGS,
    ENCODINGS_PSYCOPG,
    MANY_SCHEMAS,
    PARTITION_CHURN,
    LONG_TRANSACTION,
)
