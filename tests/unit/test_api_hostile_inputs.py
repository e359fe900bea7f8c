"""Inputs the security probe sent the API: each answered with a 4xx and its reason, never a
500 (on both view databases: PostgreSQL refuses what SQLite stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.shared.identity import Identity
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.factories import new_cluster
from tests.unit.api_client import api_client


@pytest.fixture
async def api(tmp_path: Path, store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    runtime: Runtime = open_runtime(Settings(data_dir=tmp_path / "data", event_store_url=store_url))
    key, _ = Identity(runtime.store, runtime.db, runtime.clock).ensure_admin_key(
        runtime.settings.admin_key_path
    )
    runtime.store.save_all(new_cluster("live"))
    Projector(runtime.store, ReadModels(runtime.db)).catch_up()
    async with api_client(runtime, key) as client:
        yield client
    runtime.close()


async def test_the_largest_page_number_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/v1/clusters/live/restores", params={"pagination.page": str(2**63 - 1)}
    )
    assert response.status_code == 400, response.text
    assert "pagination.page" in response.json()["message"]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"new_db_name": "a\x00b"}, "NUL"),
        ({"new_db_name": "two\nlines"}, "control character"),
        ({"into_db": "ü" * 32}, "64 bytes"),
        ({"new_db_name": "mb_restore_0123"}, "reserved"),
    ],
)
async def test_names_postgresql_cannot_hold_are_refused_with_the_reason(
    api: httpx.AsyncClient, options: dict[str, str], reason: str
) -> None:
    response = await api.post(
        "/api/v1/clusters/live/restores",
        json={
            "type": "TABLE",
            "objects": [{"database": "d", "table": "t"}],
            "restore_opts": options,
        },
    )
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert reason in message and "restore_opts" in message


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/clusters/li%00ve",
        "/api/v1/clusters/live/restores/a%00b",
        "/api/v1/clusters/live/backups/x%00/databases",
        "/api/v1/clusters/live/backups?pagination.sort_order=%00",
    ],
)
async def test_nul_in_a_path_or_query_is_a_400(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["message"]


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/api/v1/organizations", {"id": "shop", "name": "a\x00b"}, "NUL"),
        (
            "/api/v1/service-accounts",
            {"name": "ops", "organization": "shop", "description": "x\ny"},
            "control character",
        ),
        (
            "/api/v1/api-keys",
            {"name": "k\x1b[31m", "service_account_id": "6f1d3c0e-8a51-4b0e-9a57-1c6d8d2b7a41"},
            "control character",
        ),
        (
            "/api/v1/role-grants",
            {
                "service_account_id": "6f1d3c0e-8a51-4b0e-9a57-1c6d8d2b7a41",
                "role_name": "CLUSTER_OPERATOR",
                "resource_type": "CLUSTER",
                "resource_id": "li\x00ve",
            },
            "NUL",
        ),
    ],
)
async def test_identity_names_hold_no_control_characters(
    api: httpx.AsyncClient, path: str, body: dict[str, str], reason: str
) -> None:
    """Free text of the identity bodies follows the commands' rule (``plain_text``): it is shown
    in lists, the CLI and the audit trail, and PostgreSQL cannot hold a NUL."""
    response = await api.post(path, json=body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["message"]
