"""Backup endpoints: the listed (restorable or running) backups, the incomplete ones, and a
completed backup's databases and tables (from the event's catalog, or from the backup's
manifest when the event only summarises a large catalog)."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, status

from managed_backups.contracts import topics
from managed_backups.services.api.dependencies import (
    Caller,
    CommandsDep,
    Context,
    Models,
    RuntimeDep,
    visible_cluster,
)
from managed_backups.services.api.schemas import (
    CHANGING,
    VIEWING,
    BackupDatabase,
    BackupDatabaseList,
    BackupDay,
    BackupDays,
    BackupDetail,
    BackupList,
    BackupTable,
    BackupTableList,
    IncompleteBackup,
    IncompleteBackupList,
    ListedBackup,
    Pagination,
    TakeBackupRequest,
    VerifyStarted,
    errors,
)
from managed_backups.shared.dataplane.manifest import CatalogDatabase as ManifestCatalogDatabase
from managed_backups.shared.dataplane.manifest import read_catalog
from managed_backups.shared.dataplane.objectstore import open_store
from managed_backups.shared.domain.catalog import (
    catalog_is_partial,
    database_is_partial,
    table_count,
)
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.errors import NotFound, Refused, not_registered
from managed_backups.shared.domain.ids import cluster_aggregate_id
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import Page, ReadModels

MAX_PAGE = 1_000_000

router = APIRouter(
    prefix="/api/v1/clusters/{cluster_id}/backups", tags=["backups"], responses=errors(*VIEWING)
)


def in_range(name: str, value: datetime | None) -> datetime | None:
    """A query time as UTC, or 400 when it cannot be one (e.g. year 1 at UTC+14)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{name} is out of the representable range"
        ) from None


@router.get("")
def list_backups(
    cluster_id: str,
    who: Caller,
    models: Models,
    runtime: RuntimeDep,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    page: Annotated[int, Query(alias="pagination.page", ge=1, le=MAX_PAGE)] = 1,
    limit: Annotated[int, Query(alias="pagination.limit", ge=1, le=1000)] = 100,
    sort_order: Annotated[
        Literal["ASC", "DESC", "asc", "desc"], Query(alias="pagination.sort_order")
    ] = "DESC",
) -> BackupList:
    start_time = in_range("start_time", start_time)
    end_time = in_range("end_time", end_time)
    cluster = visible_cluster(models, cluster_id, who)
    if cluster["state"] == "DELETED":  # a deleted cluster's backups: administrators only
        who.require(Action.MANAGE_CLUSTERS, cluster["organization"], cluster_id)
    docs, more = models.listed_backups(
        cluster_id,
        runtime.clock.now(),
        start_time,
        end_time,
        Page(page, limit, sort_order.upper() == "DESC"),
    )
    return BackupList(
        backups=[
            ListedBackup(
                id=d["id"],
                as_of_time=d["as_of_time"],
                type=d["type"],
                status=d["status"],
                expires_at=d["expires_at"],
                kept_past_retention=d.get("kept_past_retention", False),
                retention_note=d.get("retention_note"),
                region=d["region"],
                size_bytes=d["size_bytes"],
                database_count=d["database_count"],
            )
            for d in docs
        ],
        pagination=Pagination.around(page, more),
    )


@router.get("/incomplete")
def incomplete_backups(
    cluster_id: str, who: Caller, models: Models, runtime: RuntimeDep
) -> IncompleteBackupList:
    visible_cluster(models, cluster_id, who)
    now = runtime.clock.now()
    rows = []
    for d in models.incomplete_backups(cluster_id):
        started = d["started_at"] or d["scheduled_for"]
        end = datetime.fromisoformat(d["ended_at"]) if d["ended_at"] else now
        duration = (end - datetime.fromisoformat(started)).total_seconds() if started else 0.0
        rows.append(
            IncompleteBackup.model_validate(
                {
                    "id": d["id"],
                    "type": d["type"],
                    "started": started,
                    "duration_seconds": max(duration, 0.0),
                    "status": d["status"],
                    "error": d["error"],
                    "failed_step": d["failed_step"],
                    "description": d["description"],
                }
            )
        )
    return IncompleteBackupList(backups=rows)


@router.get("/days")
def backup_days(
    cluster_id: str,
    who: Caller,
    models: Models,
    runtime: RuntimeDep,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> BackupDays:
    """The UTC days with listed backups between the times (the console's calendar marks them)."""
    start_time = in_range("start_time", start_time)
    end_time = in_range("end_time", end_time)
    cluster = visible_cluster(models, cluster_id, who)
    if cluster["state"] == "DELETED":
        who.require(Action.MANAGE_CLUSTERS, cluster["organization"], cluster_id)
    days = models.backup_days(cluster_id, runtime.clock.now(), start_time, end_time)
    return BackupDays(days=[BackupDay(date=day, backups=n) for day, n in days])


@router.post("", responses=errors(*CHANGING))
async def take_backup(
    cluster_id: str, body: TakeBackupRequest, who: Caller, models: Models, commands: CommandsDep
) -> BackupDetail:
    """Take a backup now (a TakeBackup command signed for the caller, who needs the right to
    take a backup on the cluster); answers with the backup once it is recorded as started."""
    backup_id = str(uuid.uuid4())
    await commands.send(
        topics.BACKUP_COMMANDS,
        {
            "type": "TakeBackup",
            "cluster_id": cluster_id,
            "backup_id": backup_id,
            "backup_type": body.type.value,
            "reason": "MANUAL",
        },
        who,
    )
    doc = models.backup(cluster_id, backup_id)
    if doc is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"backup {backup_id} is recorded but not yet in the views",
        )
    return backup_detail(doc)


