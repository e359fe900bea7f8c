"""PostgreSQL's client tools: finding them and running them as streams.

:func:`find_pg_tool` picks the newest client tools available (they must be at least the
server's major version); :func:`run_tool` runs one with a prepared environment (secrets travel
there, never on the command line) and streams its output with bounded memory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from .chunks import CancelFlag, StreamCancelled
from .errors import BackupError, ErrorCode, tool_error

__all__ = ["find_pg_tool", "run_tool", "tool_environment"]

_READ_BLOCK = 1 << 20
PASSED_TO_TOOLS = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
"""What a client tool keeps of the service's environment: where programs are, the locale."""


def tool_environment(
    env: Mapping[str, str] | None = None, password: str | None = None
) -> dict[str, str]:
    """The whole environment of a PostgreSQL client tool (``pg_dump``, ``pg_restore``,
    ``psql``): the cluster's password (``PGPASSWORD``), the connection settings ``env`` names
    (libpq's own lookups closed: ``shared/cluster_connection.py``), the locale and ``PATH``.
    Nothing else of the service's environment reaches it: not its broker password, not its
    settings, not a cloud credential. Without a password of the cluster's own (a caller outside
    the services, a benchmark), libpq's own ``PG*`` variables apply, ``PGPASSWORD`` excepted."""
    child = {k: os.environ[k] for k in PASSED_TO_TOOLS if k in os.environ}
    if password is None:
        child.update(
            (k, v) for k, v in os.environ.items() if k.startswith("PG") and k != "PGPASSWORD"
        )
    child.update(env or {})
    if password is not None:
        child["PGPASSWORD"] = password
    return child


def find_pg_tool(name: str, bindir: Path | None = None) -> str:
    """Path of a PostgreSQL client tool: ``bindir``, ``$PG_BINDIR``, the newest
    ``/usr/lib/postgresql/*/bin`` (client tools must be at least the server's version), PATH."""
    dirs: list[Path] = []
    if bindir is not None:
        dirs.append(bindir)
    env = os.environ.get("PG_BINDIR")
    if env:
        dirs.append(Path(env))

    def major(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    dirs += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    ]
    for d in dirs:
        candidate = d / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise BackupError(ErrorCode.TOOL_MISSING, f"{name} not found", f"locate {name}")


def run_tool(
    cmd: list[str],
    *,
    env: Mapping[str, str],
    step: str,
    stdin: bytes | None = None,
    cancel: CancelFlag | None = None,
) -> Iterator[bytes]:
    """Run a client tool, yield its standard output in 1 MiB blocks.

    Its standard error goes to a temporary file (never a pipe that could fill up); a non-zero
    exit raises :func:`~.errors.tool_error`'s :class:`BackupError`; ``cancel`` set (checked
    between blocks) raises :class:`~.chunks.StreamCancelled`. The child runs in its own
    session and is killed if the caller stops reading early."""
    with tempfile.TemporaryFile() as errf:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errf,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as exc:
            raise BackupError(ErrorCode.TOOL_MISSING, f"cannot run {cmd[0]}: {exc}", step) from None
        finished = False
        try:
            assert proc.stdout is not None
            if stdin is not None:
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(stdin)
                    proc.stdin.close()
            while True:
                if cancel is not None and cancel.is_set():
                    raise StreamCancelled()
                block = proc.stdout.read(_READ_BLOCK)
                if not block:
                    break
                yield block
            rc = proc.wait()
            finished = True
            if rc != 0:
                errf.seek(0)
                text = errf.read().decode("utf-8", "replace")
                raise tool_error(Path(cmd[0]).name, rc, text, step)
        finally:
            if not finished and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
