"""``managed-backups restore start``: start a restore job over the HTTP API and, with
``--follow``, show its progress (phase, percent, bytes, rate, ETA) until it ends.

Exit codes: 0 the job was recorded (or, with ``--follow``, SUCCEEDED); 1 the request was refused
or the job FAILED (the reason is printed on stderr); 2 a usage problem; 3 no answer from the API
(the URL tried is printed). The API is found as every command finds it (``--api-url``, else
the URL ``up`` remembered in the data directory: ``shared/locations.py``); ``--follow`` draws its
progress with rich (bar, bytes, rate and ETA on a terminal; a line per change otherwise).

The command is a typer sub-application (``app``) that the top-level ``managed-backups`` CLI
mounts as ``restore``. Its options are parsed into one typed ``RestoreRequest``; turning that
into the API's JSON body is a pure function (``RestoreRequest.body``), so the mapping is tested
without the network.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from managed_backups.services.apicli import output
from managed_backups.services.apicli.client import REFUSED, Api, CliError, cluster_path, segment
from managed_backups.services.apicli.commands import ApiUrl

if TYPE_CHECKING:
    from rich.progress import Task

POLL_SECONDS = 0.5

app = typer.Typer(help="restore jobs", no_args_is_help=True)


class RestoreType(StrEnum):
    """What a restore job restores (the API's ``type``)."""

    CLUSTER = "CLUSTER"
    DATABASE = "DATABASE"
    TABLE = "TABLE"


@dataclass(frozen=True)
class RestoreRequest:
    """The restore-specific options of ``restore start``, as the API's request body."""

    type: RestoreType
    database: str | None = None
    schema: str | None = None
    tables: tuple[str, ...] = ()
    backup_id: str | None = None
    source: str | None = None
    new_db_name: str | None = None
    into_db: str | None = None
    skip_missing_foreign_keys: bool = False
    skip_missing_sequences: bool = False
    skip_missing_views: bool = False
    skip_localities_check: bool = False

    def objects(self) -> list[dict[str, str]]:
        if self.database is None:
            return []
        if not self.tables:
            return [{"database": self.database}]
        schema = {"schema": self.schema} if self.schema else {}
        return [{"database": self.database, **schema, "table": t} for t in self.tables]

    def body(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "skip_missing_foreign_keys": self.skip_missing_foreign_keys,
            "skip_missing_sequences": self.skip_missing_sequences,
            "skip_missing_views": self.skip_missing_views,
            "skip_localities_check": self.skip_localities_check,
        }
        if self.new_db_name:
            opts["new_db_name"] = self.new_db_name
        if self.into_db:
            opts["into_db"] = self.into_db
        body: dict[str, Any] = {
            "type": self.type.value,
            "objects": self.objects(),
            "restore_opts": opts,
        }
        if self.backup_id:
            body["backup_id"] = self.backup_id
        if self.source:
            body["source_cluster_id"] = self.source
        return body


@app.command("start")
def start(
    destination: Annotated[str, typer.Argument(metavar="DEST", help="the destination cluster id")],
    restore_type: Annotated[
        RestoreType,
        typer.Option("--type", help="what to restore: the whole cluster, databases or tables"),
    ],
    database: Annotated[
        str | None, typer.Option(help="the database of the backup to restore (or from)")
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="schema of the tables (default public)")
    ] = None,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", metavar="TABLE", help="a table, view or sequence (repeatable)"),
    ] = None,
    backup_id: Annotated[
        str | None, typer.Option(help="default: the latest restorable backup")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="source cluster id (default: the destination)")
    ] = None,
    new_db_name: Annotated[
        str | None, typer.Option(help="DATABASE: the restored database's name (default its own)")
    ] = None,
    into_db: Annotated[
        str | None, typer.Option(help="TABLE: an existing database to restore the tables into")
    ] = None,
    skip_missing_foreign_keys: Annotated[
        bool,
        typer.Option(
            "--skip-missing-foreign-keys",
            help="leave out a foreign key to a table not restored instead of refusing",
        ),
    ] = False,
    skip_missing_sequences: Annotated[
        bool,
        typer.Option(
            "--skip-missing-sequences",
            help="drop a default using a sequence not restored instead of refusing",
        ),
    ] = False,
    skip_missing_views: Annotated[
        bool,
        typer.Option(
            "--skip-missing-views",
            help="skip a view reading a relation not restored instead of refusing",
        ),
    ] = False,
    skip_localities_check: Annotated[
        bool,
        typer.Option(
            "--skip-localities-check",
            help="allow a multi-region source into a single-region destination (ADVANCED)",
        ),
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="show progress until the job ends")
    ] = False,
    api_url: ApiUrl = None,
    api: Annotated[
        str | None, typer.Option("--api", hidden=True, help="the former name of --api-url")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="the data directory of `up` (for its admin key; default: $XDG_DATA_HOME/managed-backups)"
        ),
    ] = None,
    credential: Annotated[
        str | None,
        typer.Option(
            envvar="MANAGED_BACKUPS_CREDENTIAL",
            show_envvar=True,
            help="API key (default: the data directory's admin key)",
        ),
    ] = None,
) -> None:
    """Restore a database or tables of a backup into a cluster."""
    request = RestoreRequest(
        type=restore_type,
        database=database,
        schema=schema,
        tables=tuple(table or ()),
        backup_id=backup_id,
        source=source,
        new_db_name=new_db_name,
        into_db=into_db,
        skip_missing_foreign_keys=skip_missing_foreign_keys,
        skip_missing_sequences=skip_missing_sequences,
        skip_missing_views=skip_missing_views,
        skip_localities_check=skip_localities_check,
    )
    raise typer.Exit(
        start_restore(
            destination,
            request,
            follow=follow,
            api_url=api_url or api,
            data_dir=data_dir,
            credential=credential,
        )
    )


