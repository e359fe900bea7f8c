"""The HTTP API: projection endpoints (queries) and the command gateway (changes).

Queries read the read models kept by the projections service. Changes are published as commands
on their topic with the caller's bearer token as credential, exactly as any other publisher would;
the API answers once the command's result is back and the read models have reached the position
of the events it recorded, so a GET right after a PUT shows the change.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from managed_backups.contracts import topics
from managed_backups.contracts.results import CommandResult
from managed_backups.services.api.limits import AuthenticatedBoundedBodies
from managed_backups.services.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from managed_backups.services.api.metrics import render as metrics_text
from managed_backups.services.api.restores import restore_router
from managed_backups.services.runtime import Runtime
from managed_backups.shared.clock import SimulatedClock
from managed_backups.shared.dataplane.manifest import CatalogDatabase as ManifestCatalogDatabase
from managed_backups.shared.dataplane.manifest import read_manifest
from managed_backups.shared.dataplane.objectstore import ObjectStore, open_store
from managed_backups.shared.domain.backup import load_backup
from managed_backups.shared.domain.catalog import (
    catalog_is_partial,
    database_is_partial,
    table_count,
)
from managed_backups.shared.domain.cluster import Cluster
from managed_backups.shared.domain.connection_secret import (
    ConnectionSecret,
    a_new_secret_takes_the_missing_full,
)
from managed_backups.shared.domain.errors import Refused, not_registered
from managed_backups.shared.domain.ids import cluster_aggregate_id, connection_secret_aggregate_id
from managed_backups.shared.eventstore import IntegrityError
from managed_backups.shared.gateway import CommandGateway, CommandTimeout
from managed_backups.shared.secrets import MAX_SECRET_LENGTH, ConnectionSecrets
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import Page, ReadModels

PROJECTION_WAIT_SECONDS = 15.0


class BackupsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    frequency_minutes: int
    retention_days: int


class BackupsConfigPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    frequency_minutes: int | None = None
    retention_days: int | None = None


class ClockAdvance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    advance_seconds: float = Field(gt=0, le=10 * 365 * 86400)


class ConnectionSecretBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(
        min_length=1, max_length=MAX_SECRET_LENGTH, repr=False, description="Kept encrypted."
    )


def set_connection_secret(
    runtime: Runtime,
    secrets_store: ConnectionSecrets,
    cluster_id: str,
    password: str,
    who: Principal,
) -> int | None:
    """Record who changes the secret, then store it; returns the audit event's position."""
    cluster = runtime.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
    if cluster is None:
        raise HTTPException(404, not_registered(cluster_id))
    who.require_on_cluster(Action.MANAGE_CLUSTERS, cluster.organization, cluster_id)
    if cluster.deleted:
        raise HTTPException(404, f"cluster {cluster_id} was deleted")
    now = runtime.clock.now()
    audit = runtime.store.get_or_none(connection_secret_aggregate_id(cluster_id), ConnectionSecret)
    if audit is None:
        audit = ConnectionSecret(cluster_id=cluster_id, at=now, by=who.name)
    else:
        audit.change(at=now, by=who.name)
    try:
        position = runtime.store.save_all(audit)
    except IntegrityError:
        raise HTTPException(409, "the secret is being changed concurrently; retry") from None
    secrets_store.put(cluster_id, password, now.isoformat())
    return position


def missing_full(runtime: Runtime, models: ReadModels, cluster_id: str) -> bool:
    """Whether a new secret should take the cluster's missing full backup (the named rule).
    Called once the views caught up with the secret's event, so with every earlier backup."""
    cluster = runtime.store.get_or_none(cluster_aggregate_id(cluster_id), Cluster)
    if cluster is None or cluster.deleted:
        return False
    listed, _ = models.listed_backups(
        cluster_id, runtime.clock.now(), None, None, Page(page=1, limit=1, sort_desc=True)
    )
    last = cluster.last_scheduled
    backup = load_backup(runtime.store, cluster_id, UUID(str(last["backup_id"]))) if last else None
    status = None if backup is None else str(backup.status)
    return a_new_secret_takes_the_missing_full(bool(listed), status)


log = logging.getLogger(__name__)
MAX_PAGE = 1_000_000
MAX_POSITION = 2**62


