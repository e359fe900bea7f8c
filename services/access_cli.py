"""``managed-backups orgs|accounts|keys|grants``: identity over the HTTP API.

orgs create ID --name NAME            an organization (the system administrator)
orgs list
accounts create NAME --organization ORG [--description TEXT]
accounts list [--organization ORG]
keys create --account ACCOUNT [--name NAME] [--expires-at TIME]   the secret is shown once
keys list [--account ACCOUNT]
keys revoke KEY_ID                    refused at once, everywhere
grants add --account ACCOUNT --role ROLE (--organization ORG | --cluster ID)
grants list [--account ACCOUNT]
grants remove --account ACCOUNT --role ROLE (--organization ORG | --cluster ID)

``ACCOUNT`` is a service account's id or ``ORGANIZATION/NAME``. Every command takes ``--json``
(the API's answer as it is), ``--credential``, ``--data-dir`` and ``--api-url``
(:mod:`managed_backups.services.api_client`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import typer

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.services.api_client import (
    USAGE,
    ApiAccess,
    ApiUrl,
    CliError,
    Credential,
    DataDir,
    Json,
    run,
)
from managed_backups.shared.domain.identity import ServiceAccount

orgs_app = typer.Typer(help="organizations", no_args_is_help=True)
accounts_app = typer.Typer(help="service accounts", no_args_is_help=True)
keys_app = typer.Typer(help="API keys", no_args_is_help=True)
grants_app = typer.Typer(help="role grants", no_args_is_help=True)

Account = Annotated[str, typer.Option(help="a service account's id, or ORGANIZATION/NAME")]
Organization = Annotated[str | None, typer.Option(help="an organization's id")]
Cluster = Annotated[str | None, typer.Option(help="a cluster's id")]


def account_id(account: str) -> str:
    """``ORGANIZATION/NAME`` names the account whose id derives from them."""
    if "/" in account:
        organization, _, name = account.partition("/")
        return str(ServiceAccount.create_id(organization, name))
    try:
        return str(UUID(account))
    except ValueError:
        raise CliError(
            f"{account!r} is neither an account id nor ORGANIZATION/NAME", USAGE
        ) from None


def rows(items: list[dict[str, Any]], *columns: str) -> str:
    if not items:
        return "(none)"
    return "\n".join("  ".join(str(item.get(c) or "-") for c in columns) for item in items)


# -- organizations --------------------------------------------------------------------------------


@orgs_app.command("create")
def orgs_create(
    organization_id: Annotated[str, typer.Argument(metavar="ID", help="lower-case id")],
    name: Annotated[str | None, typer.Option(help="display name (default: the id)")] = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Create an organization (system administrators)."""
    body = {"id": organization_id, "name": name or organization_id}
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call("POST", "/api/v1/organizations", body),
        lambda o: f"organization {o['id']} created",
    )


@orgs_app.command("list")
def orgs_list(
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """The organizations the caller manages or holds a role in."""
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call("GET", "/api/v1/organizations"),
        lambda answer: rows(answer["organizations"], "id", "name", "created_at"),
    )


