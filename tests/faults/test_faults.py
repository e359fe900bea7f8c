"""The fault-injection suite: the real stack, two instances of every service, one fault at a time
(then mixed), and after each the invariants checked and printed (``tests/faults/invariants.py``).

Every fault is shown to have happened (what was killed, refused or paused, and the trace it left
in the sources of truth); a fault that could not be injected fails its test.

``pytest -q tests/faults`` runs the default subset (``DEFAULT``: a few minutes);
``MANAGED_BACKUPS_FAULTS=all`` runs every fault and the mixed round;
``MANAGED_BACKUPS_FAULTS=name,name`` runs the faults named.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.faults import ALL, DEFAULT, FAULTS, Outcome
from tests.faults.stack import Stack
from tests.faults.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def selected() -> list[str]:
    chosen = os.environ.get("MANAGED_BACKUPS_FAULTS", "").strip()
    if not chosen:
        return list(DEFAULT)
    if chosen == "all":
        return list(ALL)
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(ALL)}")
    return names


RESULTS: list[Outcome] = []


@pytest.fixture(scope="module")
async def workload(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Workload]:
    base = Path(tmp_path_factory.mktemp("faults"))
    stack = Stack(base)
    began = time.monotonic()
    try:
        stack.start_servers()
        await stack.prepare()
        stack.start_services()
        await stack.wait_ready()
        work = Workload(stack)
        work.timings["stack start"] = time.monotonic() - began
        await work.setup()
        report, _ = await work.check("start-up (no fault)")
        print("\n" + report.render())
        assert report.held, report.render()
        yield work
    finally:
        await stack.close()
        if RESULTS:
            print("\n== faults survived")
            for outcome in RESULTS:
                print(outcome.row())


@pytest.mark.parametrize("fault", selected())
async def test_fault(workload: Workload, fault: str) -> None:
    began = time.monotonic()
    evidence = await FAULTS[fault].inject(workload)
    await workload.settle()
    report, state = await workload.check(FAULTS[fault].title)
    seconds = time.monotonic() - began
    outcome = Outcome(fault, FAULTS[fault].title, evidence, report, seconds)
    RESULTS.append(outcome)
    print("\n" + outcome.render())
    assert evidence.happened, f"the fault was not shown to happen: {evidence}"
    assert report.held, report.render()
    for check in FAULTS[fault].after:
        check(workload, state, evidence)
