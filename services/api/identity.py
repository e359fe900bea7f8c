"""Identity endpoints, shaped after CockroachDB Cloud's API where it has the same thing:
organizations, service accounts, API keys (the secret shown once), role grants, and the command
tokens that ``managed-backups publish`` signs its commands with.

Each change goes through :class:`managed_backups.shared.identity.Identity` (who may, then one
event) and is answered once the views show it; lists read the views and show only what the caller
manages (an Organization Admin their organization, the system administrator everything), plus
the caller's own account and keys.
"""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from managed_backups.contracts import topics
from managed_backups.contracts.commands import Text
from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.services.api.dependencies import Caller, Context, Models, Views, sign_for
from managed_backups.services.api.schemas import AUTHENTICATED, CHANGING, errors
from managed_backups.shared.access import sees_organization
from managed_backups.shared.command_tokens import TOKEN_FIELD, normalized
from managed_backups.shared.security import Action, Principal

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
ORGANIZATION_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"

router = APIRouter(prefix="/api/v1", tags=["identity"], responses=errors(*AUTHENTICATED))


# -- bodies ---------------------------------------------------------------------------------------


class OrganizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ORGANIZATION_ID, description="What clusters name as organization.")
    name: Text = Field(min_length=1, max_length=200)


class OrganizationView(BaseModel):
    id: str
    name: str
    created_at: str
    created_by: str


class OrganizationList(BaseModel):
    organizations: list[OrganizationView]


class ServiceAccountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME, description="Unique in its organization.")
    organization: str = Field(pattern=ORGANIZATION_ID)
    description: Text = Field(default="", max_length=500)


class ServiceAccountView(BaseModel):
    id: str
    name: str
    description: str
    organization: str | None
    created_at: str
    creator_name: str


class ServiceAccountList(BaseModel):
    service_accounts: list[ServiceAccountView]


class ApiKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=100)
    service_account_id: UUID
    expires_at: datetime | None = Field(
        default=None, description="When it stops working (timezone required); none: never."
    )


class ApiKeyView(BaseModel):
    id: str
    name: str
    service_account_id: str | None
    organization: str | None
    created_at: str
    created_by: str
    expires_at: str | None
    revoked_at: str | None
    revoked_by: str | None
    legacy_principal: str | None = Field(
        default=None, description="Keys of version 0.1: the principal they name."
    )


class CreatedApiKey(BaseModel):
    api_key: ApiKeyView
    secret: str = Field(description="The API key itself: shown this once, stored nowhere.")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyView]


class RoleGrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service_account_id: UUID
    role_name: Role
    resource_type: ResourceType
    resource_id: Text = Field(min_length=1, max_length=63)


class RoleGrantView(BaseModel):
    service_account_id: str
    role_name: str
    resource_type: str
    resource_id: str
    organization: str | None
    granted_at: str
    granted_by: str


class RoleGrantList(BaseModel):
    role_grants: list[RoleGrantView]


class CommandTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(description="The command topic the command goes to.")
    command: dict[str, Any] = Field(description="The command, with its command_id.")


class CommandToken(BaseModel):
    token: str = Field(description="The command's token (also in command.token).")
    command: dict[str, Any] = Field(description="The command to publish as it is, token included.")
    expires_at: str = Field(description="After this, the command is refused if not yet handled.")


# -- what a caller sees ---------------------------------------------------------------------------


def _manages(who: Principal, organization: str | None) -> bool:
    if organization is None:
        return who.can(Action.ADMINISTER)
    return who.can(Action.MANAGE_ACCESS, organization)


def _own_or_managed(who: Principal, doc: dict[str, Any], account_field: str) -> bool:
    own = who.account_id is not None and doc.get(account_field) == str(who.account_id)
    return own or _manages(who, doc.get("organization"))


# -- organizations --------------------------------------------------------------------------------


@router.post("/organizations", responses=errors(*CHANGING))
async def create_organization(
    body: OrganizationRequest, who: Caller, context: Context, views: Views, models: Models
) -> OrganizationView:
    recorded = await asyncio.to_thread(
        context.identity.create_organization, who, body.id, body.name
    )
    await views.until(recorded.position)
    return OrganizationView.model_validate(
        next(o for o in models.organizations() if o["id"] == body.id)
    )


@router.get("/organizations")
def list_organizations(who: Caller, models: Models) -> OrganizationList:
    return OrganizationList.model_validate(
        {"organizations": [o for o in models.organizations() if sees_organization(who, o["id"])]}
    )


# -- service accounts -----------------------------------------------------------------------------


@router.post("/service-accounts", responses=errors(*CHANGING))
async def create_service_account(
    body: ServiceAccountRequest, who: Caller, context: Context, views: Views, models: Models
) -> ServiceAccountView:
    recorded = await asyncio.to_thread(
        context.identity.create_service_account,
        who,
        body.organization,
        body.name,
        body.description,
    )
    await views.until(recorded.position)
    account_id = str(recorded.aggregate.account_id)
    return ServiceAccountView.model_validate(
        next(a for a in models.service_accounts() if a["id"] == account_id)
    )


