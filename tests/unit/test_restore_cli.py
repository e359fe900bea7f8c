"""The restore CLI: its arguments become the API request; ``--follow`` draws the job's progress
with rich (phase, percent, bytes, rate, ETA) until it ends; a refusal's reason on stderr with
exit 1; an API that does not answer is named, with exit 3."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from managed_backups.services import cli
from tests.unit.fake_api import FakeApi, Reply


def _api(monkeypatch: pytest.MonkeyPatch, *replies: Reply) -> FakeApi:
    """The commands' API in memory, answering ``replies`` in turn (the last one again)."""
    return FakeApi(monkeypatch, replies=replies)


def test_table_restore_arguments_become_the_api_request(monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"id": "r-1", "status": "PENDING"}
    api = _api(monkeypatch, job)
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
            "--api-url",
            "http://api.test",
            "--credential",
            "mbk_k",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == job
    (request,) = api.seen
    assert request.method == "POST" and request.base == "http://api.test"
    assert request.path == "/api/v1/clusters/dst/restores"
    assert request.headers["Authorization"] == "Bearer mbk_k"
    body: dict[str, Any] = request.json()
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
    api = _api(monkeypatch, (409, {"code": 409, "message": "shop exists"}))
    result = CliRunner(env={"MANAGED_BACKUPS_CREDENTIAL": "mbk_env"}).invoke(
        cli.app, ["restore", "start", "dst", "--type", "DATABASE", "--database", "shop"]
    )
    assert result.exit_code == 1
    assert result.stderr == "refused (409): shop exists\n" and result.stdout == ""
    assert api.seen[0].headers["Authorization"] == "Bearer mbk_env"
    assert api.seen[0].json()["objects"] == [{"database": "shop"}]


def test_a_restore_type_outside_the_three_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.app, ["restore", "start", "dst", "--type", "FOO"])
    assert result.exit_code == 2
    assert "Invalid value for '--type'" in result.stderr and "'FOO'" in result.stderr
    missing = CliRunner().invoke(cli.app, ["restore", "start", "dst"])
    assert missing.exit_code == 2 and "Missing option '--type'" in missing.stderr


def job(status: str, phase: str, done: int, total: int) -> dict[str, Any]:
    return {
        "id": "r-1",
        "status": status,
        "phase": phase,
        "completion_percent": done / total if total else 0.0,
        "bytes_done": done,
        "bytes_total": total,
        "restored": ["table shop.public.orders"] if status == "SUCCESS" else None,
        "client_error_code": "CHUNK_CORRUPT" if status == "FAILED" else None,
        "client_error_message": "chunk abc is corrupt" if status == "FAILED" else None,
        "failed_step": "verify" if status == "FAILED" else None,
        "destination_state": "unchanged" if status == "FAILED" else None,
    }


def test_follow_shows_phase_percent_bytes_rate_and_eta_until_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("managed_backups.services.restore.cli.POLL_SECONDS", 0.0)
    api = _api(
        monkeypatch,
        job("PENDING", "Preparing", 0, 0),  # the POST's answer
        job("PENDING", "Preparing", 0, 0),
        job("PENDING", "Running", 25 << 20, 100 << 20),
        job("PENDING", "Running", 60 << 20, 100 << 20),
        job("SUCCESS", "Succeeded", 100 << 20, 100 << 20),
    )
    result = CliRunner().invoke(
        cli.app,
        [
            "restore",
            "start",
            "dst",
            "--type",
            "CLUSTER",
            "--follow",
            "--api-url",
            "http://a",
            "--credential",
            "mbk_k",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Preparing") and "0.0%" in lines[0]
    assert lines[1].startswith("Running") and " 25.0%" in lines[1]
    assert "25.0 MiB / 100.0 MiB" in lines[1] and "/s" in lines[1] and "ETA" in lines[1]
    assert lines[2].startswith("Running") and " 60.0%" in lines[2]
    assert lines[3].startswith("Succeeded") and "100.0%" in lines[3]
    assert lines[-1] == "restored: table shop.public.orders"
    assert [r.path for r in api.seen[1:]] == ["/api/v1/clusters/dst/restores/r-1"] * 4


def test_follow_a_failed_job_prints_the_reason_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    _api(monkeypatch, job("FAILED", "Failed", 1, 10))
    result = CliRunner().invoke(
        cli.app,
        [
            "restore",
            "start",
            "dst",
            "--type",
            "CLUSTER",
            "--follow",
            "--api",
            "http://a",
            "--credential",
            "mbk_k",
        ],
    )
    assert result.exit_code == 1
    assert result.stderr == (
        "restore r-1 failed: CHUNK_CORRUPT: chunk abc is corrupt (step: verify); "
        "destination unchanged\n"
    )


def test_an_api_that_does_not_answer_is_named_with_exit_3(tmp_path: Any) -> None:
    (tmp_path / "api-url").write_text("http://127.0.0.1:9\n")
    (tmp_path / "admin-api-key").write_text("mbk_k\n")
    result = CliRunner().invoke(
        cli.app,
        ["restore", "start", "dst", "--type", "CLUSTER", "--data-dir", str(tmp_path)],
    )
    assert result.exit_code == 3
    assert result.stderr.startswith(
        f"cannot reach the API at http://127.0.0.1:9 (from {tmp_path / 'api-url'}): "
    )
    assert f"is `managed-backups up --data-dir {tmp_path}` running" in result.stderr
