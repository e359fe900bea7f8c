"""Throw-away real PostgreSQL servers for tests, demos and benchmarks (no Docker needed).

``LocalPostgres`` runs ``initdb`` into a temporary directory and starts ``postgres`` on
``127.0.0.1`` on a free port, with a password-authenticated superuser ``postgres``. initdb
refuses to run as root, so when the current process is root the server runs as an unprivileged
OS user (Debian's ``postgres`` user, or one created with ``useradd``) that owns the directory.

``postgres_for_tests`` picks, in order: ``$POSTGRES_URL`` (an existing server), else by the test
backend (``MANAGED_BACKUPS_TEST_BACKEND``, :mod:`tests.infra.backend`) a container or a
``LocalPostgres``.

**Which major version.** ``LocalPostgres(major=17)`` starts a PostgreSQL 17 server: Debian's
package when installed, else the pinned release of
:mod:`managed_backups.shared.infra.postgres_binaries` (fetched into the cache on first use).
Without ``major``, ``$MANAGED_BACKUPS_TEST_PG_MAJOR`` names it (the version matrix of
``.ci/run`` sets it); without either, the newest installed Debian server (or ``$PG_BINDIR``).
When the tests run as root the server runs as an unprivileged user, which cannot enter
``/root``: a cached release is then copied once below ``/var/tmp/managed-backups-postgresql``.

Usage::

    with LocalPostgres() as pg:
        psycopg.connect(pg.url)
        pg.url_for("other_db")
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

from managed_backups.shared.infra.postgres_binaries import (
    SUPPORTED_MAJORS,
    installed_bindirs,
    server_bindir,
)
from tests.infra.backend import TestBackend, TestBackendError, require_docker, test_backend
from tests.infra.containers import postgres_container

__all__ = [
    "LocalPostgres",
    "LocalPostgresError",
    "find_pg_bindir",
    "postgres_for_tests",
    "test_pg_major",
    "url_with_database",
]

TEST_PG_MAJOR_ENV = "MANAGED_BACKUPS_TEST_PG_MAJOR"
_SHARED_BINARIES = Path("/var/tmp/managed-backups-postgresql")

_SERVICE_USER_CANDIDATES = ("postgres", "mbpostgres")

#: Settings for a fast, disposable server (durability is irrelevant for throw-away data).
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "60",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
    "logging_collector": "off",
}


class LocalPostgresError(RuntimeError):
    """The server could not be initialised, started or stopped."""


def test_pg_major() -> int | None:
    """The major version ``$MANAGED_BACKUPS_TEST_PG_MAJOR`` names (``None`` when unset)."""
    raw = os.environ.get(TEST_PG_MAJOR_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) not in SUPPORTED_MAJORS:
        supported = ", ".join(str(m) for m in SUPPORTED_MAJORS)
        raise LocalPostgresError(f"{TEST_PG_MAJOR_ENV}={raw!r}: use one of {supported}")
    return int(raw)


def find_pg_bindir(major: int | None = None) -> Path:
    """The directory holding ``initdb`` and ``postgres`` of ``major`` (default:
    :func:`test_pg_major`); without one, the newest installed.

    For a major: Debian's package, else the pinned release (fetched on first use). Without:
    ``$PG_BINDIR``; then ``pg_config --bindir`` when it holds ``initdb`` (Debian's
    ``/usr/bin/pg_config`` points at wrappers without it); then ``/usr/lib/postgresql/*/bin``.
    """
    major = major if major is not None else test_pg_major()
    if major is not None:
        return server_bindir(major)
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and (Path(out) / "initdb").is_file():
                return Path(out)
    candidates = [
        Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").is_file()
    ]

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    if candidates:
        return max(candidates, key=major)
    raise LocalPostgresError(
        "no PostgreSQL server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin); "
        "on Debian: apt-get install postgresql"
    )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def url_with_database(url: str, dbname: str) -> str:
    """``url`` with its path (database name) replaced by ``dbname``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def _service_user() -> pwd.struct_passwd:
    """An unprivileged OS user to run the server as (created with useradd if needed)."""
    for name in _SERVICE_USER_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    name = _SERVICE_USER_CANDIDATES[-1]
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LocalPostgresError(f"cannot create OS user {name!r} for PostgreSQL: {exc}") from exc
    return pwd.getpwnam(name)


def _traversable_by_others(path: Path) -> bool:
    """Whether every existing ancestor of ``path`` can be searched by an unrelated OS user."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            return False
    return True


def _bindir_for(user: pwd.struct_passwd | None, bindir: Path) -> Path:
    """``bindir``, or a copy of its release the unprivileged ``user`` can run (the cache of a
    root user is below ``/root``, which nobody else may enter)."""
    if user is None or _traversable_by_others(bindir):
        return bindir
    release = bindir.parent
    copy = _SHARED_BINARIES / release.name
    if (copy / ".complete").is_file():
        return copy / "bin"
    _SHARED_BINARIES.mkdir(parents=True, exist_ok=True)
    _SHARED_BINARIES.chmod(0o755)
    with (_SHARED_BINARIES / f".{release.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (copy / ".complete").is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{release.name}.", dir=_SHARED_BINARIES))
            try:
                shutil.copytree(release, staging / "release", symlinks=True)
                (staging / "release").chmod(0o755)
                shutil.rmtree(copy, ignore_errors=True)
                (staging / "release").rename(copy)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return copy / "bin"


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, entry), uid, gid, follow_symlinks=False)


class LocalPostgres:
    """A disposable PostgreSQL server on 127.0.0.1 (see module docstring).

    ``settings`` are extra ``-c name=value`` server settings, merged over ``TEST_SETTINGS``.
    ``major``: the server's major version (default: :func:`find_pg_bindir`'s choice).
    The directory is deleted by :meth:`stop` when this object created it.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        password: str | None = None,
        startup_timeout: float = 60.0,
        major: int | None = None,
    ) -> None:
        self._requested_dir = base_dir
        self._requested_port = port
        self._settings = {**TEST_SETTINGS, **(settings or {})}
        self.password = password or secrets.token_urlsafe(18)
        self._startup_timeout = startup_timeout
        self.bindir = find_pg_bindir(major)
        self.base_dir: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owns_dir = False
        self._user: pwd.struct_passwd | None = None

    # ---------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        """``postgresql://postgres:PW@127.0.0.1:PORT/postgres``."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        if self.port is None:
            raise LocalPostgresError("server not started")
        return f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def dsn_for(self, dbname: str = "postgres") -> str:
        """A libpq keyword DSN *without* the password (pair it with :attr:`password`)."""
        if self.port is None:
            raise LocalPostgresError("server not started")
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise LocalPostgresError("server not started")
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        if self.base_dir is None:
            raise LocalPostgresError("server not started")
        return self.base_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---------------------------------------------------------------- lifecycle
    @property
    def _uid(self) -> int | None:
        return None if self._user is None else self._user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._user is None else self._user.pw_gid

    def start(self) -> str:
        if self._proc is not None:
            return self.url
        if self._requested_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="localpg-"))
            self._owns_dir = True
        else:
            self.base_dir = Path(self._requested_dir).absolute()
            self._owns_dir = not self.base_dir.exists()
            self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._user = _service_user()
            self.bindir = _bindir_for(self._user, self.bindir)
            if not _traversable_by_others(self.base_dir.parent):
                raise LocalPostgresError(
                    f"{self.base_dir} is below a directory the unprivileged user "
                    f"{self._user.pw_name!r} cannot enter; pass base_dir=None (a /tmp dir)"
                )
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._user is not None:
            _chown_tree(self.base_dir, self._user.pw_uid, self._user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        if not (self.data_dir / "PG_VERSION").is_file():
            init = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
                check=False,
                cwd=self.base_dir,
                user=self._uid,
                group=self._gid,
            )
            if init.returncode != 0:
                raise LocalPostgresError(
                    f"initdb failed ({init.returncode}): {init.stderr.strip()}"
                )
        pwfile.unlink(missing_ok=True)
        self.port = self._requested_port or self.port or _free_port()
        self._launch(env)
        return self.url

    def _launch(self, env: Mapping[str, str] | None = None) -> None:
        assert self.base_dir is not None and self.port is not None
        if env is None:
            env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        args = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.base_dir}",
        ]
        for key, value in self._settings.items():
            args += ["-c", f"{key}={value}"]
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                cwd=self.base_dir,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
            )
        finally:
            log.close()
        self._wait_ready()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown) but keep its directory, for :meth:`restart`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None

    def restart(self) -> None:
        """Start the server again on the same port and directory (after stop-less shutdown)."""
        self.shutdown()
        self._launch()

    def set_next_xid(self, next_xid: int, epoch: int = 0) -> None:
        """Move the transaction counter with ``pg_resetwal`` (tests of xid wraparound).

        Only for a fresh throw-away cluster: every database is frozen first, the oldest xid
        is set just below ``next_xid``, and the ``pg_xact`` segment ``next_xid`` needs is
        created, as pg_resetwal's documentation describes.
        """
        import psycopg

        if not (self.bindir / "pg_resetwal").is_file():
            raise LocalPostgresError(
                f"{self.bindir} has no pg_resetwal (PostgreSQL 13's binaries carry the server "
                "only): this test needs a server whose release has it"
            )
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'")
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
        for name in names:
            with psycopg.connect(self.url_for(name), autocommit=True) as conn:
                conn.execute("VACUUM FREEZE")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE pg_database SET datallowconn = false WHERE datname = 'template0'")
        self.shutdown()
        segment = self.data_dir / "pg_xact" / f"{(next_xid % (1 << 32)) // 1048576:04X}"
        if not segment.exists():
            segment.write_bytes(b"\0" * 262144)
            if self._user is not None:
                os.chown(segment, self._user.pw_uid, self._user.pw_gid)
        oldest = max(3, next_xid % (1 << 32) - 1000)
        proc = subprocess.run(
            [
                str(self.bindir / "pg_resetwal"),
                "-x",
                str(next_xid % (1 << 32)),
                "-u",
                str(oldest),
                "-e",
                str(epoch),
                "-D",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            user=self._uid,
            group=self._gid,
        )
        if proc.returncode != 0:
            raise LocalPostgresError(f"pg_resetwal failed: {proc.stderr.strip()}")
        self._launch()

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self._startup_timeout
        isready = self._pg_isready()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalPostgresError(
                    f"postgres exited with {self._proc.returncode}: {self._log_tail()}"
                )
            rc = subprocess.run(
                [str(isready), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                check=False,
                timeout=10,
            ).returncode
            if rc == 0:
                return
            time.sleep(0.1)
        self.kill()
        raise LocalPostgresError(
            f"postgres not ready after {self._startup_timeout}s: {self._log_tail()}"
        )

    def _pg_isready(self) -> Path:
        """The server's own ``pg_isready``, else any installed one (13's binaries carry the
        server only; the protocol check is the same for every version)."""
        for bindir in [self.bindir, *reversed(installed_bindirs())]:
            if (bindir / "pg_isready").is_file():
                return bindir / "pg_isready"
        raise LocalPostgresError("no pg_isready found (install a PostgreSQL client)")

    @property
    def major(self) -> int:
        """The server's major version (from ``postgres --version``)."""
        out = subprocess.run(
            [str(self.bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return int(out.split(")", 1)[1].strip().split(".")[0])

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it takes longer than ``timeout``; remove the dir."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
            self._proc = None
        self._cleanup_dir()

    def kill(self) -> None:
        """SIGKILL the postmaster and its process group (a crash, not a shutdown)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def _cleanup_dir(self) -> None:
        if self._owns_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def postgres_for_tests(tmp: Path, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """Yield a superuser URL: ``$POSTGRES_URL``, else by the test backend a container or a
    ``LocalPostgres`` (``settings`` apply to the latter only)."""
    env_url = os.environ.get("POSTGRES_URL")
    if env_url:
        yield env_url
        return
    if test_backend() is TestBackend.CONTAINERS:
        if test_pg_major() is not None:
            raise TestBackendError(
                f"{TEST_PG_MAJOR_ENV} chooses the server of the local backend only: the "
                "containers backend runs MANAGED_BACKUPS_POSTGRES_IMAGE"
            )
        require_docker()
        with postgres_container() as url:
            yield url
        return
    base: Path | None = tmp / "pg"
    if os.geteuid() == 0 and base is not None and not _traversable_by_others(tmp):
        base = None  # e.g. pytest's 0700 tmp dirs: the server user could not enter them
    with LocalPostgres(base, settings=settings) as pg:
        yield pg.url
