"""`managed-backups up` as a user runs it: started as its own process, read until it says it is
ready, stopped the way the README says (Ctrl-C, or SIGTERM), and checked to have stopped cleanly.
Used by the tests that follow the README as a new user would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from managed_backups.shared.infra.kafka import free_ports

READY = "Ctrl-C stops everything"


def prepare_data_dir(data: Path) -> int:
    """A new data directory whose broker port, as `up` remembers it from an earlier start, is a
    free one: not 9092, which another `up` on this machine (another test run) may take at the
    same moment. Returns another free port, for the API."""
    data.mkdir(parents=True)
    api_port, kafka_port = free_ports(2)
    (data / "kafka-bootstrap").write_text(f"127.0.0.1:{kafka_port}\n")
    return api_port


def user_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the test run's own `MANAGED_BACKUPS_*` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    env.update(extra)
    return env


@contextmanager
def running_up(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path | None = None,
    *,
    ctrl_c: bool = False,
    timeout: float = 240.0,
) -> Iterator[str]:
    """Run `argv` (an `up` command, or a shell running one) until `up` prints that it is ready;
    yield what it printed by then. On exit, stop it: SIGTERM to the process, or with `ctrl_c`
    SIGINT to its whole process group as a terminal's Ctrl-C sends it; then check it stopped
    cleanly."""
    up = subprocess.Popen(
        list(argv),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=ctrl_c,
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if READY in line:
                break
        output = "".join(lines)
        assert READY in output, output
        yield output
    finally:
        if ctrl_c:
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGTERM)
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            if ctrl_c:
                os.killpg(up.pid, signal.SIGKILL)
            else:
                up.kill()
            raise
    if not ctrl_c:
        assert up.returncode == 0, rest
    assert "stopped" in rest, rest