@router.get("/service-accounts")
def list_service_accounts(
    who: Caller, models: Models, organization: str | None = None
) -> ServiceAccountList:
    accounts = [
        a
        for a in models.service_accounts()
        if _own_or_managed(who, a, "id")
        and (organization is None or a["organization"] == organization)
    ]
    return ServiceAccountList.model_validate({"service_accounts": accounts})


# -- API keys -------------------------------------------------------------------------------------


def _key_view(models: Models, key_id: str) -> ApiKeyView:
    doc = next((k for k in models.api_keys() if k["id"] == key_id), None)
    if doc is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not yet in the views")
    return ApiKeyView.model_validate(doc)


@router.post("/api-keys", responses=errors(*CHANGING))
async def create_api_key(
    body: ApiKeyRequest, who: Caller, context: Context, views: Views, models: Models
) -> CreatedApiKey:
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "expires_at: a timezone is required")
    issued = await asyncio.to_thread(
        context.identity.create_api_key, who, body.service_account_id, body.name, body.expires_at
    )
    await views.until(issued.position)
    return CreatedApiKey(api_key=_key_view(models, issued.key.key_id), secret=issued.secret)


@router.get("/api-keys")
def list_api_keys(
    who: Caller, models: Models, service_account_id: UUID | None = None
) -> ApiKeyList:
    wanted = str(service_account_id) if service_account_id else None
    keys = [
        k
        for k in models.api_keys()
        if (_own_or_managed(who, k, "service_account_id") or k["id"] == who.key_id)
        and (wanted is None or k["service_account_id"] == wanted)
    ]
    return ApiKeyList.model_validate({"api_keys": keys})


@router.delete("/api-keys/{key_id}", responses=errors(*CHANGING))
async def revoke_api_key(
    key_id: str, who: Caller, context: Context, views: Views, models: Models
) -> ApiKeyView:
    """Revoked at once: the next request with it is refused (401), and so is every command it
    sent that is still waiting on a topic."""
    recorded = await asyncio.to_thread(context.identity.revoke_api_key, who, key_id)
    await views.until(recorded.position)
    return _key_view(models, key_id)


# -- role grants ----------------------------------------------------------------------------------


@router.get("/role-grants")
def list_role_grants(
    who: Caller, models: Models, service_account_id: UUID | None = None
) -> RoleGrantList:
    wanted = str(service_account_id) if service_account_id else None
    grants = [
        g
        for g in models.role_grants()
        if _own_or_managed(who, g, "service_account_id")
        and (wanted is None or g["service_account_id"] == wanted)
    ]
    return RoleGrantList.model_validate({"role_grants": grants})


@router.post("/role-grants", responses=errors(*CHANGING))
async def add_role_grant(
    body: RoleGrantRequest, who: Caller, context: Context, views: Views, models: Models
) -> RoleGrantView:
    recorded = await asyncio.to_thread(
        context.identity.grant,
        who,
        body.service_account_id,
        body.role_name,
        body.resource_type,
        body.resource_id,
    )
    await views.until(recorded.position)
    return _grant_view(models, body)


def _grant_view(models: Models, body: RoleGrantRequest) -> RoleGrantView:
    for g in models.role_grants():
        if (
            g["service_account_id"] == str(body.service_account_id)
            and g["role_name"] == body.role_name.value
            and g["resource_type"] == body.resource_type.value
            and g["resource_id"] == body.resource_id
        ):
            return RoleGrantView.model_validate(g)
    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not yet in the views")


@router.delete(
    "/role-grants/{service_account_id}/{resource_type}/{resource_id}/{role_name}",
    responses=errors(*CHANGING),
)
async def remove_role_grant(
    service_account_id: UUID,
    resource_type: ResourceType,
    resource_id: str,
    role_name: Role,
    who: Caller,
    context: Context,
    views: Views,
    models: Models,
) -> RoleGrantList:
    """Takes the role away (the next request and every waiting command see it); answers the
    account's remaining grants."""
    recorded = await asyncio.to_thread(
        context.identity.remove_grant,
        who,
        service_account_id,
        role_name,
        resource_type,
        resource_id,
    )
    await views.until(recorded.position)
    return list_role_grants(who, models, service_account_id)


# -- command tokens -------------------------------------------------------------------------------


@router.post("/command-tokens", responses=errors(status.HTTP_400_BAD_REQUEST))
def sign_command(body: CommandTokenRequest, who: Caller, context: Context) -> CommandToken:
    """The command signed for the caller: a token valid for this topic, command id and body
    only, for minutes (``shared/command_tokens.py``). What the caller may do is checked when the
    command is handled, against their grants then."""
    if body.topic not in topics.COMMAND_TOPICS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{body.topic} is not a command topic; one of: {', '.join(topics.COMMAND_TOPICS)}",
        )
    command = normalized(body.command)
    try:
        UUID(str(command.get("command_id")))
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "command.command_id: a UUID is required"
        ) from None
    signed = sign_for(context.signer, who, body.topic, command)
    expires = datetime.fromtimestamp(time.time() + context.signer.seconds, tz=UTC)
    return CommandToken(token=signed[TOKEN_FIELD], command=signed, expires_at=expires.isoformat())
