"""The API's bodies on the wire, byte for byte, over views built from real events: the typed
response models keep every key and every null the views hold, in the views' order, with the
views' time text, and add none (a live cluster has no ``backups_kept_until``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.shared.identity import Identity
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.factories import AT, new_cluster
from tests.unit.api_client import api_client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    identity = Identity(runtime.store, runtime.db, runtime.clock)
    key, _ = identity.ensure_admin_key(runtime.settings.admin_key_path)
    live, gone = new_cluster("live"), new_cluster("gone", tier="ADVANCED")
    gone.delete(command_id=None, at=AT + timedelta(days=1), by="test")
    runtime.store.save_all(live, gone)
    Projector(runtime.store, ReadModels(runtime.db)).catch_up()
    async with api_client(runtime, key) as client:
        yield client, runtime
    runtime.close()


def cluster_text(cluster_id: str, tier: str, state: str, version: int, deleted: bool) -> str:
    deleted_at = '"2026-03-02T00:00:00.000000Z"' if deleted else "null"
    kept = ',"backups_kept_until":"2026-03-09T00:00:00.000000Z"' if deleted else ""
    return (
        f'{{"id":"{cluster_id}","name":"{cluster_id}","organization":"acme","tier":"{tier}",'
        '"regions":["us-east-1"],"engine":"postgres","database_version":"15",'
        '"connection_ref":"postgresql://u@h/postgres","backup_region":"us-east-1",'
        f'"state":"{state}","backups_config":{{"enabled":true,"frequency_minutes":60,'
        '"retention_days":7},"retention_changed":false,'
        f'"created_at":"2026-03-01T00:00:00.000000Z","deleted_at":{deleted_at},'
        f'"version":{version}{kept}}}'
    )


async def test_cluster_bodies_keep_the_views_keys_nulls_and_times(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    listed = await client.get("/api/v1/clusters", params={"show_deleted": "true"})
    assert listed.status_code == 200
    assert listed.headers["content-type"] == "application/json"
    live = cluster_text("live", "STANDARD", "READY", 1, deleted=False)
    gone = cluster_text("gone", "ADVANCED", "DELETED", 2, deleted=True)
    assert listed.text == f'{{"clusters":[{gone},{live}]}}'
    one = await client.get("/api/v1/clusters/live")
    assert one.text.startswith(live[:-1] + ',"recoverability":{"oldest_restorable":null,')
    assert "backups_kept_until" not in one.text
    assert json.loads(one.text)["recoverability"] == {
        "oldest_restorable": None,
        "newest_restorable": None,
        "restorable_backups": 0,
        "last_successful_backup": None,
        "stored_bytes": 0,
        "expired_backups": 0,
        "deleted_backups": 0,
        "bytes_freed": 0,
        "kept_past_retention": False,
    }
    config = await client.get("/api/v1/clusters/live/backups-config")
    assert config.text == '{"enabled":true,"frequency_minutes":60,"retention_days":7}'
    empty = await client.get("/api/v1/clusters/live/backups")
    assert empty.text == '{"backups":[],"pagination":{"next_page":null,"previous_page":null}}'


async def test_errors_and_missing_tokens_keep_their_body_and_headers(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    for header in ("", "Basic abc", "Bearer   "):
        anonymous = await client.get("/api/v1/clusters", headers={"Authorization": header})
        assert anonymous.status_code == 401
        assert "www-authenticate" not in anonymous.headers
        assert anonymous.text == (
            '{"code":401,"message":"missing bearer token: send Authorization: Bearer <API key>"}'
        )
    gone = await client.get("/api/v1/clusters/gone/backups/config")
    assert gone.status_code == 404
    assert gone.text == '{"code":404,"message":"cluster gone was deleted"}'
    invalid = await client.get("/api/v1/clusters/live/events", params={"after": -1})
    assert invalid.status_code == 400
    assert invalid.text == (
        '{"code":400,"message":"after: Input should be greater than or equal to 0"}'
    )
