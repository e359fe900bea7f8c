"""Fair slots: at most ``size`` restore jobs of an instance run at once, and a freed slot goes
to the organization with the fewest jobs running (ties: whose oldest waiting job came first).

One organization's queue of jobs therefore never keeps another's job waiting longer than it
takes one of the running jobs to end: with two slots and an organization that queued sixty
restores, another organization's restore runs as soon as either slot frees. Within an
organization, jobs run in the order they were queued.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairSlots:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.running: Counter[str] = Counter()
        self.waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()

    @property
    def busy(self) -> int:
        return sum(self.running.values())

    def queued(self, organization: str | None = None) -> int:
        """Jobs waiting for a slot (of ``organization``, or of all)."""
        if organization is not None:
            return len(self.waiting.get(organization, ()))
        return sum(len(q) for q in self.waiting.values())

    @asynccontextmanager
    async def slot(self, organization: str) -> AsyncIterator[None]:
        """Hold one slot for a job of ``organization`` (waiting fairly for it)."""
        if self.busy < self.size and not self.waiting:
            self.running[organization] += 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.setdefault(organization, deque()).append((next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release(organization)  # granted just before the cancel: give it on
                else:
                    self._forget(organization, granted)
                raise
        try:
            yield
        finally:
            self._release(organization)

    def _release(self, organization: str) -> None:
        self.running[organization] -= 1
        if self.running[organization] <= 0:
            del self.running[organization]
        self._grant()

    def _forget(self, organization: str, granted: asyncio.Future[None]) -> None:
        queue = self.waiting.get(organization)
        if queue is None:
            return
        for entry in list(queue):
            if entry[1] is granted:
                queue.remove(entry)
        if not queue:
            del self.waiting[organization]

    def _grant(self) -> None:
        while self.busy < self.size and self.waiting:
            organization = min(self.waiting, key=lambda o: (self.running[o], self.waiting[o][0][0]))
            queue = self.waiting[organization]
            _, granted = queue.popleft()
            if not queue:
                del self.waiting[organization]
            if granted.done():  # its waiter was cancelled
                continue
            self.running[organization] += 1
            granted.set_result(None)
