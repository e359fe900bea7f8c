"""A private file (a signing key, a store key) appears whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from managed_backups.shared import secrets
from managed_backups.shared.secrets import create_private_file


def test_a_private_file_is_never_visible_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "scheduler.ed25519"
    seen_while_writing: list[bool] = []
    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str = "r") -> Any:
        handle = real_fdopen(fd, mode)
        real_write = handle.write

        def write(data: bytes) -> int:
            seen_while_writing.append(path.exists())  # what another instance would read now
            return int(real_write(data))

        handle.write = write
        return handle

    monkeypatch.setattr(secrets.os, "fdopen", fdopen)
    create_private_file(path, b"-----BEGIN PRIVATE KEY-----\n")
    assert seen_while_writing == [False]
    assert path.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(FileExistsError):
        create_private_file(path, b"another")
    assert path.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
