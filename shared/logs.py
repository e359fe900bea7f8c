"""Logs that cannot flood: repeats rate-limited, files rotated.

:class:`RepeatLimit` lets through at most ``burst`` records of one kind (logger, level and
message template, not its arguments) per ``window`` seconds, counts the rest, and says how many
it held back on the next record of that kind after the window. A client that makes the API log
the same warning (with its traceback) for every one of thousands of connections therefore costs
a few lines a minute, not megabytes a second. The kinds remembered are bounded too (least
recently seen forgotten first).

:func:`configure_logging` installs it on every handler of the root logger (uvicorn's loggers
propagate there: the API passes ``log_config=None``), and, when a log file is set, writes to a
size-rotated file (``MANAGED_BACKUPS_LOG_FILE``, ``LOG_MAX_BYTES``, ``LOG_BACKUPS``).
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_KINDS = 1024


@dataclass
class _Kind:
    window_start: float
    seen: int = 0
    held: int = 0


class RepeatLimit(logging.Filter):
    def __init__(
        self,
        burst: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._kinds: OrderedDict[tuple[str, int, str], _Kind] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or now - kind.window_start >= self.window:
                held = kind.held if kind is not None else 0
                self._kinds[key] = _Kind(now, seen=1)
                self._kinds.move_to_end(key)
                while len(self._kinds) > MAX_KINDS:
                    self._kinds.popitem(last=False)
                if held:
                    record.msg = (
                        f"{record.msg} [{held} more like this held back in the last "
                        f"{self.window:.0f} s]"
                    )
                return True
            self._kinds.move_to_end(key)
            kind.seen += 1
            if kind.seen <= self.burst:
                return True
            kind.held += 1
            return False


def configure_logging(
    service: str,
    level: str = "INFO",
    file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Log to stderr, or to ``file`` rotated at ``max_bytes`` (``backups`` kept), every
    handler behind a :class:`RepeatLimit`."""
    handlers: list[logging.Handler] = []
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups)
        )
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
        handlers=handlers or None,
        force=True,
    )
    limit = RepeatLimit()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("faststream").setLevel(logging.WARNING)
