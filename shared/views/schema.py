"""The read-model tables, defined once: their names, their columns, and the text form of times.

The projections service writes these tables (``services/projections``) and the API and the console
read them (:mod:`managed_backups.shared.views.queries`); both take every table name from
:class:`Tables`, so a prefix (a rebuild into side tables) changes every name at once. Tables are
plain SQL on SQLite or PostgreSQL, in the event store's database; documents are JSON text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from managed_backups.shared.log_follower import PositionRow
from managed_backups.shared.sqldb import SqlDatabase

# The row of the position table that holds how far into the notification log the views are.
PROJECTION_NAME = "views"
# The row of the position table that holds the tables' shape (:data:`SCHEMA_VERSION`).
SCHEMA_ROW = "schema"
SCHEMA_VERSION = 2
"""The tables' shape. 2: backups and restores are keyed by (cluster, id): a backup or restore
id is chosen by a client and is unique only within its cluster. Views of an older shape are
dropped when opened and rebuilt from the log."""
DEFAULT_PREFIX = "mb_view_"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def ts(value: datetime | None) -> str | None:
    """Fixed-width UTC text (``TIME_FORMAT``), so timestamps sort correctly as strings on both
    databases. (``isoformat``, not ``strftime``: the same text, a tenth of the cost, which a
    replay of the log pays several times per event.)"""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(value: str | None) -> datetime | None:
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC) if value else None


@dataclass(frozen=True)
class Tables:
    """The names of the read-model tables under one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def position(self) -> str:
        return f"{self.prefix}position"

    @property
    def clusters(self) -> str:
        return f"{self.prefix}clusters"

    @property
    def backups(self) -> str:
        return f"{self.prefix}backups"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def restores(self) -> str:
        return f"{self.prefix}restores"

    @property
    def retention(self) -> str:
        """Per cluster, what the retention rules need to list: its newest restorable chain (the
        newest COMPLETE full), once deleted until when its backups are kept, and counters."""
        return f"{self.prefix}retention"

    @property
    def organizations(self) -> str:
        return f"{self.prefix}organizations"

    @property
    def service_accounts(self) -> str:
        return f"{self.prefix}service_accounts"

    @property
    def api_keys(self) -> str:
        """Every API key (never its secret nor a hash): today's and version 0.1's."""
        return f"{self.prefix}api_keys"

    @property
    def role_grants(self) -> str:
        return f"{self.prefix}role_grants"

    def all(self) -> tuple[str, ...]:
        """Every table, in the order :meth:`ReadModels.dump` lists them."""
        return (
            self.clusters,
            self.backups,
            self.audit,
            self.restores,
            self.position,
            self.retention,
            self.organizations,
            self.service_accounts,
            self.api_keys,
            self.role_grants,
        )

    def create_statements(self) -> list[str]:
        return [*self.table_statements(), *self.index_statements()]

    def table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.position} (name TEXT PRIMARY KEY, "
            "position BIGINT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.clusters} (cluster_id TEXT PRIMARY KEY, "
            "organization TEXT NOT NULL, deleted INTEGER NOT NULL, doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.backups} (backup_id TEXT NOT NULL, "
            "cluster_id TEXT NOT NULL, status TEXT NOT NULL, backup_type TEXT NOT NULL, "
            "chain_id TEXT NOT NULL, sort_time TEXT NOT NULL, as_of_time TEXT, "
            "expires_at TEXT, doc TEXT NOT NULL, PRIMARY KEY (cluster_id, backup_id))",
            f"CREATE TABLE IF NOT EXISTS {self.audit} (position BIGINT PRIMARY KEY, "
            "cluster_id TEXT NOT NULL, doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.restores} (restore_id TEXT NOT NULL, "
            "cluster_id TEXT NOT NULL, created_at TEXT NOT NULL, doc TEXT NOT NULL, "
            "PRIMARY KEY (cluster_id, restore_id))",
            f"CREATE TABLE IF NOT EXISTS {self.retention} (cluster_id TEXT PRIMARY KEY, "
            "kept_chain_id TEXT, kept_data_from TEXT, deleted_until TEXT, "
            "stored_bytes BIGINT NOT NULL DEFAULT 0, expired_count BIGINT NOT NULL DEFAULT 0, "
            "deleted_count BIGINT NOT NULL DEFAULT 0, bytes_freed BIGINT NOT NULL DEFAULT 0)",
            f"CREATE TABLE IF NOT EXISTS {self.organizations} (organization_id TEXT PRIMARY KEY, "
            "doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.service_accounts} (account_id TEXT PRIMARY KEY, "
            "organization TEXT, doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.api_keys} (key_id TEXT PRIMARY KEY, "
            "account_id TEXT, organization TEXT, doc TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.role_grants} (account_id TEXT NOT NULL, "
            "role TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, "
            "organization TEXT, doc TEXT NOT NULL, "
            "PRIMARY KEY (account_id, role, resource_type, resource_id))",
        ]

    def index_statements(self) -> list[str]:
        p = self.prefix
        return [
            f"CREATE INDEX IF NOT EXISTS {p}backups_by_cluster ON {self.backups} "
            "(cluster_id, sort_time)",
            f"CREATE INDEX IF NOT EXISTS {p}audit_by_cluster ON {self.audit} "
            "(cluster_id, position)",
            f"CREATE INDEX IF NOT EXISTS {p}restores_by_cluster ON {self.restores} "
            "(cluster_id, created_at)",
        ]

    def create(self, db: SqlDatabase, indexes: bool = True) -> None:
        """Create the tables that are missing (a rebuild's side tables get their indexes only
        when they replace the views). Views of an older shape (built before a table existed:
        the retention table, the identity tables; or before :data:`SCHEMA_VERSION`) are dropped
        first, so the projections service rebuilds them all from the log."""
        if db.table_exists(self.position) and (
            not all(db.table_exists(t) for t in self.all())
            or self.schema_version(db) < SCHEMA_VERSION
        ):
            self.drop(db)
        with db.transaction() as cursor:
            for statement in self.table_statements():
                cursor.execute(statement)
            for statement in self.index_statements() if indexes else ():
                cursor.execute(statement)
            cursor.execute(
                f"INSERT INTO {self.position} (name, position) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (SCHEMA_ROW, SCHEMA_VERSION),
            )

    def replace(self, db: SqlDatabase, target: Tables) -> None:
        """Put these tables in place of ``target``'s, in one transaction: readers see the old
        views until it commits and the new ones after, never a mix or nothing. The indexes are
        built here, under ``target``'s names."""
        with db.transaction() as cursor:
            for table, name in zip(self.all(), target.all(), strict=True):
                cursor.execute(f"DROP TABLE IF EXISTS {name}")
                cursor.execute(f"ALTER TABLE {table} RENAME TO {name}")
                if db.dialect == "postgres":  # the primary key's index keeps its own name
                    cursor.execute(f"ALTER INDEX IF EXISTS {table}_pkey RENAME TO {name}_pkey")
            for statement in target.index_statements():
                cursor.execute(statement)

    def schema_version(self, db: SqlDatabase) -> int:
        rows = db.query(f"SELECT position FROM {self.position} WHERE name = ?", (SCHEMA_ROW,))
        return int(rows[0][0]) if rows else 1

    def drop(self, db: SqlDatabase) -> None:
        with db.transaction() as cursor:
            for table in self.all():
                cursor.execute(f"DROP TABLE IF EXISTS {table}")

    def position_of(self, db: SqlDatabase) -> int:
        """How far into the notification log the views are (0 before the first event)."""
        return PositionRow(self.position, PROJECTION_NAME).load(db)
