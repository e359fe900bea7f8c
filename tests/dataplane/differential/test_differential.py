"""Every scenario of the catalogue: each step's backup, restored, equals the source as of it.

The default run takes the scenarios marked ``fast``; ``MANAGED_BACKUPS_DIFFERENTIAL=all`` takes
the whole catalogue (``pytest tests/dataplane/differential``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import PgServer
from .catalogue import CATALOGUE
from .harness import Scenario, run_scenario

pytestmark = pytest.mark.integration

_ALL = os.environ.get("MANAGED_BACKUPS_DIFFERENTIAL", "") == "all"
SELECTED = [
    pytest.param(
        s,
        id=s.name,
        marks=[pytest.mark.xfail(strict=True, reason=s.known_failure)] if s.known_failure else [],
    )
    for s in CATALOGUE
    if s.fast or _ALL
]


@pytest.mark.parametrize("scenario", SELECTED)
def test_restored_equals_source_as_of_each_backup(
    pg: PgServer, scenario: Scenario, tmp_path: Path
) -> None:
    run_scenario(pg, scenario, tmp_path)
