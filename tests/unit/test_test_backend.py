"""The test backend is an explicit choice: local processes unless containers are asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.backend import (
    BACKEND_ENV,
    TestBackend,
    TestBackendError,
    require_docker,
    test_backend,
)


def test_default_is_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert test_backend() is TestBackend.LOCAL
    monkeypatch.setenv(BACKEND_ENV, "")
    assert test_backend() is TestBackend.LOCAL


def test_containers_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, " Containers ")
    assert test_backend() is TestBackend.CONTAINERS


def test_unknown_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "docker")
    with pytest.raises(
        TestBackendError, match=r"'docker' is not a test backend.*local, containers"
    ):
        test_backend()


def test_containers_without_an_engine_fail_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(TestBackendError, match="no Docker engine answers at unix://"):
        require_docker()
