"""The commands for daily work, against an in-memory API: what each asks the API, the table it
prints and the JSON it prints with ``--json``, its exit codes (1 refused with the API's
message, 2 without a credential, 3 when the API does not answer, naming the URL it tried), how
every command finds the API of a data directory (``up --api-port`` remembered), and that a
command calling the API loads neither the settings model nor the services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from managed_backups.services import cli
from managed_backups.shared import locations
from managed_backups.shared.settings import Settings
from tests.unit.fake_api import FakeApi

BACKUP = "11111111-1111-4111-8111-111111111111"
COMMAND = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    """No MANAGED_BACKUPS_* settings and an empty data home: only the arguments count."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MANAGED_BACKUPS_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data-home")
    return CliRunner(env=env)


ARGS = ["--api-url", "http://api.test", "--credential", "mbk_k"]

CLUSTER = {
    "id": "orders-prod",
    "name": "Orders",
    "organization": "acme",
    "tier": "ADVANCED",
    "backup_region": "eu-west-1",
    "recoverability": {
        "oldest_restorable": "2026-03-01T00:00:00.000000Z",
        "newest_restorable": "2026-03-02T10:00:00.000000Z",
        "last_successful_backup": "2026-03-02T10:00:00.000000Z",
        "stored_bytes": 3 << 20,
    },
    "last_backup": {"id": BACKUP, "status": "COMPLETE", "error": None},
}
FAILING = {
    **CLUSTER,
    "id": "billing",
    "name": "Billing",
    "recoverability": {
        "oldest_restorable": None,
        "newest_restorable": None,
        "last_successful_backup": None,
        "stored_bytes": 0,
    },
    "last_backup": {"id": BACKUP, "status": "FAILED", "error": {"code": "AUTHENTICATION_FAILED"}},
}
LISTED = {
    "id": BACKUP,
    "as_of_time": "2026-03-02T10:00:00.000000Z",
    "type": "FULL",
    "status": "COMPLETE",
    "expires_at": "2026-04-01T10:00:00.000000Z",
    "kept_past_retention": False,
    "retention_note": None,
    "region": "eu-west-1",
    "size_bytes": 2048,
    "database_count": 1,
}
DETAIL = {
    "id": BACKUP,
    "cluster_id": "orders-prod",
    "chain_id": BACKUP,
    "type": "FULL",
    "status": "COMPLETE",
    "as_of_time": "2026-03-02T10:00:00.000000Z",
    "started_at": "2026-03-02T10:00:00.000000Z",
    "ended_at": "2026-03-02T10:00:05.000000Z",
    "expires_at": "2026-04-01T10:00:00.000000Z",
    "region": "eu-west-1",
    "size_bytes": 2048,
    "database_count": 1,
    "error": None,
    "verification": None,
}


