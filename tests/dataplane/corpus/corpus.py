"""The public schema corpus: sample schemas nobody here wrote, and how to load and change one.

The schemas come from Debian's own packages (``scripts/fetch-corpus`` downloads them with
``apt-get download`` into ``MANAGED_BACKUPS_CORPUS_DIR``, default
``~/.cache/managed-backups/corpus``; ``.ci/run`` calls it): nothing of them is in this
repository. Each corpus folder holds the SQL files, the package's ``copyright`` file (its
licence) and ``SOURCE`` (package and version). A corpus missing there fails its test with the
command that fetches it; it never skips.

- ``ledgersmb``: LedgerSMB's accounting schema (GPL-2+): 165 tables, foreign keys everywhere,
  triggers, rules, views, a composite type, aggregates, comments, grants to PUBLIC, seed rows.
- ``zabbix``: Zabbix's server schema (GPL-2+) with its images (``bytea``): 173 tables, 230
  indexes. Its 32 MB of default data are left out (trimmed): the images are enough rows.
- ``pagila``: the Pagila sample database (PostgreSQL licence; a partitioned ``payment``
  table, the ``year`` domain, the ``mpaa_rating`` enum, ``last_updated`` triggers, a
  materialized view), when ``pagila/pagila-schema.sql`` and ``pagila/pagila-data.sql`` are
  put in the corpus folder by hand (no package carries it; its 2024 version loads on
  PostgreSQL 15).

The change between the full and the incremental backup is ours: rows updated, deleted and
inserted in a few tables, a role with table and column grants, a comment, a large object.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from managed_backups.shared.dataplane.tools import find_pg_tool

CORPUS_DIR = Path(
    os.environ.get("MANAGED_BACKUPS_CORPUS_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "managed-backups"
    / "corpus"
)


@dataclass(frozen=True)
class Corpus:
    name: str
    files: tuple[str, ...]
    """Loaded in this order with ``psql`` (``.gz`` files uncompressed first)."""
    changes: str
    """SQL run before the incremental backup (``{role}`` is the corpus run's role)."""
    tables: tuple[str, ...]
    """The tables the default (fast) run restores one by one; the whole run takes all."""
    fast: bool = False
    optional: bool = False
    """Put in the corpus folder by hand: its absence is not a failure."""

    @property
    def folder(self) -> Path:
        return CORPUS_DIR / self.name

    def available(self) -> bool:
        return all((self.folder / f).is_file() for f in self.files)

    def load(self, dsn: str, password: str) -> None:
        for name in self.files:
            path = self.folder / name
            data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
            proc = subprocess.run(
                [find_pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
                input=data,
                capture_output=True,
                check=False,
                env={**os.environ, "PGPASSWORD": password},
            )
            assert proc.returncode == 0, f"{self.name}/{name}: {proc.stderr.decode()[-2000:]}"


_GENERIC_CHANGES = """
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
SELECT lo_from_bytea(0, 'a large object of the corpus run');
"""

CORPORA = (
    Corpus(
        name="ledgersmb",
        files=("Pg-database.sql",),
        changes="""
UPDATE country SET name = name || ' (changed)' WHERE id % 5 = 0;
DELETE FROM mime_type WHERE id % 9 = 0;
INSERT INTO mime_type (mime_type, invoice_include) VALUES ('application/x-corpus', true);
INSERT INTO language VALUES ('xx', 'a language of the corpus run');
GRANT UPDATE (name) ON country TO {role};
COMMENT ON TABLE country IS 'changed by the corpus run';
"""
        + _GENERIC_CHANGES,
        tables=("country", "mime_type", "language", "entity", "acc_trans", "gl", "ar"),
        fast=True,
    ),
    Corpus(
        name="zabbix",
        files=("schema.sql.gz", "images.sql.gz"),
        changes="""
UPDATE images SET name = name || ' v2' WHERE imageid % 4 = 0;
DELETE FROM images WHERE imageid % 7 = 0;
GRANT UPDATE (name) ON images TO {role};
"""
        + _GENERIC_CHANGES,
        tables=("images", "hosts", "items", "triggers", "history"),
    ),
    Corpus(
        name="pagila",
        files=("pagila-schema.sql", "pagila-data.sql"),
        changes="""
UPDATE film SET rental_rate = rental_rate + 1 WHERE film_id % 10 = 0;
DELETE FROM payment WHERE payment_id % 50 = 0;
INSERT INTO actor (first_name, last_name) VALUES ('CORPUS', 'RUN');
GRANT UPDATE (rental_rate) ON film TO {role};
"""
        + _GENERIC_CHANGES,
        tables=("film", "payment", "payment_p2022_03", "actor", "customer", "rental"),
        optional=True,
    ),
)
