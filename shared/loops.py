"""A service's long-running loop survives what it depends on going away for a while.

A loop that reads the event store or the shared database (the scheduler's tick, a log follower)
meets errors while PostgreSQL restarts or the network pauses. :func:`run_until_stopped` runs the
loop again after a pause instead of letting the process die: the loop starts over from the
sources of truth (the store and its positions), so nothing is lost, and its error is logged
once per failure, not silently swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0


async def run_until_stopped(
    loop: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    what: str,
    pause: float = RESTART_PAUSE_SECONDS,
) -> None:
    """Run ``loop(stop)`` until ``stop`` is set, starting it again ``pause`` seconds after it
    fails."""
    while not stop.is_set():
        try:
            await loop(stop)
        except Exception:
            log.exception("%s failed; starting it again in %.0f s", what, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
        else:
            return