def test_clusters_list_is_a_table_marking_a_failed_last_backup_or_json(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi(monkeypatch, {("GET", "/api/v1/clusters"): {"clusters": [FAILING, CLUSTER]}})
    result = runner.invoke(cli.app, ["clusters", "list", *ARGS])
    assert result.exit_code == 0, result.output
    assert api.seen[0].params["detail"] == "true"
    assert api.seen[0].headers["Authorization"] == "Bearer mbk_k"
    billing = next(line for line in result.stdout.splitlines() if "billing" in line)
    assert "FAILED AUTHENTICATION_FAILED" in billing and "nothing restorable" in billing
    orders = next(line for line in result.stdout.splitlines() if "orders-prod" in line)
    assert "2026-03-01 00:00:00 -> 2026-03-02 10:00:00" in orders and "3.0 MiB" in orders
    as_json = runner.invoke(cli.app, ["clusters", "list", "--json", *ARGS])
    assert json.loads(as_json.stdout) == {"clusters": [FAILING, CLUSTER]}


def test_backups_list_of_a_day(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    page = {"backups": [LISTED], "pagination": {"next_page": "2", "previous_page": None}}
    api = FakeApi(monkeypatch, {("GET", "/api/v1/clusters/orders-prod/backups"): page})
    result = runner.invoke(
        cli.app, ["backups", "list", "orders-prod", "--date", "2026-03-02", *ARGS]
    )
    assert result.exit_code == 0, result.output
    params = api.seen[0].params
    assert params["start_time"] == "2026-03-02T00:00:00Z"
    assert params["end_time"] == "2026-03-03T00:00:00Z"
    assert BACKUP in result.stdout and "2026-03-02 10:00:00" in result.stdout
    assert "2.0 KiB" in result.stdout and "More: --page 2" in result.stdout
    bad = runner.invoke(cli.app, ["backups", "list", "orders-prod", "--date", "March", *ARGS])
    assert bad.exit_code == 2 and "is not a day (YYYY-MM-DD)" in bad.stderr


def test_backups_show_finds_the_cluster_and_lists_databases_and_tables(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"/api/v1/clusters/orders-prod/backups/{BACKUP}"
    tables = {
        "tables": [{"schema": "public", "name": "orders", "row_count": 30000, "size_bytes": 4096}]
    }
    FakeApi(
        monkeypatch,
        {
            ("GET", f"/api/v1/backups/{BACKUP}"): DETAIL,
            ("GET", f"{base}/databases"): {"databases": [{"name": "shop", "table_count": 1}]},
            ("GET", f"{base}/databases/shop/tables"): tables,
        },
    )
    result = runner.invoke(cli.app, ["backups", "show", BACKUP, *ARGS])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "30,000" in line)
    assert (
        "shop" in row
        and "orders" in row
        and "public" in row
        and "30,000" in row
        and "4.0 KiB" in row
    )
    as_json = json.loads(
        runner.invoke(cli.app, ["backups", "show", BACKUP, "--json", *ARGS]).stdout
    )
    assert as_json["backup"] == DETAIL
    assert as_json["databases"] == [{"name": "shop", "table_count": 1, **tables}]


def test_a_refusal_prints_the_apis_message_and_exits_1(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeApi(
        monkeypatch,
        {
            ("PATCH", "/api/v1/clusters/orders-prod/backups-config"): (
                409,
                {
                    "code": 409,
                    "message": "cluster already has a retention policy set, open a support "
                    "ticket to change it",
                },
            )
        },
    )
    result = runner.invoke(cli.app, ["settings", "set", "orders-prod", "--retention", "90", *ARGS])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "refused (409): cluster already has a retention policy set, open a support ticket to "
        "change it\n"
    )


def test_settings_set_sends_only_what_changes_and_shows_the_result(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"enabled": True, "frequency_minutes": 240, "retention_days": 7}
    api = FakeApi(
        monkeypatch,
        {
            ("PATCH", "/api/v1/clusters/c/backups-config"): None,
            ("GET", "/api/v1/clusters/c/backups/config"): config,
        },
    )
    result = runner.invoke(
        cli.app, ["settings", "set", "c", "--frequency", "240", "--enabled", "--json", *ARGS]
    )
    assert result.exit_code == 0, result.output
    assert api.seen[0].json() == {"enabled": True, "frequency_minutes": 240}
    assert json.loads(result.stdout) == config
    nothing = runner.invoke(cli.app, ["settings", "set", "c", *ARGS])
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    shown = runner.invoke(cli.app, ["settings", "get", "c", *ARGS])
    assert "every 240 minutes" in shown.stdout and "7 days" in shown.stdout


def test_backup_now_waits_for_its_end(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    states = iter(["IN_PROGRESS", "COMPLETE"])
    api = FakeApi(
        monkeypatch,
        {
            ("POST", "/api/v1/clusters/c/backups"): {**DETAIL, "status": "IN_PROGRESS"},
            ("GET", f"/api/v1/clusters/c/backups/{BACKUP}"): lambda _: {
                **DETAIL,
                "status": next(states),
            },
        },
    )
    monkeypatch.setattr("managed_backups.services.apicli.commands.time.sleep", lambda _: None)
    result = runner.invoke(
        cli.app, ["backup", "now", "c", "--type", "INCREMENTAL", "--wait", *ARGS]
    )
    assert result.exit_code == 0, result.output
    assert api.seen[0].json() == {"type": "INCREMENTAL"}
    assert f"backup {BACKUP} of c: FULL COMPLETE, 2.0 KiB" in result.stdout


def test_backup_verify_waits_for_its_own_result_and_exits_1_on_a_corrupt_chunk(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = {"ok": True, "command_id": "someone else's", "verified_at": None}
    ours = {
        "ok": False,
        "verified_at": "2026-03-02T11:00:00.000000Z",
        "chunks_checked": 12,
        "missing_chunks": [],
        "corrupt_chunks": ["abc"],
        "command_id": COMMAND,
    }
    answers = iter([older, ours])
    base = f"/api/v1/clusters/orders-prod/backups/{BACKUP}"
    FakeApi(
        monkeypatch,
        {
            ("GET", f"/api/v1/backups/{BACKUP}"): DETAIL,
            ("POST", f"{base}/verify"): (202, {"backup_id": BACKUP, "command_id": COMMAND}),
            ("GET", base): lambda _: {**DETAIL, "verification": next(answers)},
        },
    )
    monkeypatch.setattr("managed_backups.services.apicli.commands.time.sleep", lambda _: None)
    result = runner.invoke(cli.app, ["backup", "verify", BACKUP, *ARGS])
    assert result.exit_code == 1, result.output
    assert "FAILED at 2026-03-02 11:00:00: 12 chunks checked, 1 missing or corrupt" in (
        result.stdout
    )
    assert "corrupt: abc" in result.stdout


def test_history_opens_on_the_latest_events(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [
        {
            "position": 7,
            "type": "BackupSettingsUpdated",
            "occurred_at": "2026-03-02T10:00:00Z",
            "by": "admin",
            "retention_days": 7,
        }
    ]
    api = FakeApi(monkeypatch, {("GET", "/api/v1/clusters/c/events"): {"events": events}})
    result = runner.invoke(cli.app, ["history", "c", "--limit", "20", *ARGS])
    assert result.exit_code == 0, result.output
    assert api.seen[0].params["before"] == str(2**62)
    assert api.seen[0].params["limit"] == "20"
    row = next(line for line in result.stdout.splitlines() if "BackupSettingsUpdated" in line)
    assert "admin" in row and "retention_days=7" in row
    later = runner.invoke(cli.app, ["history", "c", "--after", "7", *ARGS])
    assert later.exit_code == 0 and api.seen[1].params["after"] == "7"


def test_every_command_finds_the_api_up_remembered_in_its_data_directory(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "D"
    data.mkdir()
    locations.remember_api_url(data, "http://127.0.0.1:18080")
    (data / "admin-api-key").write_text("mbk_admin\n")
    api = FakeApi(
        monkeypatch,
        {
            ("GET", "/api/v1/clusters"): {"clusters": []},
            ("GET", "/api/v1/clusters/c/restores"): {
                "restores": [],
                "pagination": {"next_page": None, "previous_page": None},
            },
            ("PUT", "/api/v1/clusters/c/connection-secret"): None,
        },
    )
    for argv, options in (
        (["clusters", "list"], {}),
        (["restores", "list", "c"], {}),
        (["clusters", "set-secret", "c"], {"input": "pw\n"}),
    ):
        result = runner.invoke(cli.app, [*argv, "--data-dir", str(data)], **options)
        assert result.exit_code == 0, (argv, result.output)
    assert [r.base for r in api.seen] == ["http://127.0.0.1:18080"] * 3
    assert {r.headers["Authorization"] for r in api.seen} == {"Bearer mbk_admin"}
    # --api-url wins over the data directory's.
    runner.invoke(cli.app, ["clusters", "list", "--data-dir", str(data), "--api-url", "http://x"])
    assert api.seen[-1].base == "http://x"


def test_an_unreachable_api_is_named_with_where_its_url_came_from(
    runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "admin-api-key").write_text("mbk_admin\n")
    result = runner.invoke(cli.app, ["clusters", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "cannot reach the API at http://127.0.0.1:8080 (from the default): "
    )
    locations.remember_api_url(tmp_path, "http://127.0.0.1:9")
    result = runner.invoke(
        cli.app, ["clusters", "set-secret", "c", "--data-dir", str(tmp_path)], input="pw\n"
    )
    assert result.exit_code == 3
    assert result.stderr.startswith(
        f"cannot reach the API at http://127.0.0.1:9 (from {tmp_path / 'api-url'}): "
    )
    no_key = runner.invoke(cli.app, ["history", "c", "--data-dir", str(tmp_path / "none")])
    assert no_key.exit_code == 2 and no_key.stderr.startswith("no credential: ")


def test_the_locations_read_the_settings_variables() -> None:
    assert set(locations.ENVIRONMENT) <= set(Settings.model_fields)
    assert Settings().data_dir == locations.default_data_dir() or "MANAGED_BACKUPS_DATA_DIR" in (
        os.environ
    )


HEAVY = (
    "faststream",
    "aiokafka",
    "eventsourcing",
    "fastapi",
    "psycopg",
    "pydantic_settings",
    "uvicorn",
    "httpx",
    "asyncio",
)
"""(pydantic itself is loaded by typer, which validates parameters with it.)"""


@pytest.mark.parametrize(
    "argv",
    [
        ["clusters", "list"],
        ["backups", "list", "c"],
        ["restore", "start", "c", "--type", "CLUSTER"],
        ["history", "c"],
        ["orgs", "list"],
        ["accounts", "list"],
        ["keys", "list", "--account", "acme/ci"],
        ["grants", "add", "--account", "acme/ci", "--role", "CLUSTER_OPERATOR", "--cluster", "c"],
    ],
    ids=" ".join,
)
def test_a_command_over_the_api_loads_neither_the_settings_model_nor_the_services(
    argv: list[str], tmp_path: Path
) -> None:
    """What keeps such a command fast (``python -X importtime`` showed pydantic-settings,
    FastStream and aiokafka as most of its start-up): it loads what it uses only."""
    program = (
        "import sys\n"
        "from managed_backups.services.cli import main\n"
        f"code = main({[*argv, '--api-url', 'http://127.0.0.1:9', '--credential', 'mbk_k']!r})\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
        "print(code, heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=False
    )
    assert done.stdout.strip().splitlines()[-1] == "3 []", done.stdout + done.stderr


def test_identity_commands_speak_through_the_same_client(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``keys``, ``grants``, ``accounts``, ``orgs``: the same URL discovery, exit codes and
    error text as every command over the API; tables by default, the API's JSON with --json."""
    from managed_backups.shared.domain.ids import service_account_id

    account = str(service_account_id("acme", "ci"))
    created = {
        "api_key": {"id": "k1", "name": "ci key", "service_account_id": account},
        "secret": "mbk_k1_s3cr3t",
    }
    grants = {
        "role_grants": [
            {
                "service_account_id": account,
                "role_name": "CLUSTER_OPERATOR",
                "resource_type": "CLUSTER",
                "resource_id": "orders-prod",
            }
        ]
    }
    api = FakeApi(
        monkeypatch,
        {
            ("POST", "/api/v1/api-keys"): created,
            ("GET", "/api/v1/role-grants"): grants,
            ("POST", "/api/v1/role-grants"): (404, {"code": 404, "message": "no such thing"}),
        },
    )
    made = runner.invoke(cli.app, ["keys", "create", "--account", "acme/ci", *ARGS])
    assert made.exit_code == 0, made.output
    assert made.stdout.splitlines()[-1] == "mbk_k1_s3cr3t"
    assert api.seen[0].json()["service_account_id"] == account
    listed = runner.invoke(cli.app, ["grants", "list", "--account", "acme/ci", *ARGS])
    assert listed.exit_code == 0 and "CLUSTER_OPERATOR" in listed.stdout
    assert api.seen[1].params == {"service_account_id": account}
    as_json = runner.invoke(cli.app, ["grants", "list", "--json", *ARGS])
    assert json.loads(as_json.stdout) == grants
    refused = runner.invoke(
        cli.app,
        [
            "grants",
            "add",
            "--account",
            "acme/ci",
            "--role",
            "CLUSTER_ADMIN",
            "--cluster",
            "c",
            *ARGS,
        ],
    )
    assert refused.exit_code == 1 and refused.stderr.startswith("refused (404): no such thing")
    usage = runner.invoke(
        cli.app, ["grants", "add", "--account", "acme/ci", "--role", "CLUSTER_ADMIN", *ARGS]
    )
    assert usage.exit_code == 2 and "exactly one of --organization and --cluster" in usage.stderr
    monkeypatch.undo()  # the real client again, towards nothing
    (tmp_path / "admin-api-key").write_text("mbk_admin\n")
    unreachable = runner.invoke(cli.app, ["orgs", "list", "--data-dir", str(tmp_path)])
    assert unreachable.exit_code == 3
    assert unreachable.stderr.startswith(
        "cannot reach the API at http://127.0.0.1:8080 (from the default): "
    )


def test_publish_loads_neither_the_domain_nor_the_api(tmp_path: Path) -> None:
    """``publish`` needs the broker's client, not the event store's library nor FastAPI: it
    gets its token from the API (here none answers: exit 3 before any broker is reached)."""
    program = (
        "import sys\n"
        "from managed_backups.services.cli import main\n"
        "code = main(['publish', 'managed-backups.cluster-commands', '{}', '--bootstrap-servers',"
        " '127.0.0.1:9', '--api-url', 'http://127.0.0.1:9', '--credential', 'mbk_k'])\n"
        "from managed_backups.shared import gateway, settings  # what it loads next\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'eventsourcing', 'fastapi'})\n"
        "print(code, heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=False
    )
    assert done.stdout.strip().splitlines()[-1] == "3 []", done.stdout + done.stderr
