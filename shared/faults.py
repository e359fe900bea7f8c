"""Test-only fault points: a named place where a process can be made to die, or to stop and wait
for a test to SIGKILL it, to prove that what it leaves behind is recovered (e.g. a job recorded
as started whose worker never ran; a slot recorded whose TakeBackup was never sent).

Inert unless ``MANAGED_BACKUPS_TEST_CRASH_AT`` (die there) or ``MANAGED_BACKUPS_TEST_HOLD_AT``
(stop there) names the point: unset, a point costs one comparison. Refused outright in a
production-like configuration (see ``Settings.production_like``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from managed_backups.shared.settings import Settings

log = logging.getLogger(__name__)

FaultPoint = Callable[[str], None]
"""Passes a named place; a component that has no settings takes one of these."""

HOLDING = "test fault point {}: holding here until killed"
"""What a held process logs (the fault suite waits for it before its SIGKILL)."""


def no_fault(name: str) -> None:
    """The fault point of a component built without settings: nothing ever happens."""


def crash_point(settings: Settings, name: str) -> None:
    """Die at once, like a SIGKILL (no cleanup, no flush), if the settings name this point;
    stop here for good (the calling thread) if they name it as the point to hold at."""
    if settings.test_crash_at != name and settings.test_hold_at != name:
        return
    if settings.production_like() is not None:
        log.error("ignoring the test fault point %s in a production-like configuration", name)
        return
    if settings.test_hold_at == name:
        log.warning(HOLDING.format(name))
        while True:  # the test SIGKILLs the process (nothing here returns)
            time.sleep(3600)
    log.warning("test fault point %s: exiting abruptly", name)
    os._exit(86)


def fault_points(settings: Settings) -> FaultPoint:
    """The fault points of ``settings`` as a callable for components built without them."""
    if settings.test_crash_at is None and settings.test_hold_at is None:
        return no_fault
    return lambda name: crash_point(settings, name)
