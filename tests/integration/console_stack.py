"""A real stack for the console's browser test: Kafka, a PostgreSQL source, the registry, the
backup-executor, the restore service, the projections and the API on a real port; four
clusters (an ADVANCED pair of one organization, a STANDARD cluster whose backup failed for want
of its password, a BASIC one), a real full and incremental backup, and API keys for an
administrator, a Cluster Operator and a Cluster Monitor."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psycopg

from managed_backups.contracts.enums import Role
from managed_backups.services.executor.service import run as run_executor
from managed_backups.services.restore.service import run as run_restore
from tests.harness import System, run_cluster_commands_only
from tests.infra.postgres import LocalPostgres
from tests.integration.test_executor import connection_ref, take, wait_terminal
from tests.restore_checks import table_digest

SHOP = "shop"
PROD, STAGING, BILLING, SANDBOX = "orders-prod", "orders-staging", "billing", "sandbox"
NAMES = {
    PROD: "Orders production",
    STAGING: "Orders staging",
    BILLING: "Billing",
    SANDBOX: "Sandbox",
}


@dataclass
class Stack:
    system: System
    pg: LocalPostgres
    url: str
    full_id: UUID
    incremental_id: UUID
    at_incremental: dict[str, tuple[int, str]]
    operator_key: str
    monitor_key: str

    @property
    def admin_key(self) -> str:
        return self.system.admin_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fill_source(pg: LocalPostgres) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {SHOP}")
        conn.execute("CREATE DATABASE analytics")
    with psycopg.connect(pg.url_for(SHOP), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute(
            "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g"
        )
        conn.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, "
            "customer_id int REFERENCES customers, amount numeric, placed_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO orders (customer_id, amount, placed_at) SELECT 1 + g % 500, g % 977, "
            "'2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 30000) g"
        )
        conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 900")
        conn.execute("CREATE SCHEMA audit")
        conn.execute("CREATE TABLE audit.changes (id bigint PRIMARY KEY, what text)")
        conn.execute(
            "INSERT INTO audit.changes SELECT g, 'change ' || g FROM generate_series(1, 200) g"
        )
    with psycopg.connect(pg.url_for("analytics"), autocommit=True) as conn:
        conn.execute("CREATE TABLE page_views (id bigint PRIMARY KEY, path text)")
        conn.execute("INSERT INTO page_views SELECT g, '/p/' || g FROM generate_series(1, 5000) g")


async def start_stack(tmp: Path, kafka: str, pg: LocalPostgres) -> Stack:
    port = free_port()
    system = await System.start(
        tmp, f"sqlite:///{tmp / 'events.sqlite'}", kafka, services=("projections",), api_port=port
    )
    await system.start_service("registry", run_cluster_commands_only)
    await system.start_service("backup-executor", run_executor)
    await system.start_service("restore", run_restore)
    await system.start_service("api")
    ref = connection_ref(pg)
    for cluster_id, tier, regions, secret in (
        (PROD, "ADVANCED", ["us-east-1", "eu-west-1"], pg.password),
        (STAGING, "ADVANCED", ["us-east-1", "eu-west-1"], pg.password),
        (BILLING, "STANDARD", ["eu-west-1"], None),
        (SANDBOX, "BASIC", ["us-east-1"], pg.password),
    ):
        result = await system.register(
            cluster_id,
            name=NAMES[cluster_id],
            tier=tier,
            regions=regions,
            connection_ref=ref,
            secret=secret,
        )
        assert result.code == 200, result
    full_id = await take(system, PROD)
    assert (await wait_terminal(system, full_id)).status == "COMPLETE"
    with psycopg.connect(pg.url_for(SHOP), autocommit=True) as conn:
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id % 7 = 0")
        conn.execute("DELETE FROM orders WHERE id % 11 = 0")
    incremental_id = await take(system, PROD, "INCREMENTAL", chain_id=str(full_id))
    assert (await wait_terminal(system, incremental_id)).status == "COMPLETE"
    at_incremental = {
        t: table_digest(pg.url_for(SHOP), "public", t) for t in ("customers", "orders")
    }
    # Billing has no password set: its backup fails, saying how to set it.
    failed = await wait_terminal(system, await take(system, BILLING))
    assert failed.status == "FAILED" and failed.error is not None, failed
    sandbox = await take(system, SANDBOX)
    assert (await wait_terminal(system, sandbox)).status == "COMPLETE"
    # Keys of service accounts of the clusters' organization, granted their roles through
    # identity's API as an Organization Admin would grant them.
    operator_key = await system.issue_key("olivia", Role.CLUSTER_OPERATOR, f"cluster:{PROD}")
    monitor_key = await system.issue_key("mo", Role.CLUSTER_MONITOR, "org:acme")
    return Stack(
        system,
        pg,
        f"http://127.0.0.1:{port}",
        full_id,
        incremental_id,
        at_incremental,
        operator_key,
        monitor_key,
    )
