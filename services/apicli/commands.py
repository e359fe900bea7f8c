"""Commands for daily work, over the HTTP API: ``clusters list``, ``backups list|show``,
``settings get|set``, ``backup now|verify``, ``restores list``, ``history``.

Each prints a table (or, with ``--json``, the API's JSON) and exits as ``client.py`` says:
0 done, 1 refused, 2 usage, 3 no answer. ``register`` mounts them on the ``managed-backups``
application.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from managed_backups.services.apicli import output
from managed_backups.services.apicli.client import (
    NO_ANSWER,
    REFUSED,
    Api,
    CliError,
    cluster_path,
    segment,
)

if TYPE_CHECKING:
    from rich.text import Text

T = TypeVar("T")
AUDIT_LATEST = 2**62

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="the API's base URL (default: the one `up` serves for the data directory, else "
        "MANAGED_BACKUPS_API_HOST/PORT, else http://127.0.0.1:8080)",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        help="the data directory of `up` (its API and admin key; default: "
        "MANAGED_BACKUPS_DATA_DIR, else $XDG_DATA_HOME/managed-backups)"
    ),
]
Credential = Annotated[
    str | None,
    typer.Option(
        envvar="MANAGED_BACKUPS_CREDENTIAL",
        show_envvar=True,
        help="API key (default: the data directory's admin key)",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table")]
ClusterId = Annotated[str, typer.Argument(metavar="CLUSTER", help="the cluster's id")]
BackupId = Annotated[str, typer.Argument(metavar="BACKUP", help="the backup's id")]
InCluster = Annotated[
    str | None,
    typer.Option("--cluster", help="the backup's cluster (default: found from the backup's id)"),
]


def run(
    api_url: str | None,
    data_dir: Path | None,
    credential: str | None,
    work: Callable[[Api], int | None],
) -> None:
    """Connect, do ``work``, and exit with its code, or the failure's (message on stderr)."""
    try:
        with Api.connect(api_url, data_dir, credential) as api:
            code = work(api) or 0
    except CliError as failure:
        print(failure.message, file=sys.stderr)
        raise typer.Exit(failure.exit_code) from None
    raise typer.Exit(code)


def wait_for(what: str, timeout: float, poll: float, check: Callable[[], T | None]) -> T:
    """``check()`` until it returns something (``CliError`` with exit 3 after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise CliError(f"{what}: no result within {timeout:.0f} s", NO_ANSWER)
        time.sleep(poll)


# -- clusters list ----------------------------------------------------------------------------


def window(recoverability: dict[str, Any]) -> str:
    if not recoverability["oldest_restorable"]:
        return "nothing restorable"
    return (
        f"{output.utc(recoverability['oldest_restorable'])} -> "
        f"{output.utc(recoverability['newest_restorable'])}"
    )


def last_backup(cluster: dict[str, Any]) -> Text:
    last = cluster.get("last_backup")
    if last is None:
        return output.text("none yet", "dim")
    if last["status"] == "FAILED":
        code = f" {last['error']['code']}" if last.get("error") else ""
        return output.text(f"FAILED{code}", "bold red")
    return output.status(last["status"])


def clusters_list(
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
    deleted: Annotated[
        bool, typer.Option("--deleted", help="also deleted clusters (administrators)")
    ] = False,
) -> None:
    """The clusters you may view: tier, backup region, last successful backup, recoverability
    window, stored size, and whether the last backup failed."""

    def work(api: Api) -> None:
        answer = api.get("/api/v1/clusters", detail="true", show_deleted=str(deleted).lower())
        if json:
            return output.emit_json(answer)
        rows = [
            (
                c["id"],
                c["name"],
                c["tier"],
                c["organization"],
                c["backup_region"],
                output.utc(c["recoverability"]["last_successful_backup"]),
                window(c["recoverability"]),
                output.size(c["recoverability"]["stored_bytes"]),
                last_backup(c),
            )
            for c in answer["clusters"]
        ]
        if not rows:
            return output.show("No clusters you may view.")
        output.show(
            output.table(
                "Clusters (times UTC)",
                [
                    "ID",
                    "Name",
                    "Tier",
                    "Organization",
                    "Backup region",
                    "Last successful backup",
                    "Recoverability window",
                    "Stored>",
                    "Last backup",
                ],
                rows,
            )
        )

    run(api_url, data_dir, credential, work)


# -- backups list | show ----------------------------------------------------------------------

backups_app = typer.Typer(help="a cluster's backups and their catalog", no_args_is_help=True)


def expires(backup: dict[str, Any]) -> str:
    if backup.get("kept_past_retention"):
        return "kept past retention" + (
            f" (until {output.utc(backup['expires_at'])})" if backup.get("expires_at") else ""
        )
    return output.utc(backup.get("expires_at"))


@backups_app.command("list")
def backups_list(
    cluster: ClusterId,
    date: Annotated[
        str | None,
        typer.Option(metavar="YYYY-MM-DD", help="only the backups whose data is from this UTC day"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="backups per page")] = 100,
    page: Annotated[int, typer.Option(min=1, help="the page (newest first)")] = 1,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """A cluster's backups (restorable or running), newest first."""
    params: dict[str, Any] = {"pagination.limit": limit, "pagination.page": page}
    if date is not None:
        if not _is_day(date):
            raise typer.BadParameter(f"{date!r} is not a day (YYYY-MM-DD)", param_hint="--date")
        params.update(start_time=f"{date}T00:00:00Z", end_time=_next_day(date))

    def work(api: Api) -> None:
        answer = api.get(f"{cluster_path(cluster)}/backups", **params)
        if json:
            return output.emit_json(answer)
        rows = [
            (
                b["id"],
                output.utc(b["as_of_time"]),
                output.status(b["status"]),
                b["type"],
                expires(b),
                b["database_count"],
                output.size(b["size_bytes"]),
            )
            for b in answer["backups"]
        ]
        if not rows:
            return output.show(f"No backups of {cluster}" + (f" from {date}." if date else "."))
        title = f"Backups of {cluster}" + (f" from {date}" if date else "") + " (times UTC)"
        more = answer["pagination"]["next_page"]
        output.show(
            output.table(
                title,
                ["ID", "Data from", "Status", "Type", "Expires", "Databases>", "Size>"],
                rows,
            ),
            *([f"More: --page {more}"] if more else []),
        )

    run(api_url, data_dir, credential, work)


