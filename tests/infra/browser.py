"""Headless Chromium for the console's browser tests: Debian's ``chromium`` package, driven by
Playwright's Python package pointed at that executable (no browser download, ever).

``MANAGED_BACKUPS_CHROMIUM`` names another executable. A missing browser fails the test with
what to install; it never skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.async_api import Browser, Playwright

FLAGS = (
    # As root (CI) Chromium needs --no-sandbox; the rest keep it from reaching for the network
    # (updates, sync, field trials), which a closed network refuses many times at each start.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium_executable() -> str:
    named = os.environ.get("MANAGED_BACKUPS_CHROMIUM")
    found = named or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        raise RuntimeError(
            f"no Chromium at {found}: install Debian's package (apt-get install chromium; "
            ".ci/run does) or set MANAGED_BACKUPS_CHROMIUM"
        )
    return found


async def launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(
        executable_path=chromium_executable(), headless=True, args=list(FLAGS)
    )


def output_dir(name: str) -> Path:
    """Where a browser test saves its screenshots: ``test-output/<name>`` under the repository
    (``MANAGED_BACKUPS_TEST_OUTPUT`` moves it), emptied first."""
    root = Path(
        os.environ.get("MANAGED_BACKUPS_TEST_OUTPUT") or Path(__file__).parents[2] / "test-output"
    )
    directory = root / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory
