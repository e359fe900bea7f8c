"""The binaries cache: what counts as an installed release, what a client-only fetch keeps, and
the refusals (the real fetches run in ``.ci/run``, the Dockerfile and ``managed-backups up``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from managed_backups.shared.infra import postgres_binaries as binaries


def release(cache: Path, name: str, marker: str | None) -> Path:
    base = cache / name
    (base / "bin").mkdir(parents=True)
    if marker is not None:
        (base / ".complete").write_text(marker)
    return base


def test_only_complete_releases_are_installed(tmp_path: Path) -> None:
    release(tmp_path, "postgresql-17.11.0", "17.11.0 all\n")
    release(tmp_path, "postgresql-16.15.0", "16.15.0 clients\n")
    release(tmp_path, "postgresql-18.6.0", None)  # a fetch that died half-way
    found = [p for p in binaries.installed_bindirs(tmp_path) if p.is_relative_to(tmp_path)]
    assert found == [
        tmp_path / "postgresql-16.15.0" / "bin",
        tmp_path / "postgresql-17.11.0" / "bin",
    ]


def test_a_cached_release_is_used_without_fetching(tmp_path: Path) -> None:
    base = release(tmp_path, binaries.RELEASES[17].dirname, "17.11.0 all\n")
    assert binaries.ensure_binaries(17, tmp_path) == base / "bin"
    assert binaries.ensure_binaries(17, tmp_path, clients_only=True) == base / "bin"


def test_client_only_keeps_the_client_tools_and_libpq(tmp_path: Path) -> None:
    base = tmp_path / "r"
    for rel in ("bin/pg_dump", "bin/psql", "bin/postgres", "bin/initdb", "lib/libpq.so.5",
                "lib/libicuuc.so", "lib/pgxs/x.mk", "share/postgres.bki"):  # fmt: skip
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text("x")
    binaries._keep_clients_only(base)
    kept = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert kept == ["bin/pg_dump", "bin/psql", "lib/libpq.so.5"]


def test_unsupported_majors_and_13s_missing_client_tools_are_refused(tmp_path: Path) -> None:
    with pytest.raises(binaries.BinariesError, match="supported: 13, 14, 15, 16, 17, 18"):
        binaries.ensure_binaries(12, tmp_path)
    with pytest.raises(binaries.BinariesError, match="server only"):
        binaries.ensure_binaries(13, tmp_path, clients_only=True)


def test_an_archive_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        member = tarfile.TarInfo("../escaped")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    data.seek(0)
    with (
        tarfile.open(fileobj=data, mode="r:gz") as tar,
        pytest.raises((binaries.BinariesError, tarfile.TarError)),
    ):
        binaries._extract(tar, tmp_path / "dest")
    assert not (tmp_path / "escaped").exists()
