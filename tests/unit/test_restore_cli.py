"""The restore CLI's request body and its progress line (phase, percent, bytes, rate, ETA)."""

from __future__ import annotations

from managed_backups.services.cli import build_parser
from managed_backups.services.restore.cli import progress_line, request_body


def test_table_restore_arguments_become_the_api_request() -> None:
    args = build_parser().parse_args(
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
        ]
    )
    body = request_body(args)
    assert body["type"] == "TABLE" and "backup_id" not in body
    assert body["objects"] == [
        {"database": "shop", "schema": "s", "table": "a"},
        {"database": "shop", "schema": "s", "table": "b"},
    ]
    assert body["restore_opts"]["into_db"] == "x" and body["restore_opts"]["skip_missing_views"]


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
