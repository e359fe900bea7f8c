"""FastAPI dependencies of the HTTP API: the caller, the runtime and read models, the command
gateway and the wait for the views.

``create_app`` keeps one :class:`ApiContext` in ``app.state``; routers reach it only through
these dependencies, so a router module is plain module-level code and a test can override any
dependency with ``app.dependency_overrides``.

The bearer token is read by ``fastapi.security.HTTPBearer`` (so the OpenAPI document declares the
scheme) with ``auto_error=False``: a missing or non-bearer ``Authorization`` header gets this
API's own 401 ``{"code", "message"}``, without the ``WWW-Authenticate`` header HTTPBearer would
add, exactly as before. (Requests with a body were already authenticated by
``AuthenticatedBoundedBodies`` before their body was read.)
"""

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from managed_backups.contracts.results import CommandResult
from managed_backups.services.runtime import Runtime
from managed_backups.shared.access import ClusterRef, require_on_cluster
from managed_backups.shared.command_tokens import CommandSigner
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.encryption import ClusterEncryption
from managed_backups.shared.faults import FaultPoint, fault_points, no_fault
from managed_backups.shared.gateway import CommandGateway, CommandTimeout
from managed_backups.shared.identity import Identity
from managed_backups.shared.secrets import ConnectionSecrets
from managed_backups.shared.security import Action, Principal
from managed_backups.shared.views import ReadModels

PROJECTION_WAIT_SECONDS = 15.0
MISSING_TOKEN = "missing bearer token: send Authorization: Bearer <API key>"


@dataclass
class ApiContext:
    """What the routes share, built once per app by ``create_app``."""

    runtime: Runtime
    models: ReadModels
    gateway: CommandGateway
    secrets: ConnectionSecrets
    signer: CommandSigner
    """Signs the commands the API sends for its callers (``shared/command_tokens.py``)."""
    identity: Identity
    encryption: ClusterEncryption
    manifest_stores: dict[str, ObjectStore] = field(default_factory=dict)
    """Object stores opened to read manifests, by URL (opened on first use)."""


def api_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.api)


Context = Annotated[ApiContext, Depends(api_context)]


def runtime(context: Context) -> Runtime:
    return context.runtime


def read_models(context: Context) -> ReadModels:
    return context.models


RuntimeDep = Annotated[Runtime, Depends(runtime)]
Models = Annotated[ReadModels, Depends(read_models)]

# -- the caller -----------------------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key as the bearer token.",
)


def credential(
    authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The bearer token, or 401 when there is none (HTTPBearer already strips it)."""
    if authorization is None or not authorization.credentials:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING_TOKEN)
    return authorization.credentials


Token = Annotated[str, Depends(credential)]


def principal(token: Token, runtime: RuntimeDep) -> Principal:
    """The authenticated caller (401 through the ``Refused`` handler when the key is wrong)."""
    return runtime.authenticator.authenticate(token)


Caller = Annotated[Principal, Depends(principal)]


def cluster_ref(doc: dict[str, Any] | None) -> ClusterRef | None:
    """What the access rule needs of a cluster, from its view."""
    if doc is None:
        return None
    return ClusterRef(str(doc["id"]), str(doc["organization"]), doc["state"] == "DELETED")


def visible_cluster(
    models: ReadModels, cluster_id: str, who: Principal, action: Action = Action.VIEW_BACKUPS
) -> dict[str, Any]:
    """The cluster's view if the caller may ``action`` on it, deleted or not: the one access
    rule (:func:`managed_backups.shared.access.require_on_cluster`), answered 404 for a cluster
    the caller may not see exactly as for one that is not registered."""
    doc = models.cluster(cluster_id)
    require_on_cluster(who, action, cluster_id, cluster_ref(doc), live=False)
    assert doc is not None
    return doc


def live_cluster(
    models: ReadModels, cluster_id: str, who: Principal, action: Action = Action.VIEW_BACKUPS
) -> dict[str, Any]:
    """As :func:`visible_cluster`, and 404 once the cluster was deleted."""
    doc = models.cluster(cluster_id)
    require_on_cluster(who, action, cluster_id, cluster_ref(doc))
    assert doc is not None
    return doc


# -- changes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionWait:
    """Waits until the read models reached an event-store position, so that a GET right after a
    change shows it (503 after ``seconds``: the change is recorded, the views are late). The wait
    itself is :meth:`ReadModels.wait_until`, the one the tests use too."""

    models: ReadModels
    seconds: float = PROJECTION_WAIT_SECONDS

    async def until(self, position: int | None) -> None:
        try:
            await self.models.wait_until(position, self.seconds)
        except TimeoutError:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the change is recorded but the views have not caught up yet",
            ) from None


def projection_wait(models: Models) -> ProjectionWait:
    return ProjectionWait(models)


Views = Annotated[ProjectionWait, Depends(projection_wait)]


@dataclass(frozen=True)
class Commands:
    """The command gateway as the routes use it: publish a command signed for the caller (a
    token bound to this command, never the caller's API key) and answer once its result is back
    and the views show the events it recorded."""

    gateway: CommandGateway
    signer: CommandSigner
    views: ProjectionWait
    fault_point: FaultPoint = no_fault

    async def send(self, topic: str, body: dict[str, Any], who: Principal) -> CommandResult:
        """The accepted result; its rejection code (4xx) or 504 as an ``HTTPException``."""
        result = await self.request(topic, body, who)
        if result.code >= 300:
            raise HTTPException(result.code, result.reason or "rejected")
        await self.views.until(result.position)
        return result

    async def request(self, topic: str, body: dict[str, Any], who: Principal) -> CommandResult:
        """The command's result, whatever it is (504 as an ``HTTPException``)."""
        command = sign_for(self.signer, who, topic, {"command_id": str(uuid.uuid4()), **body})
        # Validated and signed, not yet published; then published and answered, the caller not
        # yet told: the fault suite kills an API instance at either point.
        self.fault_point("api-before-publish")
        try:
            result = await self.gateway.request(topic, command)
        except CommandTimeout as exc:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(exc)) from exc
        self.fault_point("api-after-result")
        return result


def sign_for(
    signer: CommandSigner, who: Principal, topic: str, command: dict[str, Any]
) -> dict[str, Any]:
    """``command`` with a token for ``who`` (an API key's principal: the API signs for no
    other)."""
    if not who.is_key:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{who.name} sends no commands here")
    return signer.signed(who.subject, topic, command)


def commands(context: Context, views: Views) -> Commands:
    return Commands(context.gateway, context.signer, views, fault_points(context.runtime.settings))


CommandsDep = Annotated[Commands, Depends(commands)]
