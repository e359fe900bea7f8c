"""``managed-backups restore start``: start a restore job over the HTTP API and, with
``--follow``, show its progress (phase, percent, bytes, rate, ETA) until it ends.

Exit codes: 0 the job was recorded (or, with ``--follow``, SUCCEEDED); 1 the request was refused
or the job FAILED (the reason is printed on stderr); 2 a usage or connection problem.

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
from typing import Annotated, Any, TextIO

import httpx
import typer

from managed_backups.shared.settings import Settings, default_data_dir

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


def api_client(base_url: str) -> httpx.Client:
    """The HTTP client ``restore start`` talks to the API with (tests swap in a mock transport)."""
    return httpx.Client(base_url=base_url, timeout=60)


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
    api: Annotated[
        str | None,
        typer.Option(help="API base URL (default: from the data directory's settings)"),
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
            destination, request, follow=follow, api=api, data_dir=data_dir, credential=credential
        )
    )


def start_restore(
    destination: str,
    request: RestoreRequest,
    *,
    follow: bool,
    api: str | None,
    data_dir: Path | None,
    credential: str | None,
) -> int:
    """Post the job; print it, or with ``follow`` its progress; return the exit code."""
    directory = data_dir.resolve() if data_dir else default_data_dir()
    key_file = directory / "admin-api-key"
    credential = credential or (key_file.read_text().strip() if key_file.exists() else None)
    if not credential:
        print("no credential: pass --credential or --data-dir of `up`", file=sys.stderr)
        return 2
    if api is None:
        settings = Settings(data_dir=directory)
        api = f"http://{settings.api_host}:{settings.api_port}"
    with api_client(api) as client:
        client.headers["Authorization"] = f"Bearer {credential}"
        try:
            answer = client.post(f"/api/v1/clusters/{destination}/restores", json=request.body())
        except httpx.HTTPError as exc:
            print(f"the API is not reachable: {exc}", file=sys.stderr)
            return 2
        if answer.status_code != 200:
            print(f"refused ({answer.status_code}): {_message(answer)}", file=sys.stderr)
            return 1
        job: dict[str, Any] = answer.json()
        if not follow:
            print(json.dumps(job, indent=2))
            return 0
        return follow_job(client, destination, job["id"], sys.stdout)


def _message(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("message"))
    except ValueError:
        return answer.text


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def progress_line(job: dict[str, Any], started: float, now: float) -> str:
    """``Running   [#########-----------]  45.0%  12.3 MiB / 27.1 MiB  5.1 MiB/s  ETA 3s``"""
    fraction = float(job["completion_percent"])
    done, total = int(job["bytes_done"]), int(job["bytes_total"])
    elapsed = max(now - started, 1e-6)
    rate = done / elapsed
    eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and total > done else "ETA -"
    bar = "#" * int(fraction * 20)
    return (
        f"{job['phase']:<10} [{bar:<20}] {fraction * 100:5.1f}%  {_mib(done)} / {_mib(total)}  "
        f"{_mib(rate)}/s  {eta}"
    )


def follow_job(
    client: httpx.Client, destination: str, restore_id: str, out: TextIO, poll: float = POLL_SECONDS
) -> int:
    """Poll the job until it ends; 0 on SUCCESS, 1 on FAILED (reason on stderr)."""
    started = time.monotonic()
    last = ""
    while True:
        answer = client.get(f"/api/v1/clusters/{destination}/restores/{restore_id}")
        if answer.status_code != 200:
            print(
                f"cannot read the job ({answer.status_code}): {_message(answer)}", file=sys.stderr
            )
            return 2
        job = answer.json()
        line = progress_line(job, started, time.monotonic())
        if line != last:
            out.write(("\r" if out.isatty() else "") + line + ("" if out.isatty() else "\n"))
            out.flush()
            last = line
        if job["status"] == "SUCCESS":
            out.write(f"\nrestored: {', '.join(job.get('restored') or [])}\n")
            for item in job.get("left_out") or []:
                out.write(f"left out: {item}\n")
            return 0
        if job["status"] == "FAILED":
            out.write("\n")
            print(
                f"restore {restore_id} failed: {job['client_error_code']}: "
                f"{job['client_error_message']} (step: {job['failed_step']}); destination "
                f"{job['destination_state']}",
                file=sys.stderr,
            )
            return 1
        time.sleep(poll)
