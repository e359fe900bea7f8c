"""The HTTP API's limits: bodies checked before they are read, 400s for out-of-range queries, a
private data directory."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.shared.identity import Identity
from managed_backups.shared.settings import Settings
from tests.unit.api_client import api_client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    identity = Identity(runtime.store, runtime.db, runtime.clock)
    key, _ = identity.ensure_admin_key(runtime.settings.admin_key_path)
    async with api_client(runtime, key) as client:
        yield client, runtime
    runtime.close()


async def test_bodies_are_authenticated_and_bounded_before_they_are_read(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    big = b'{"advance_seconds": 1, "pad": "' + b"x" * 200_000 + b'"}'
    anonymous = await client.post("/admin/clock", content=big, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and "bearer" in anonymous.json()["message"]
    wrong = await client.post(
        "/admin/clock", content=big, headers={"Authorization": "Bearer mbk_x_y"}
    )
    assert wrong.status_code == 401
    too_big = await client.put("/api/v1/clusters/c1/connection-secret", content=big)
    assert too_big.status_code == 413 and too_big.json()["code"] == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096

    streamed = await client.put("/api/v1/clusters/c1/connection-secret", content=chunks())
    assert streamed.status_code == 413
    small = await client.put("/api/v1/clusters/c1/connection-secret", json={"password": "p"})
    assert small.status_code == 404  # read and handled: no such cluster


@pytest.mark.parametrize(
    "params",
    [
        {"pagination.page": str(10**12)},
        {"start_time": "0001-01-01T00:00:00+14:00"},
        {"end_time": "9999-12-31T23:59:59-14:00"},
    ],
)
async def test_out_of_range_queries_are_400(
    api: tuple[httpx.AsyncClient, Runtime], params: dict[str, str]
) -> None:
    client, _ = api
    response = await client.get("/api/v1/clusters/c1/backups", params=params)
    assert response.status_code == 400, response.text


async def test_out_of_range_after_is_400(api: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, _ = api
    response = await client.get("/api/v1/clusters/c1/events", params={"after": str(10**30)})
    assert response.status_code == 400


async def test_the_data_directory_and_the_store_are_private(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    _, runtime = api
    data_dir = runtime.settings.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "events.sqlite").stat().st_mode) == 0o600