def start_restore(
    destination: str,
    request: RestoreRequest,
    *,
    follow: bool,
    api_url: str | None,
    data_dir: Path | None,
    credential: str | None,
) -> int:
    """Post the job; print it, or with ``follow`` its progress; return the exit code."""
    try:
        with Api.connect(api_url, data_dir, credential) as api:
            job: dict[str, Any] = api.call(
                "POST", f"{cluster_path(destination)}/restores", body=request.body()
            )
            if not follow:
                print(json.dumps(job, indent=2))
                return 0
            return follow_job(api, destination, job["id"])
    except CliError as failure:
        print(failure.message, file=sys.stderr)
        return failure.exit_code


def progress_text(job: dict[str, Any], task: Task) -> str:
    """The line printed per change when stdout is not a terminal (rich measures the rate)."""
    rate = f"{output.size(task.speed)}/s" if task.speed else "-/s"
    left = task.time_remaining
    eta = f"ETA {left:.0f}s" if left is not None and job["status"] == "PENDING" else "ETA -"
    return (
        f"{job['phase']:<10} {float(job['completion_percent']) * 100:5.1f}%  "
        f"{output.size(job['bytes_done'])} / {output.size(job['bytes_total'])}  {rate}  {eta}"
    )


def follow_job(api: Api, destination: str, restore_id: str, poll: float = POLL_SECONDS) -> int:
    """Poll the job until it ends, drawing its progress; 0 on SUCCESS, 1 on FAILED (reason on
    stderr)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = output.console()
    path = f"{cluster_path(destination)}/restores/{segment(restore_id)}"
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task_id = progress.add_task("Preparing", total=None)
        last = ""
        while True:
            job = api.get(path)
            total = int(job["bytes_total"]) or None
            done = int(job["bytes_done"])
            if job["status"] == "SUCCESS" and total:
                done = total
            progress.update(task_id, description=job["phase"], total=total, completed=done)
            if not console.is_terminal:
                line = progress_text(job, progress.tasks[0])
                if line != last:
                    console.print(line)
                    last = line
            if job["status"] in ("SUCCESS", "FAILED"):
                break
            time.sleep(poll)
    if job["status"] == "SUCCESS":
        console.print(f"restored: {', '.join(job.get('restored') or [])}")
        for item in job.get("left_out") or []:
            console.print(f"left out: {item}")
        return 0
    print(
        f"restore {restore_id} failed: {job['client_error_code']}: "
        f"{job['client_error_message']} (step: {job['failed_step']}); destination "
        f"{job['destination_state']}",
        file=sys.stderr,
    )
    return REFUSED
