"""The HTTP API: projection endpoints (queries) and the command gateway (changes).

Queries read the read models kept by the projections service. Changes are published as commands
on their topic with a command token the API signs on behalf of the authenticated caller
(``shared/command_tokens.py``: bound to the command, short-lived, never the caller's key); the
API answers once the command's result is back and the read models have reached the position
of the events it recorded, so a GET right after a PUT shows the change.

``create_app`` is the composition root: it builds the shared :class:`ApiContext` (kept in
``app.state``, reached by the routes through ``services/api/dependencies.py``), installs the body
limits and the one error body, and includes one router per area: ``permissions.py`` (who the
caller is, what it may do on a cluster), ``clusters.py`` (clusters, audit trail, backup
settings), ``backups.py`` (listing, calendar days, catalog, backup now, verify),
``restores.py``, ``restore_destinations.py``, ``connection_secret.py``, ``identity.py``
(organizations, service accounts, API keys, role grants, command tokens), ``encryption_key.py``
(a cluster's encryption key) and ``system.py`` (health, metrics, simulated clock); then the console (``console.py``, ``/``) and the documents
(``specs.py``: ``/docs``, ``/redoc``, ``/asyncapi``). Bodies are typed in ``schemas.py``.
"""

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from managed_backups.services.api import (
    backups,
    clusters,
    connection_secret,
    console,
    encryption_key,
    errors,
    identity,
    permissions,
    restore_destinations,
    restores,
    specs,
    system,
)
from managed_backups.services.api.dependencies import ApiContext
from managed_backups.services.api.limits import (
    AuthenticatedBoundedBodies,
    BoundedConcurrency,
    PlainRequestLines,
    guarded_protocol,
    raise_open_files_limit,
)
from managed_backups.services.runtime import Runtime
from managed_backups.shared.command_tokens import API_SIGNER
from managed_backups.shared.encryption import ClusterEncryption, platform_keyring
from managed_backups.shared.gateway import CommandGateway
from managed_backups.shared.identity import Identity
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.views import ReadModels

ROUTERS = (
    permissions.router,
    clusters.router,
    backups.router,
    backups.lookup,
    restores.router,
    restore_destinations.router,
    connection_secret.router,
    identity.router,
    encryption_key.router,
    system.router,
)


class Api(FastAPI):
    """The app, whose OpenAPI document says what it really answers: FastAPI documents a 422
    validation error on every route with parameters, but this API answers them 400 with the
    one error body (``errors.py``), which every route declares; so the 422 entries and their
    unused ``ValidationError`` schemas are dropped from the generated document."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        return super().openapi()


def create_app(runtime: Runtime, gateway: CommandGateway) -> FastAPI:
    models = ReadModels(runtime.db)
    models.create()
    app = Api(
        title="managed-backups",
        version="1",
        description="Managed backups for PostgreSQL-compatible clusters.",
        # Served from the installed package by ``specs.py``, not FastAPI's CDN-backed pages.
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = ApiContext(
        runtime=runtime,
        models=models,
        gateway=gateway,
        secrets=ConnectionSecrets(
            runtime.db, runtime.settings.secrets_path, platform_keyring(runtime.settings)
        ),
        signer=runtime.command_signer(API_SIGNER),
        identity=Identity(runtime.store, runtime.db, runtime.clock),
        encryption=ClusterEncryption(runtime.settings, runtime.store),
    )
    settings = runtime.settings
    # Starlette runs the last middleware added first: concurrency, request lines, bodies.
    app.add_middleware(
        AuthenticatedBoundedBodies,
        authenticate=runtime.authenticator.authenticate,
        body_timeout=settings.api_body_timeout_seconds,
    )
    app.add_middleware(PlainRequestLines)
    app.add_middleware(BoundedConcurrency, max_requests=settings.api_max_requests)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)
    specs.install(app)
    return app


async def run(runtime: Runtime, stop: asyncio.Event) -> None:
    import uvicorn

    from managed_backups.shared.bus import ensure_topics

    settings = runtime.settings
    await ensure_topics(settings.kafka_bootstrap_servers, auth=settings.kafka_auth())
    identity = Identity(runtime.store, runtime.db, runtime.clock)
    # Deployments without `up` (compose): the first API start issues the administrator key.
    _, created = await asyncio.to_thread(identity.ensure_admin_key, settings.admin_key_path)
    if created:
        logging.getLogger(__name__).warning(
            "issued the administrator API key: it is in %s", settings.admin_key_path
        )
    if await asyncio.to_thread(
        identity.retire_legacy_service_key, settings.legacy_service_key_path
    ):
        logging.getLogger(__name__).warning(
            "revoked the services' API key of version 0.1 (%s): services sign their commands now",
            settings.legacy_service_key_path,
        )
    gateway = CommandGateway(
        settings.kafka_bootstrap_servers, f"api-{settings.instance}", auth=settings.kafka_auth()
    )
    await gateway.start()
    app = create_app(runtime, gateway)
    raise_open_files_limit()
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        log_config=None,  # uvicorn logs through the root handlers: rate-limited, rotated
        lifespan="on",
        http=guarded_protocol(settings.api_header_timeout_seconds, settings.api_max_connections),
        timeout_keep_alive=int(max(1, settings.api_keepalive_seconds)),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving
    await gateway.stop()
