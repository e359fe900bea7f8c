"""Which client tools a server gets (``tools.client_tools_for``), on stand-in bin directories
whose ``pg_dump --version`` answers a chosen version (the real tools run in the data-plane
tests of every major)."""

from __future__ import annotations

from pathlib import Path

import pytest

from managed_backups.shared.dataplane.errors import BackupError, ErrorCode
from managed_backups.shared.dataplane.tools import (
    REQUIRED_TOOLS,
    available_client_tools,
    client_tools_for,
)
from managed_backups.shared.settings import Settings


def bindir(tmp_path: Path, version: str, *, missing: str | None = None) -> Path:
    """A bin directory whose tools answer ``--version`` as PostgreSQL ``version`` would."""
    d = tmp_path / f"pg-{version}" / "bin"
    d.mkdir(parents=True)
    for name in REQUIRED_TOOLS:
        if name == missing:
            continue
        tool = d / name
        tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        tool.chmod(0o755)
    return d


def test_the_servers_own_major_newest_minor_when_available(tmp_path: Path) -> None:
    dirs = [bindir(tmp_path, v) for v in ("14.23", "15.18", "15.19", "17.11", "18.6")]
    chosen = client_tools_for(150004, dirs, step="t")
    assert (chosen.major, chosen.version, chosen.bindir) == (15, "15.19", dirs[2])
    assert client_tools_for(170000, dirs, step="t").version == "17.11"


def test_the_next_newer_major_when_the_servers_own_is_missing(tmp_path: Path) -> None:
    dirs = [bindir(tmp_path, v) for v in ("18.6", "16.15")]
    assert client_tools_for(150019, dirs, step="t").version == "16.15"
    assert client_tools_for(130023, dirs, step="t").version == "16.15"


def test_13_and_14_get_15s_tools_else_the_oldest_newer_ones(tmp_path: Path) -> None:
    dirs = [bindir(tmp_path, v) for v in ("14.23", "16.15", "15.19")]
    assert client_tools_for(140000, dirs, step="t").version == "15.19"
    assert client_tools_for(130000, dirs, step="t").version == "15.19"
    assert client_tools_for(160000, dirs, step="t").version == "16.15"
    only_14 = dirs[:1]
    assert client_tools_for(130000, only_14, step="t").version == "14.23"  # 13 ships no clients
    assert client_tools_for(140000, only_14, step="t").version == "14.23"


def test_a_server_newer_than_every_client_is_unsupported_naming_both_versions(
    tmp_path: Path,
) -> None:
    dirs = [bindir(tmp_path, v) for v in ("15.18", "16.15")]
    with pytest.raises(BackupError) as raised:
        client_tools_for(170011, dirs, step="choose client tools")
    error = raised.value
    assert error.code is ErrorCode.UNSUPPORTED
    assert "PostgreSQL 17.11" in error.message
    assert "16.15" in error.message and "15.18" in error.message
    assert "install PostgreSQL 17's client tools" in error.message
    assert "fetch --clients-only 17" in error.message
    assert "MANAGED_BACKUPS_PG_BINDIRS" in error.message
    assert error.step == "choose client tools"


def test_no_client_tools_at_all_is_tool_missing(tmp_path: Path) -> None:
    incomplete = bindir(tmp_path, "17.11", missing="psql")
    assert available_client_tools([incomplete, tmp_path / "nowhere"]) == []
    with pytest.raises(BackupError) as raised:
        client_tools_for(170011, [incomplete], step="t")
    assert raised.value.code is ErrorCode.TOOL_MISSING
    assert "install PostgreSQL 17's client tools" in raised.value.message


def test_the_setting_lists_bin_directories_separated_by_colons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MANAGED_BACKUPS_PG_BINDIRS", "/opt/pg17/bin:/usr/lib/postgresql/15/bin")
    assert Settings().pg_bindirs == (Path("/opt/pg17/bin"), Path("/usr/lib/postgresql/15/bin"))
    monkeypatch.delenv("MANAGED_BACKUPS_PG_BINDIRS")
    assert Settings().pg_bindirs == ()