# -- service accounts -----------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="unique in its organization")],
    organization: Annotated[str, typer.Option(help="the account's organization")],
    description: Annotated[str, typer.Option(help="what it is for")] = "",
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Create a service account (Organization Admins, in theirs)."""
    body = {"name": name, "organization": organization, "description": description}
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call("POST", "/api/v1/service-accounts", body),
        lambda a: f"service account {a['organization']}/{a['name']} created: {a['id']}",
    )


@accounts_app.command("list")
def accounts_list(
    organization: Organization = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """The service accounts the caller manages (and its own)."""
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call("GET", "/api/v1/service-accounts", organization=organization),
        lambda answer: rows(
            answer["service_accounts"], "id", "organization", "name", "description"
        ),
    )


# -- API keys -------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    account: Account,
    name: Annotated[str, typer.Option(help="what the key is for")] = "api key",
    expires_at: Annotated[
        datetime | None,
        typer.Option(help="when it stops working (ISO 8601 with a timezone); default: never"),
    ] = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Create an API key for a service account: its secret is printed this once."""

    def call(api: ApiAccess) -> Any:
        body = {
            "name": name,
            "service_account_id": account_id(account),
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        return api.call("POST", "/api/v1/api-keys", body)

    run(
        data_dir,
        credential,
        api_url,
        as_json,
        call,
        lambda k: (
            f"API key {k['api_key']['id']} created; it is shown this once, store it now:\n"
            f"{k['secret']}"
        ),
    )


@keys_app.command("list")
def keys_list(
    account: Annotated[
        str | None, typer.Option(help="a service account's id, or ORGANIZATION/NAME")
    ] = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """The API keys the caller manages (never a secret)."""
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call(
            "GET",
            "/api/v1/api-keys",
            service_account_id=account_id(account) if account else None,
        ),
        lambda answer: rows(
            answer["api_keys"],
            "id",
            "name",
            "organization",
            "service_account_id",
            "expires_at",
            "revoked_at",
        ),
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id")],
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Revoke an API key: refused at once, by the API and by every service."""
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call("DELETE", f"/api/v1/api-keys/{key_id}"),
        lambda k: f"API key {k['id']} revoked at {k['revoked_at']}",
    )


# -- role grants ----------------------------------------------------------------------------------


def _resource(organization: str | None, cluster: str | None) -> tuple[ResourceType, str]:
    if bool(organization) == bool(cluster):
        raise CliError("name exactly one of --organization and --cluster", USAGE)
    if organization:
        return ResourceType.ORGANIZATION, organization
    assert cluster is not None
    return ResourceType.CLUSTER, cluster


@grants_app.command("add")
def grants_add(
    account: Account,
    role: Annotated[Role, typer.Option(help="the role", case_sensitive=False)],
    organization: Organization = None,
    cluster: Cluster = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Grant a role on an organization or a cluster to a service account."""

    def call(api: ApiAccess) -> Any:
        resource_type, resource_id = _resource(organization, cluster)
        body = {
            "service_account_id": account_id(account),
            "role_name": role.value,
            "resource_type": resource_type.value,
            "resource_id": resource_id,
        }
        return api.call("POST", "/api/v1/role-grants", body)

    run(
        data_dir,
        credential,
        api_url,
        as_json,
        call,
        lambda g: (
            f"granted {g['role_name']} on {g['resource_type'].lower()} {g['resource_id']} "
            f"to {g['service_account_id']}"
        ),
    )


@grants_app.command("list")
def grants_list(
    account: Annotated[
        str | None, typer.Option(help="a service account's id, or ORGANIZATION/NAME")
    ] = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """The role grants the caller manages (and its own)."""
    run(
        data_dir,
        credential,
        api_url,
        as_json,
        lambda api: api.call(
            "GET",
            "/api/v1/role-grants",
            service_account_id=account_id(account) if account else None,
        ),
        lambda answer: rows(
            answer["role_grants"], "service_account_id", "role_name", "resource_type", "resource_id"
        ),
    )


@grants_app.command("remove")
def grants_remove(
    account: Account,
    role: Annotated[Role, typer.Option(help="the role", case_sensitive=False)],
    organization: Organization = None,
    cluster: Cluster = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Take a role away from a service account (at once, everywhere)."""

    def call(api: ApiAccess) -> Any:
        resource_type, resource_id = _resource(organization, cluster)
        path = f"/api/v1/role-grants/{account_id(account)}/{resource_type.value}/{resource_id}"
        return api.call("DELETE", f"{path}/{role.value}")

    run(
        data_dir,
        credential,
        api_url,
        as_json,
        call,
        lambda answer: (
            "removed; remaining:\n"
            + rows(answer["role_grants"], "role_name", "resource_type", "resource_id")
        ),
    )
