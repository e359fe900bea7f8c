"""Test-only fault points (``shared/faults.py``): inert unless named, ignored in a
production-like configuration, and a held point stops its thread until the process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from managed_backups.shared.faults import HOLDING, crash_point, fault_points, no_fault
from managed_backups.shared.settings import Settings


def test_unset_fault_points_are_the_inert_one() -> None:
    assert fault_points(Settings()) is no_fault
    assert fault_points(Settings(test_hold_at="somewhere")) is not no_fault


def test_a_point_not_named_returns() -> None:
    points = fault_points(Settings(test_hold_at="elsewhere", test_crash_at="elsewhere-too"))
    points("here")  # returns: neither named


def test_a_production_like_configuration_ignores_the_point() -> None:
    crash_point(Settings(test_hold_at="here", environment="production"), "here")
    crash_point(Settings(test_crash_at="here", environment="production"), "here")


def test_a_held_point_holds_until_killed() -> None:
    code = (
        "import logging; logging.basicConfig();"
        "from managed_backups.shared.faults import fault_points;"
        "from managed_backups.shared.settings import Settings;"
        "fault_points(Settings())('here');"
        "fault_points(Settings())('there');"
        "print('never', flush=True)"
    )
    env = {**os.environ, "MANAGED_BACKUPS_TEST_HOLD_AT": "there"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        line = b""
        while HOLDING.format("there").encode() not in line:
            assert time.monotonic() < deadline, "the point was not reached"
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the process ended instead of holding"
        assert proc.poll() is None  # it logged that it holds: it has not returned
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(30)
    assert proc.returncode == -signal.SIGKILL
    assert b"never" not in out