@router.get("/{backup_id}")
def get_backup(cluster_id: str, backup_id: UUID, who: Caller, models: Models) -> BackupDetail:
    """One backup of the cluster, whatever its status (with its last verification)."""
    visible_cluster(models, cluster_id, who)
    doc = models.backup(cluster_id, str(backup_id))
    if doc is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"backup {backup_id} of cluster {cluster_id} is not known"
        )
    return backup_detail(doc)


@router.post(
    "/{backup_id}/verify",
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(*CHANGING),
)
async def verify_backup(
    cluster_id: str, backup_id: UUID, who: Caller, commands: CommandsDep
) -> VerifyStarted:
    """Read every chunk of the backup and check its hash (a VerifyBackup command). Answers
    once the verification started; its result is the backup's ``verification``, carrying the
    ``command_id`` answered here."""
    command_id = str(uuid.uuid4())
    await commands.send(
        topics.BACKUP_COMMANDS,
        {
            "type": "VerifyBackup",
            "command_id": command_id,
            "cluster_id": cluster_id,
            "backup_id": str(backup_id),
        },
        who,
    )
    return VerifyStarted(backup_id=str(backup_id), command_id=command_id)


def backup_detail(doc: dict[str, Any]) -> BackupDetail:
    return BackupDetail.model_validate(
        {
            **{k: doc.get(k) for k in BackupDetail.model_fields},
            "verification": doc.get("verification"),
        }
    )


def completed_backup(
    models: ReadModels, cluster_id: str, backup_id: str, who: Principal
) -> dict[str, Any]:
    visible_cluster(models, cluster_id, who)
    doc = models.backup(cluster_id, backup_id)
    if doc is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"backup {backup_id} of cluster {cluster_id} is not known"
        )
    if doc["status"] != "COMPLETE":
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"backup {backup_id} is {doc['status']}, not COMPLETE"
        )
    return doc


def full_catalog(context: Context, doc: dict[str, Any]) -> list[ManifestCatalogDatabase]:
    """The backup's whole catalog, from its manifest (the event summarises large ones)."""
    url = context.runtime.settings.region_store_url(doc["region"])
    stores = context.manifest_stores
    try:
        if url not in stores:
            stores[url] = open_store(url)
        cluster = context.runtime.store.get_or_none(
            cluster_aggregate_id(doc["cluster_id"]), Cluster
        )
        if cluster is None:
            raise NotFound(not_registered(doc["cluster_id"]))
        sealed = context.encryption.seal(stores[url], cluster)  # an encrypted manifest
        catalog = read_catalog(sealed, doc["cluster_id"], str(doc["chain_id"]), str(doc["id"]))
    except Exception as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the catalog of backup {doc['id']} cannot be read from its manifest: {exc}",
        ) from None
    return list(catalog.databases)


COMPLETED = errors(status.HTTP_409_CONFLICT, status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/{backup_id}/databases", responses=COMPLETED)
def backup_databases(
    cluster_id: str, backup_id: str, who: Caller, context: Context
) -> BackupDatabaseList:
    doc = completed_backup(context.models, cluster_id, backup_id, who)
    if catalog_is_partial(doc["catalog"], doc["database_count"]):
        return BackupDatabaseList(
            databases=[
                BackupDatabase(name=db.name, table_count=db.table_count)
                for db in full_catalog(context, doc)
                if db.table_count
            ]
        )
    databases = []
    for db in doc["catalog"]:
        tables = table_count(db)
        if tables:
            databases.append(BackupDatabase(name=db["name"], table_count=tables))
    return BackupDatabaseList(databases=databases)


@router.get("/{backup_id}/databases/{database}/tables", responses=COMPLETED)
def backup_tables(
    cluster_id: str, backup_id: str, database: str, who: Caller, context: Context
) -> BackupTableList:
    doc = completed_backup(context.models, cluster_id, backup_id, who)
    listed = next((db for db in doc["catalog"] if db["name"] == database), None)
    if listed is not None and not database_is_partial(listed):
        return BackupTableList(
            tables=[
                BackupTable(
                    schema_name=s["name"],
                    name=t["name"],
                    row_count=t["row_count"],
                    size_bytes=t["size_bytes"],
                )
                for s in listed["schemas"]
                for t in s["tables"]
            ]
        )
    if listed is not None or catalog_is_partial(doc["catalog"], doc["database_count"]):
        for db in full_catalog(context, doc):
            if db.name == database:
                return BackupTableList(
                    tables=[
                        BackupTable(
                            schema_name=s.name,
                            name=t.name,
                            row_count=t.rows,
                            size_bytes=t.size_bytes,
                        )
                        for s in db.schemas
                        for t in s.tables
                    ]
                )
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"database {database} is not in backup {backup_id}"
    )


lookup = APIRouter(prefix="/api/v1/backups", tags=["backups"], responses=errors(*VIEWING))


@lookup.get("/{backup_id}")
def find_backup(backup_id: UUID, who: Caller, models: Models) -> BackupDetail:
    """A backup by its id alone, in whichever cluster the caller may see it (what
    ``managed-backups backups show ID`` asks first)."""
    for doc in models.backups_by_id(str(backup_id)):
        try:  # the one access rule, as GET .../clusters/{cluster_id}/backups/{backup_id} applies
            visible_cluster(models, doc["cluster_id"], who)
        except Refused:
            continue
        return backup_detail(doc)
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"backup {backup_id} is not known")
