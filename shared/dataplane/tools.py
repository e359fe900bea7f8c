"""PostgreSQL's client tools: choosing them for a server, and running them as streams.

:func:`client_tools_for` picks, for a server, the client tools of **the oldest major version
that is at least the server's** (the server's own major when available; its newest minor
release). At least the server's: ``pg_dump`` refuses a newer server. The oldest such: newer
tools write for newer servers (``pg_restore`` 17 and later set ``transaction_timeout``, which
an older server refuses), and a backup taken with the source's own major is read by the
``pg_restore`` chosen for any destination of that major or newer (a backup restores only
into the same or a newer major). **Servers of 13 and 14 get 15's tools** when there are such
(:data:`PREFERRED_MIN_MAJOR`), for backups and restores alike: 15 moved the public schema's
default owner and privileges, and its ``pg_dump`` is the first to write a pre-15 server's
explicitly, so such a backup restores into 15 and later with them (the source's own
``pg_dump`` writes nothing for them, and the destination's new defaults would apply); and its
archive needs a ``pg_restore`` of 15 or later (14's recreates the public schema under
``--no-owner``), which restores into 13 and 14 as their own does. Without 15 or later, a 13
server gets 14's tools. The candidates are the configured bin directories
(``MANAGED_BACKUPS_PG_BINDIRS``), or by default what the installation provides: Debian's
``/usr/lib/postgresql/*/bin``, the releases cached by
:mod:`managed_backups.shared.infra.postgres_binaries`, and the directory of ``pg_dump`` on
``PATH``. A server newer than every candidate is ``UNSUPPORTED``, naming both versions and what
to install. :func:`run_tool` runs a tool with a prepared environment (secrets travel there,
never on the command line) and streams its output with bounded memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..infra.postgres_binaries import (
    RELEASES,
    installed_bindirs,
)
from .chunks import CancelFlag, StreamCancelled
from .errors import BackupError, ErrorCode, tool_error

__all__ = [
    "PREFERRED_MIN_MAJOR",
    "REQUIRED_TOOLS",
    "ClientTools",
    "available_client_tools",
    "client_tools_for",
    "default_client_bindirs",
    "find_pg_tool",
    "run_tool",
    "tool_environment",
    "version_text",
]

_READ_BLOCK = 1 << 20
PASSED_TO_TOOLS = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
"""What a client tool keeps of the service's environment: where programs are, the locale."""
REQUIRED_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
"""A bin directory is a set of client tools when it holds all of these."""
PREFERRED_MIN_MAJOR = 15
"""Servers of older majors get client tools of this major when there are such (see the module
docstring)."""
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class ClientTools:
    """One set of client tools: its version (``pg_dump --version``) and bin directory."""

    version_num: int
    """``major * 10000 + minor``, as ``server_version_num`` counts."""
    bindir: Path

    @property
    def major(self) -> int:
        return self.version_num // 10000

    @property
    def version(self) -> str:
        return version_text(self.version_num)

    def path(self, name: str) -> str:
        """The path of tool ``name`` of this set."""
        return str(self.bindir / name)


def version_text(version_num: int) -> str:
    """``170011`` as ``17.11``."""
    return f"{version_num // 10000}.{version_num % 10000}"


def default_client_bindirs() -> list[Path]:
    """What the installation provides: Debian's and the cached releases' bin directories,
    and the directory of ``pg_dump`` on ``PATH``."""
    dirs = installed_bindirs()
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).parent)
    return dirs


@lru_cache(maxsize=64)
def _client_tools_in(bindir: Path, stamp: float) -> ClientTools | None:
    if not all(os.access(bindir / name, os.X_OK) for name in REQUIRED_TOOLS):
        return None
    try:
        out = subprocess.run(
            [str(bindir / "pg_dump"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out.stdout)
    if out.returncode != 0 or match is None:
        return None
    return ClientTools(int(match.group(1)) * 10000 + int(match.group(2) or 0), bindir)


def available_client_tools(bindirs: Sequence[Path] | None = None) -> list[ClientTools]:
    """The complete, runnable client tool sets among ``bindirs`` (default:
    :func:`default_client_bindirs`), newest first."""
    found: dict[Path, ClientTools] = {}
    for bindir in bindirs if bindirs else default_client_bindirs():
        try:
            stamp = (bindir / "pg_dump").stat().st_mtime
        except OSError:
            continue
        tools = _client_tools_in(bindir, stamp)
        if tools is not None:
            found.setdefault(bindir, tools)
    return sorted(found.values(), reverse=True)


def client_tools_for(
    server_version_num: int,
    bindirs: Sequence[Path] | None = None,
    *,
    step: str,
    prefer_major_at_least: int = PREFERRED_MIN_MAJOR,
) -> ClientTools:
    """The client tools of the oldest major that is at least the server's, its newest minor
    (see the module docstring); of at least ``prefer_major_at_least`` when there are such;
    ``UNSUPPORTED`` naming both versions and what to install when the server is
    newer than every one, ``TOOL_MISSING`` when there is none at all."""
    available = available_client_tools(bindirs)
    server_major = server_version_num // 10000
    usable = [t for t in available if t.major >= server_major]
    if usable:
        preferred = [t for t in usable if t.major >= prefer_major_at_least] or usable
        return min(preferred, key=lambda t: (t.major, -t.version_num))
    where = (
        "name their bin directory in MANAGED_BACKUPS_PG_BINDIRS"
        if bindirs
        else "they are found in /usr/lib/postgresql/*/bin, the binaries cache or PATH"
    )
    install = f"install PostgreSQL {server_major}'s client tools ({', '.join(REQUIRED_TOOLS)})"
    if server_major in RELEASES and RELEASES[server_major].has_client_tools:
        install += (
            " (python -m managed_backups.shared.infra.postgres_binaries fetch --clients-only "
            f"{server_major}, or your distribution's package)"
        )
    if not available:
        raise BackupError(
            ErrorCode.TOOL_MISSING,
            f"no PostgreSQL client tools found for the server's PostgreSQL "
            f"{version_text(server_version_num)}: {install}; {where}",
            step,
        )
    have = ", ".join(f"{t.version} in {t.bindir}" for t in available)
    raise BackupError(
        ErrorCode.UNSUPPORTED,
        f"the server runs PostgreSQL {version_text(server_version_num)}, newer than every "
        f"client tool set available (pg_dump {have}); pg_dump refuses a server newer than "
        f"itself: {install}; {where}",
        step,
    )


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
    """Path of a PostgreSQL client tool in ``bindir``, else in the newest client tools
    available (for callers that know no server version: tests and benchmarks)."""
    if bindir is not None and (bindir / name).is_file():
        return str(bindir / name)
    for tools in available_client_tools():
        if os.access(tools.bindir / name, os.X_OK):
            return tools.path(name)
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
