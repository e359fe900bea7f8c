"""The HTTP API in process, for unit tests: no broker (a command sent fails the test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from managed_backups.services.api.app import create_app
from managed_backups.services.runtime import Runtime


class NoGateway:
    async def request(self, topic: str, body: dict[str, Any], timeout: float = 30) -> Any:
        raise AssertionError("no command may be sent in these tests")


@contextlib.asynccontextmanager
async def api_client(runtime: Runtime, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API app over ``runtime``, authenticated with API key ``key``."""
    app = create_app(runtime, NoGateway())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        yield client