def in_range(name: str, value: datetime | None) -> datetime | None:
    """A query time as UTC, or 400 when it cannot be one (e.g. year 1 at UTC+14)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise HTTPException(400, f"{name} is out of the representable range") from None


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"code": status, "message": message})


def create_app(runtime: Runtime, gateway: CommandGateway) -> FastAPI:
    models = ReadModels(runtime.db)
    models.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="managed-backups",
        version="1",
        description="Managed backups for PostgreSQL-compatible clusters.",
        lifespan=lifespan,
    )

    app.add_middleware(
        AuthenticatedBoundedBodies,
        authenticate=runtime.authenticator.authenticate,
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.code, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"] if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
        return error(400, "; ".join(parts))

    def credential(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token: send Authorization: Bearer <API key>")
        return token.strip()

    def principal(token: Annotated[str, Depends(credential)]) -> Principal:
        return runtime.authenticator.authenticate(token)

    Caller = Annotated[Principal, Depends(principal)]
    Token = Annotated[str, Depends(credential)]

    def visible_cluster(
        cluster_id: str, who: Principal, action: Action = Action.VIEW_BACKUPS
    ) -> dict[str, Any]:
        doc = models.cluster(cluster_id)
        if doc is None:
            raise HTTPException(404, not_registered(cluster_id))
        who.require_on_cluster(action, doc["organization"], cluster_id)
        return doc

    def live_cluster(
        cluster_id: str, who: Principal, action: Action = Action.VIEW_BACKUPS
    ) -> dict[str, Any]:
        doc = visible_cluster(cluster_id, who, action)
        if doc["state"] == "DELETED":
            raise HTTPException(404, f"cluster {cluster_id} was deleted")
        return doc

    async def wait_for_projection(position: int | None) -> None:
        if position is None:
            return
        deadline = time.monotonic() + PROJECTION_WAIT_SECONDS
        while await asyncio.to_thread(models.position) < position:
            if time.monotonic() > deadline:
                raise HTTPException(
                    503, "the change is recorded but the views have not caught up yet"
                )
            await asyncio.sleep(0.01)

    async def command(topic: str, body: dict[str, Any]) -> CommandResult:
        body = {"command_id": str(uuid.uuid4()), **body}
        try:
            result = await gateway.request(topic, body)
        except CommandTimeout as exc:
            raise HTTPException(504, str(exc)) from exc
        if result.code >= 300:
            raise HTTPException(result.code, result.reason or "rejected")
        await wait_for_projection(result.position)
        return result

    # -- clusters -------------------------------------------------------------------------------

    @app.get("/api/v1/clusters")
    def list_clusters(who: Caller, show_deleted: bool = False) -> dict[str, Any]:
        docs = [
            d
            for d in models.clusters(include_deleted=show_deleted)
            if who.can(Action.VIEW_BACKUPS, d["organization"], d["id"])
        ]
        return {"clusters": docs}

    @app.get("/api/v1/clusters/{cluster_id}")
    def get_cluster(cluster_id: str, who: Caller) -> dict[str, Any]:
        doc = visible_cluster(cluster_id, who)
        return {**doc, "recoverability": models.recoverability(cluster_id, runtime.clock.now())}

    @app.get("/api/v1/clusters/{cluster_id}/events")
    def cluster_events(
        cluster_id: str,
        who: Caller,
        after: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        visible_cluster(cluster_id, who)
        return {"events": models.audit(cluster_id, after, limit)}

    # -- backup settings ------------------------------------------------------------------------

    def get_config(cluster_id: str, who: Principal) -> dict[str, Any]:
        config: dict[str, Any] = live_cluster(cluster_id, who)["backups_config"]
        return config

    async def change_config(cluster_id: str, token: str, change: dict[str, Any]) -> Response:
        await command(
            topics.CLUSTER_COMMANDS,
            {
                "type": "UpdateBackupSettings",
                "credential": token,
                "cluster_id": cluster_id,
                **change,
            },
        )
        return Response(status_code=200)

    @app.get("/api/v1/clusters/{cluster_id}/backups/config")
    def get_backups_config(cluster_id: str, who: Caller) -> dict[str, Any]:
        return get_config(cluster_id, who)

    @app.get("/api/v1/clusters/{cluster_id}/backups-config")
    def get_backups_config_alias(cluster_id: str, who: Caller) -> dict[str, Any]:
        return get_config(cluster_id, who)

    @app.put("/api/v1/clusters/{cluster_id}/backups/config")
    async def put_backups_config(cluster_id: str, body: BackupsConfig, token: Token) -> Response:
        return await change_config(cluster_id, token, body.model_dump())

    @app.patch("/api/v1/clusters/{cluster_id}/backups-config")
    async def patch_backups_config(
        cluster_id: str, body: BackupsConfigPatch, token: Token
    ) -> Response:
        return await change_config(cluster_id, token, body.model_dump(exclude_none=True))

    # -- backups --------------------------------------------------------------------------------

    @app.get("/api/v1/clusters/{cluster_id}/backups")
    def list_backups(
        cluster_id: str,
        who: Caller,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page: Annotated[int, Query(alias="pagination.page", ge=1, le=MAX_PAGE)] = 1,
        limit: Annotated[int, Query(alias="pagination.limit", ge=1, le=1000)] = 100,
        sort_order: Annotated[
            Literal["ASC", "DESC", "asc", "desc"], Query(alias="pagination.sort_order")
        ] = "DESC",
    ) -> dict[str, Any]:
        start_time = in_range("start_time", start_time)
        end_time = in_range("end_time", end_time)
        cluster = visible_cluster(cluster_id, who)
        if cluster["state"] == "DELETED":  # a deleted cluster's backups: administrators only
            who.require(Action.MANAGE_CLUSTERS, cluster["organization"], cluster_id)
        docs, more = models.listed_backups(
            cluster_id,
            runtime.clock.now(),
            start_time,
            end_time,
            Page(page, limit, sort_order.upper() == "DESC"),
        )
        return {
            "backups": [
                {
                    "id": d["id"],
                    "as_of_time": d["as_of_time"],
                    "type": d["type"],
                    "status": d["status"],
                    "expires_at": d["expires_at"],
                    "kept_past_retention": d.get("kept_past_retention", False),
                    "retention_note": d.get("retention_note"),
                    "region": d["region"],
                    "size_bytes": d["size_bytes"],
                    "database_count": d["database_count"],
                }
                for d in docs
            ],
            "pagination": {
                "next_page": str(page + 1) if more else None,
                "previous_page": str(page - 1) if page > 1 else None,
            },
        }

    @app.get("/api/v1/clusters/{cluster_id}/backups/incomplete")
    def incomplete_backups(cluster_id: str, who: Caller) -> dict[str, Any]:
        visible_cluster(cluster_id, who)
        now = runtime.clock.now()
        rows = []
        for d in models.incomplete_backups(cluster_id):
            started = d["started_at"] or d["scheduled_for"]
            end = datetime.fromisoformat(d["ended_at"]) if d["ended_at"] else now
            duration = (end - datetime.fromisoformat(started)).total_seconds() if started else 0.0
            rows.append(
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
        return {"backups": rows}

    def completed_backup(cluster_id: str, backup_id: str, who: Principal) -> dict[str, Any]:
        visible_cluster(cluster_id, who)
        doc = models.backup(cluster_id, backup_id)
        if doc is None:
            raise HTTPException(404, f"backup {backup_id} of cluster {cluster_id} is not known")
        if doc["status"] != "COMPLETE":
            raise HTTPException(409, f"backup {backup_id} is {doc['status']}, not COMPLETE")
        return doc

    manifest_stores: dict[str, ObjectStore] = {}

    def full_catalog(doc: dict[str, Any]) -> list[ManifestCatalogDatabase]:
        """The backup's whole catalog, from its manifest (the event summarises large ones)."""
        url = runtime.settings.region_store_url(doc["region"])
        try:
            if url not in manifest_stores:
                manifest_stores[url] = open_store(url)
            manifest = read_manifest(
                manifest_stores[url], doc["cluster_id"], str(doc["chain_id"]), str(doc["id"])
            )
        except Exception as exc:
            raise HTTPException(
                503, f"the catalog of backup {doc['id']} cannot be read from its manifest: {exc}"
            ) from None
        return list(manifest.catalog.databases)

    @app.get("/api/v1/clusters/{cluster_id}/backups/{backup_id}/databases")
    def backup_databases(cluster_id: str, backup_id: str, who: Caller) -> dict[str, Any]:
        doc = completed_backup(cluster_id, backup_id, who)
        if catalog_is_partial(doc["catalog"], doc["database_count"]):
            return {
                "databases": [
                    {"name": db.name, "table_count": db.table_count}
                    for db in full_catalog(doc)
                    if db.table_count
                ]
            }
        databases = []
        for db in doc["catalog"]:
            tables = table_count(db)
            if tables:
                databases.append({"name": db["name"], "table_count": tables})
        return {"databases": databases}

    @app.get("/api/v1/clusters/{cluster_id}/backups/{backup_id}/databases/{database}/tables")
    def backup_tables(
        cluster_id: str, backup_id: str, database: str, who: Caller
    ) -> dict[str, Any]:
        doc = completed_backup(cluster_id, backup_id, who)
        listed = next((db for db in doc["catalog"] if db["name"] == database), None)
        if listed is not None and not database_is_partial(listed):
            return {
                "tables": [
                    {
                        "schema": s["name"],
                        "name": t["name"],
                        "row_count": t["row_count"],
                        "size_bytes": t["size_bytes"],
                    }
                    for s in listed["schemas"]
                    for t in s["tables"]
                ]
            }
        if listed is not None or catalog_is_partial(doc["catalog"], doc["database_count"]):
            for db in full_catalog(doc):
                if db.name == database:
                    return {
                        "tables": [
                            {
                                "schema": s.name,
                                "name": t.name,
                                "row_count": t.rows,
                                "size_bytes": t.size_bytes,
                            }
                            for s in db.schemas
                            for t in s.tables
                        ]
                    }
        raise HTTPException(404, f"database {database} is not in backup {backup_id}")

    # -- restores (services/api/restores.py) ----------------------------------------------------

    app.include_router(restore_router(models, principal, credential, visible_cluster, command))

    # -- operations -----------------------------------------------------------------------------

    @app.get("/admin/clock")
    def get_clock(who: Caller) -> dict[str, Any]:
        who.require(Action.ADMINISTER, cluster_id="*")
        clock = runtime.clock
        if not isinstance(clock, SimulatedClock):
            return {"simulated": False, "now": clock.now().isoformat(), "services": {}}
        now = clock.refresh()
        return {
            "simulated": True,
            "now": now.isoformat(),
            "services": {k: v.isoformat() for k, v in clock.reached().items()},
        }

    @app.post("/admin/clock")
    def advance_clock(body: ClockAdvance, who: Caller) -> dict[str, Any]:
        who.require(Action.ADMINISTER, cluster_id="*")
        clock = runtime.clock
        if not isinstance(clock, SimulatedClock):
            raise HTTPException(
                409, "the simulated clock is not enabled (managed-backups up --simulated-clock)"
            )
        return {"simulated": True, "now": clock.advance(body.advance_seconds).isoformat()}

    @app.get("/metrics")
    def metrics(who: Caller) -> Response:
        """Prometheus text format (``services/api/metrics.py``): per cluster the recoverability
        window, the last successful backup, stored bytes, backups per status, expired and deleted
        counts, so an alert can fire on a cluster that stopped backing up or lost its window.
        Scraped with an administrator's bearer token (it names every cluster)."""
        who.require(Action.ADMINISTER, cluster_id="*")
        return Response(metrics_text(models, runtime.clock.now), media_type=METRICS_CONTENT_TYPE)

    # -- connection secrets ---------------------------------------------------------------------

    secrets_store = ConnectionSecrets(runtime.db, runtime.settings.secrets_path)

    @app.put(
        "/api/v1/clusters/{cluster_id}/connection-secret",
        status_code=200,
        responses={404: {"description": "no such cluster (or not visible to the caller)"}},
    )
    async def put_connection_secret(
        cluster_id: str, body: ConnectionSecretBody, who: Caller, token: Token
    ) -> Response:
        """Set the password the executor uses for this cluster, and only for it. Allowed to
        whoever may manage the cluster; the audit trail records who changed it, never the
        value. Callers that may not see the cluster get 404, as if it did not exist."""
        position = await asyncio.to_thread(
            set_connection_secret, runtime, secrets_store, cluster_id, body.password, who
        )
        await wait_for_projection(position)
        if await asyncio.to_thread(missing_full, runtime, models, cluster_id):
            await take_missing_full(cluster_id, token)
        return Response(status_code=200)

    async def take_missing_full(cluster_id: str, token: str) -> None:
        """On the caller's behalf, as any publisher would; the secret is set whatever the
        outcome (a caller without the backup right, a backup started meanwhile)."""
        body = {
            "command_id": str(uuid.uuid4()),
            "type": "TakeBackup",
            "credential": token,
            "cluster_id": cluster_id,
            "backup_id": str(uuid.uuid4()),
            "backup_type": "FULL",
            "reason": "MANUAL",
        }
        try:
            result = await gateway.request(topics.BACKUP_COMMANDS, body)
        except CommandTimeout:
            log.warning(
                "cluster %s: the full backup after its new secret is not answered yet", cluster_id
            )
            return
        log.info(
            "cluster %s: full backup after its new secret: %s %s",
            cluster_id,
            result.code,
            result.reason or "",
        )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "projection_position": models.position()}

    return app


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    import uvicorn

    from managed_backups.shared.bus import ensure_topics
    from managed_backups.shared.security import ensure_key_file

    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers)
    # Deployments without `up` (compose): the first API start issues the administrator key.
    _, created = await asyncio.to_thread(
        ensure_key_file, runtime.store, settings.admin_key_path, runtime.clock, "admin"
    )
    if created:
        logging.getLogger(__name__).warning(
            "issued the administrator API key: it is in %s", settings.admin_key_path
        )
    gateway = CommandGateway(settings.kafka_bootstrap_servers, f"api-{settings.instance}")
    await gateway.start()
    app = create_app(runtime, gateway)
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving
    await gateway.stop()
