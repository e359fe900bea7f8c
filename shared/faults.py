"""Test-only fault points: a named place where a process can be made to die, to prove that what
it leaves behind is recovered (e.g. a job recorded as started whose worker never ran).

Inert unless ``MANAGED_BACKUPS_TEST_CRASH_AT`` names the point, and refused outright in a
production-like configuration (see ``Settings.production_like``).
"""

from __future__ import annotations

import logging
import os

from managed_backups.shared.settings import Settings

log = logging.getLogger(__name__)


def crash_point(settings: Settings, name: str) -> None:
    """Die at once, like a SIGKILL (no cleanup, no flush), if the settings name this point."""
    if settings.test_crash_at != name:
        return
    if settings.production_like() is not None:
        log.error("ignoring the test fault point %s in a production-like configuration", name)
        return
    log.warning("test fault point %s: exiting abruptly", name)
    os._exit(86)
