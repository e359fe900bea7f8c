"""Logs cannot flood: repeats are held back and counted, files rotate."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from managed_backups.shared.logs import MAX_KINDS, RepeatLimit, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "uvicorn.error") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_a_thousand_repeats_cost_a_few_lines_and_a_count() -> None:
    clock = Clock()
    limit = RepeatLimit(burst=5, window=60, clock=clock)
    passed = [limit.filter(record("Invalid HTTP request from %s", i)) for i in range(1000)]
    assert sum(passed) == 5
    assert limit.filter(record("another message"))  # other kinds are not held back
    clock.now = 61
    summary = record("Invalid HTTP request from %s", "x")
    assert limit.filter(summary)
    assert "[995 more like this held back in the last 60 s]" in summary.getMessage()


def test_the_kinds_remembered_are_bounded() -> None:
    limit = RepeatLimit()
    for i in range(MAX_KINDS * 3):
        limit.filter(record(f"unique {i}"))
    assert len(limit._kinds) == MAX_KINDS


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_service_log_file_rotates(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "logs" / "api.log"
    configure_logging("api", "INFO", log, max_bytes=2048, backups=2)
    for i in range(200):
        logging.getLogger("test").info("distinct line %d %s", i, "x" * 40, extra={})
        logging.getLogger(f"test.{i}").info("line of logger %d", i)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["api.log", "api.log.1", "api.log.2"]
    assert all((log.parent / f).stat().st_size <= 2048 + 200 for f in files)
