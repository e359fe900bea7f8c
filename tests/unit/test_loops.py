"""A service loop that fails (its database went away) is started again, not left dead."""

from __future__ import annotations

import asyncio

from managed_backups.shared.loops import run_until_stopped


async def test_a_failed_loop_is_started_again_until_it_ends() -> None:
    calls: list[int] = []

    async def loop(stop: asyncio.Event) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("the event store restarts")

    await asyncio.wait_for(run_until_stopped(loop, asyncio.Event(), "test", pause=0.01), 5)
    assert len(calls) == 3


async def test_a_stopped_loop_is_not_started_again() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def loop(stop_: asyncio.Event) -> None:
        calls.append(1)
        stop.set()
        raise ConnectionError("failed while stopping")

    await asyncio.wait_for(run_until_stopped(loop, stop, "test", pause=0.01), 5)
    assert calls == [1]
