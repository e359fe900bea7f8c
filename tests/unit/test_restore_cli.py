"""The restore CLI: its arguments become the API request; its progress line (phase, percent,
bytes, rate, ETA); a refusal's reason on stderr with exit 1."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from managed_backups.services import cli
from managed_backups.services.restore import cli as restore_cli
from managed_backups.services.restore.cli import progress_line


def _api(monkeypatch: pytest.MonkeyPatch, answer: httpx.Response) -> list[httpx.Request]:
    """Route ``restore start``'s HTTP client to an in-memory API answering ``answer``."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer

    def client(base_url: str) -> httpx.Client:
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(handle))

    monkeypatch.setattr(restore_cli, "api_client", client)
    return seen


def test_table_restore_arguments_become_the_api_request(monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"id": "r-1", "status": "PENDING"}
    seen = _api(monkeypatch, httpx.Response(200, json=job))
    result = CliRunner().invoke(
        cli.app,
        [
            "restore",
            "start",
            "dst",
            "--type",
            "TABLE",
            "--database",
            "shop",
            "--schema",
            "s",
            "--table",
            "a",
            "--table",
            "b",
            "--into-db",
            "x",
            "--skip-missing-views",
            "--api",
            "http://api.test",
            "--credential",
            "mbk_k",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == job
    (request,) = seen
    assert (
        request.method == "POST" and request.url == "http://api.test/api/v1/clusters/dst/restores"
    )
    assert request.headers["Authorization"] == "Bearer mbk_k"
    body: dict[str, Any] = json.loads(request.content)
    assert body["type"] == "TABLE" and "backup_id" not in body
    assert body["objects"] == [
        {"database": "shop", "schema": "s", "table": "a"},
        {"database": "shop", "schema": "s", "table": "b"},
    ]
    assert body["restore_opts"] == {
        "into_db": "x",
        "skip_missing_foreign_keys": False,
        "skip_missing_sequences": False,
        "skip_missing_views": True,
        "skip_localities_check": False,
    }


def test_a_refusal_prints_its_reason_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _api(monkeypatch, httpx.Response(409, json={"code": 409, "message": "shop exists"}))
    result = CliRunner(env={"MANAGED_BACKUPS_CREDENTIAL": "mbk_env"}).invoke(
        cli.app, ["restore", "start", "dst", "--type", "DATABASE", "--database", "shop"]
    )
    assert result.exit_code == 1
    assert result.stderr == "refused (409): shop exists\n" and result.stdout == ""
    assert seen[0].headers["Authorization"] == "Bearer mbk_env"
    assert json.loads(seen[0].content)["objects"] == [{"database": "shop"}]


def test_a_restore_type_outside_the_three_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.app, ["restore", "start", "dst", "--type", "FOO"])
    assert result.exit_code == 2
    assert "Invalid value for '--type'" in result.stderr and "'FOO'" in result.stderr
    missing = CliRunner().invoke(cli.app, ["restore", "start", "dst"])
    assert missing.exit_code == 2 and "Missing option '--type'" in missing.stderr


def test_progress_line_shows_phase_percent_bytes_rate_and_eta() -> None:
    job = {
        "phase": "Running",
        "completion_percent": 0.25,
        "bytes_done": 25 << 20,
        "bytes_total": 100 << 20,
    }
    line = progress_line(job, started=0.0, now=5.0)
    assert line.startswith("Running") and "#####" in line and " 25.0%" in line
    assert "25.0 MiB / 100.0 MiB" in line and "5.0 MiB/s" in line and "ETA 15s" in line
