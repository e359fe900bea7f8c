"""The one wait for the views (read-your-writes): the API answers a change with it, the tests
read the views after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import HTTPException

from managed_backups.services.api.dependencies import ProjectionWait
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import PROJECTION_NAME, ReadModels


def project_up_to(models: ReadModels, position: int) -> None:
    """What the projections service records after applying a batch."""
    models.db.execute(
        f"INSERT INTO {models.tables.position} (name, position) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (PROJECTION_NAME, position),
    )


@pytest.fixture
def models(tmp_path: Path) -> ReadModels:
    models = ReadModels(SqlDatabase(f"sqlite:///{tmp_path / 'views.sqlite'}"))
    models.create()
    return models


class CountedReads(ReadModels):
    reads = 0

    def position(self) -> int:
        self.reads += 1
        return super().position()


async def test_the_wait_ends_once_the_views_reached_the_position(tmp_path: Path) -> None:
    models = CountedReads(SqlDatabase(f"sqlite:///{tmp_path / 'views.sqlite'}"))
    models.create()
    await models.wait_until(None, 0.001)  # a command that recorded nothing: no wait
    assert models.reads == 0
    project_up_to(models, 2)
    await models.wait_until(2, 0.001)  # reached: never a timeout, however short the wait
    waiting = asyncio.create_task(models.wait_until(3, 30))
    while models.reads < 3:  # it read position 2 twice and goes on waiting
        await asyncio.sleep(0.001)
    assert not waiting.done()
    project_up_to(models, 3)
    await waiting


async def test_late_views_time_out_and_the_api_answers_503(models: ReadModels) -> None:
    project_up_to(models, 2)
    with pytest.raises(TimeoutError):
        await models.wait_until(3, 0.05)
    with pytest.raises(HTTPException) as late:
        await ProjectionWait(models, seconds=0.05).until(3)
    assert late.value.status_code == 503
    assert late.value.detail == "the change is recorded but the views have not caught up yet"
    await ProjectionWait(models, seconds=0.05).until(2)