def _is_day(text: str) -> bool:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _next_day(text: str) -> str:
    from datetime import date, timedelta

    return f"{(date.fromisoformat(text) + timedelta(days=1)).isoformat()}T00:00:00Z"


def find_backup(api: Api, backup_id: str, cluster: str | None) -> dict[str, Any]:
    if cluster is not None:
        found: dict[str, Any] = api.get(f"{cluster_path(cluster)}/backups/{segment(backup_id)}")
    else:
        found = api.get(f"/api/v1/backups/{segment(backup_id)}")
    return found


@backups_app.command("show")
def backups_show(
    backup_id: BackupId,
    cluster: InCluster = None,
    database: Annotated[str | None, typer.Option(help="only this database's tables")] = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """A backup: its status, type, size, and its databases and their tables."""

    def work(api: Api) -> None:
        backup = find_backup(api, backup_id, cluster)
        base = f"{cluster_path(backup['cluster_id'])}/backups/{segment(backup['id'])}"
        databases: list[dict[str, Any]] = []
        if backup["status"] == "COMPLETE":
            for db in api.get(f"{base}/databases")["databases"]:
                if database is not None and db["name"] != database:
                    continue
                tables = api.get(f"{base}/databases/{segment(db['name'])}/tables")["tables"]
                databases.append({**db, "tables": tables})
            if database is not None and not databases:
                raise CliError(f"database {database} is not in backup {backup_id}", REFUSED)
        if json:
            return output.emit_json({"backup": backup, "databases": databases})
        verification = backup.get("verification")
        facts = output.table(
            f"Backup {backup['id']}",
            ["", ""],
            [
                ("Cluster", backup["cluster_id"]),
                ("Status", output.status(backup["status"])),
                ("Type", backup["type"]),
                ("Data from (UTC)", output.utc(backup["as_of_time"])),
                ("Expires (UTC)", output.utc(backup["expires_at"])),
                ("Size", output.size(backup["size_bytes"])),
                ("Region", backup["region"]),
                ("Chain (its full)", backup["chain_id"]),
                *(
                    [("Error", f"{backup['error']['code']}: {backup['error']['message']}")]
                    if backup.get("error")
                    else []
                ),
                *([("Verified", _verification_text(verification))] if verification else []),
            ],
        )
        facts.show_header = False
        rows = [
            (
                db["name"],
                t["schema"],
                t["name"],
                f"{t['row_count']:,}",
                output.size(t["size_bytes"]),
            )
            for db in databases
            for t in db["tables"]
        ]
        catalog = output.table(
            "Databases and tables", ["Database", "Schema", "Table", "Rows>", "Size>"], rows
        )
        output.show(facts, catalog if rows else "No tables listed.")

    run(api_url, data_dir, credential, work)


def _verification_text(verification: dict[str, Any]) -> str:
    verdict = "OK" if verification["ok"] else "FAILED"
    problems = len(verification["missing_chunks"]) + len(verification["corrupt_chunks"])
    return (
        f"{verdict} at {output.utc(verification['verified_at'])}: "
        f"{verification['chunks_checked']} chunks checked, {problems} missing or corrupt"
    )


# -- settings get | set -----------------------------------------------------------------------

settings_app = typer.Typer(help="a cluster's backup settings", no_args_is_help=True)


def _show_settings(cluster: str, config: dict[str, Any], json: bool) -> None:
    if json:
        return output.emit_json(config)
    table = output.table(
        f"Backup settings of {cluster}",
        ["", ""],
        [
            ("Enabled", "yes" if config["enabled"] else "no"),
            ("Frequency", f"every {config['frequency_minutes']} minutes"),
            ("Retention", f"{config['retention_days']} days"),
        ],
    )
    table.show_header = False
    output.show(table)


@settings_app.command("get")
def settings_get(
    cluster: ClusterId,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Show a cluster's backup settings."""
    run(
        api_url,
        data_dir,
        credential,
        lambda api: _show_settings(
            cluster, api.get(f"{cluster_path(cluster)}/backups/config"), json
        ),
    )


@settings_app.command("set")
def settings_set(
    cluster: ClusterId,
    enabled: Annotated[
        bool | None,
        typer.Option("--enabled/--disabled", help="turn scheduled backups on or off"),
    ] = None,
    frequency: Annotated[
        int | None,
        typer.Option(help="minutes between backups: 5, 10, 15, 30, 60, 240 or 1440"),
    ] = None,
    retention: Annotated[
        int | None,
        typer.Option(help="days a backup is kept: 2, 7, 30, 90 or 365 (changed once only)"),
    ] = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Change a cluster's backup settings; what is left out stays. A change of frequency or
    retention takes a full backup at once; retention can be changed once."""
    change = {
        k: v
        for k, v in {
            "enabled": enabled,
            "frequency_minutes": frequency,
            "retention_days": retention,
        }.items()
        if v is not None
    }
    if not change:
        raise typer.BadParameter(
            "nothing to change: give --enabled/--disabled, --frequency or --retention"
        )

    def work(api: Api) -> None:
        api.call("PATCH", f"{cluster_path(cluster)}/backups-config", body=change)
        _show_settings(cluster, api.get(f"{cluster_path(cluster)}/backups/config"), json)

    run(api_url, data_dir, credential, work)


# -- backup now | verify ----------------------------------------------------------------------

backup_app = typer.Typer(help="take or verify one backup", no_args_is_help=True)


class BackupKind(StrEnum):
    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"


@backup_app.command("now")
def backup_now(
    cluster: ClusterId,
    kind: Annotated[
        BackupKind,
        typer.Option(
            "--type",
            help="FULL, or INCREMENTAL on the chain of the newest restorable backup",
        ),
    ] = BackupKind.FULL,
    wait: Annotated[bool, typer.Option("--wait", help="wait until it completes or fails")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits at most")] = 3600.0,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Take a backup of a cluster now. Exit 1 if refused (or, with --wait, if it fails)."""

    def work(api: Api) -> int:
        backup = api.call("POST", f"{cluster_path(cluster)}/backups", body={"type": kind.value})
        if wait:
            path = f"{cluster_path(cluster)}/backups/{segment(backup['id'])}"

            def ended() -> dict[str, Any] | None:
                now = api.get(path)
                return now if now["status"] in ("COMPLETE", "FAILED") else None

            backup = wait_for(f"backup {backup['id']}", timeout, 1.0, ended)
        if json:
            output.emit_json(backup)
        else:
            line = f"backup {backup['id']} of {cluster}: {backup['type']} {backup['status']}"
            if backup["status"] == "COMPLETE":
                line += f", {output.size(backup['size_bytes'])}, data from {output.utc(backup['as_of_time'])} UTC"
            if backup.get("error"):
                line += f": {backup['error']['code']}: {backup['error']['message']}"
            output.show(line)
        return REFUSED if backup["status"] == "FAILED" else 0

    run(api_url, data_dir, credential, work)


@backup_app.command("verify")
def backup_verify(
    backup_id: BackupId,
    cluster: InCluster = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 3600.0,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Read every chunk of a backup and check its hash; wait for the result. Exit 1 when a
    chunk is missing or corrupt."""

    def work(api: Api) -> int:
        backup = find_backup(api, backup_id, cluster)
        path = f"{cluster_path(backup['cluster_id'])}/backups/{segment(backup['id'])}"
        started = api.call("POST", f"{path}/verify")

        def verified() -> dict[str, Any] | None:
            result = api.get(path).get("verification")
            ours = result is not None and result.get("command_id") == started["command_id"]
            return result if ours else None

        result = wait_for(f"verification of backup {backup['id']}", timeout, 0.5, verified)
        if json:
            output.emit_json(result)
        else:
            output.show(f"backup {backup['id']}: {_verification_text(result)}")
            for chunk in result["missing_chunks"]:
                output.show(f"  missing: {chunk}")
            for chunk in result["corrupt_chunks"]:
                output.show(f"  corrupt: {chunk}")
        return 0 if result["ok"] else REFUSED

    run(api_url, data_dir, credential, work)


# -- restores list ----------------------------------------------------------------------------

restores_app = typer.Typer(help="restore jobs", no_args_is_help=True)


def objects_text(job: dict[str, Any]) -> str:
    objects = job.get("objects") or []
    if not objects:
        return ""
    tables = [f"{o.get('schema') or 'public'}.{o['table']}" for o in objects if o.get("table")]
    return f"{objects[0]['database']}" + (f": {', '.join(tables)}" if tables else "")


@restores_app.command("list")
def restores_list(
    cluster: ClusterId,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="jobs per page")] = 50,
    page: Annotated[int, typer.Option(min=1, help="the page (newest first)")] = 1,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """The restore jobs into a cluster, newest first."""

    def work(api: Api) -> None:
        answer = api.get(
            f"{cluster_path(cluster)}/restores",
            **{"pagination.limit": limit, "pagination.page": page},
        )
        if json:
            return output.emit_json(answer)
        rows = []
        for job in answer["restores"]:
            source = " ".join(x for x in (job["source_cluster_name"] or "", objects_text(job)) if x)
            target = " ".join(
                x
                for x in (job["destination_cluster_name"] or "", job["target_database"] or "")
                if x
            )
            state = output.status(job["phase"])
            if job["client_error_code"]:
                state.append(f" {job['client_error_code']}: {job['client_error_message']}")
            rows.append(
                (
                    job["id"],
                    f"{source} -> {target}",
                    job["type"],
                    output.utc(job["backup_end_time"]),
                    state,
                    f"{job['completion_percent'] * 100:.1f}%",
                    output.utc(job["created_at"]),
                    output.utc(job["completed_at"]),
                )
            )
        if not rows:
            return output.show(f"No restore jobs into {cluster}.")
        output.show(
            output.table(
                f"Restore jobs into {cluster} (times UTC)",
                [
                    "Job ID",
                    "Source -> destination",
                    "Type",
                    "Backup taken on",
                    "Status",
                    "Progress>",
                    "Start",
                    "End",
                ],
                rows,
            )
        )

    run(api_url, data_dir, credential, work)


# -- history ----------------------------------------------------------------------------------

EVENT_META = {
    "event_id",
    "position",
    "cluster_id",
    "aggregate_id",
    "aggregate_version",
    "occurred_at",
    "recorded_at",
    "by",
    "type",
    "schema_version",
}


def event_details(event: dict[str, Any], width: int = 160) -> str:
    parts = []
    for key, value in event.items():
        if key in EVENT_META or value is None or value == []:
            continue
        text = str(value) if not isinstance(value, (dict, list)) else _json(value)
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    summary = " ".join(parts)
    return summary if len(summary) <= width else summary[: width - 3] + "..."


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def history(
    cluster: ClusterId,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="events to show")] = 50,
    after: Annotated[
        int | None,
        typer.Option(min=0, help="the events after this position (default: the latest ones)"),
    ] = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """A cluster's audit trail: its events in order, with who caused each."""

    def work(api: Api) -> None:
        where = {"after": after} if after is not None else {"before": AUDIT_LATEST}
        events = api.get(f"{cluster_path(cluster)}/events", limit=limit, **where)["events"]
        if json:
            return output.emit_json({"events": events})
        if not events:
            return output.show(f"No events of {cluster}" + (f" after {after}." if after else "."))
        output.show(
            output.table(
                f"Audit trail of {cluster} (times UTC)",
                ["#>", "Time", "Event", "By", "Details"],
                [
                    (
                        e["position"],
                        output.utc(e["occurred_at"]),
                        e["type"],
                        e.get("by") or "-",
                        event_details(e),
                    )
                    for e in events
                ],
            ),
            f"Next: --after {events[-1]['position']}",
        )

    run(api_url, data_dir, credential, work)


def register(app: typer.Typer, clusters_app: typer.Typer) -> None:
    """Mount these commands on the ``managed-backups`` application."""
    clusters_app.command("list")(clusters_list)
    app.add_typer(backups_app, name="backups")
    app.add_typer(backup_app, name="backup")
    app.add_typer(settings_app, name="settings")
    app.add_typer(restores_app, name="restores")
    app.command("history")(history)
