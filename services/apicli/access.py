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

``ACCOUNT`` is a service account's id or ``ORGANIZATION/NAME``. Like every command over the
API (``commands.py``), each finds the API through ``--api-url``/``--data-dir`` (``client.py``),
prints a table or, with ``--json``, the API's answer as it is, and exits 0 done, 1 refused,
2 usage, 3 no answer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.services.apicli import output
from managed_backups.services.apicli.client import USAGE, Api, CliError, segment
from managed_backups.services.apicli.commands import ApiUrl, Credential, DataDir, Json, run
from managed_backups.shared.domain.ids import service_account_id

orgs_app = typer.Typer(help="organizations", no_args_is_help=True)
accounts_app = typer.Typer(help="service accounts", no_args_is_help=True)
keys_app = typer.Typer(help="API keys", no_args_is_help=True)
grants_app = typer.Typer(help="role grants", no_args_is_help=True)

Account = Annotated[str, typer.Option(help="a service account's id, or ORGANIZATION/NAME")]
AccountFilter = Annotated[
    str | None, typer.Option("--account", help="a service account's id, or ORGANIZATION/NAME")
]
Organization = Annotated[str | None, typer.Option(help="an organization's id")]
Cluster = Annotated[str | None, typer.Option(help="a cluster's id")]
RoleName = Annotated[Role, typer.Option(help="the role", case_sensitive=False)]


def account_id(account: str) -> str:
    """``ORGANIZATION/NAME`` names the account whose id derives from them."""
    if "/" in account:
        organization, _, name = account.partition("/")
        return str(service_account_id(organization, name))
    try:
        return str(UUID(account))
    except ValueError:
        raise CliError(
            f"{account!r} is neither an account id nor ORGANIZATION/NAME", USAGE
        ) from None


def call_and_show(
    api_url: str | None,
    data_dir: Path | None,
    credential: str | None,
    json: bool,
    call: Callable[[Api], Any],
    show: Callable[[Any], None],
) -> None:
    """Call the API and print its answer (``--json``: as it is); exit with the outcome."""

    def work(api: Api) -> None:
        answer = call(api)
        if json:
            return output.emit_json(answer)
        show(answer)

    run(api_url, data_dir, credential, work)


def listing(title: str, items: list[dict[str, Any]], columns: dict[str, str], empty: str) -> None:
    """A table of ``items`` (``columns``: heading → field), or ``empty`` when there is none."""
    if not items:
        return output.show(empty)
    rows = [[item.get(field) or "-" for field in columns.values()] for item in items]
    output.show(output.table(title, list(columns), rows))


# -- organizations --------------------------------------------------------------------------------


@orgs_app.command("create")
def orgs_create(
    organization_id: Annotated[str, typer.Argument(metavar="ID", help="lower-case id")],
    name: Annotated[str | None, typer.Option(help="display name (default: the id)")] = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Create an organization (system administrators)."""
    body = {"id": organization_id, "name": name or organization_id}
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.call("POST", "/api/v1/organizations", body=body),
        lambda o: output.show(f"organization {o['id']} created"),
    )


@orgs_app.command("list")
def orgs_list(
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """The organizations the caller manages or holds a role in."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.get("/api/v1/organizations"),
        lambda answer: listing(
            "Organizations",
            answer["organizations"],
            {"ID": "id", "Name": "name", "Created (UTC)": "created_at"},
            "No organizations you manage or hold a role in.",
        ),
    )


# -- service accounts -----------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="unique in its organization")],
    organization: Annotated[str, typer.Option(help="the account's organization")],
    description: Annotated[str, typer.Option(help="what it is for")] = "",
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Create a service account (Organization Admins, in theirs)."""
    body = {"name": name, "organization": organization, "description": description}
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.call("POST", "/api/v1/service-accounts", body=body),
        lambda a: output.show(
            f"service account {a['organization']}/{a['name']} created: {a['id']}"
        ),
    )


@accounts_app.command("list")
def accounts_list(
    organization: Organization = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """The service accounts the caller manages (and its own)."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.get("/api/v1/service-accounts", organization=organization),
        lambda answer: listing(
            "Service accounts",
            answer["service_accounts"],
            {
                "ID": "id",
                "Organization": "organization",
                "Name": "name",
                "Description": "description",
            },
            "No service accounts you manage.",
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
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Create an API key for a service account: its secret is printed this once."""

    def call(api: Api) -> Any:
        body = {
            "name": name,
            "service_account_id": account_id(account),
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        return api.call("POST", "/api/v1/api-keys", body=body)

    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        call,
        # Plain print: the secret must come out whole, never wrapped or styled.
        lambda k: print(
            f"API key {k['api_key']['id']} created; it is shown this once, store it now:\n"
            f"{k['secret']}"
        ),
    )


@keys_app.command("list")
def keys_list(
    account: AccountFilter = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """The API keys the caller manages (never a secret)."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.get(
            "/api/v1/api-keys", service_account_id=account_id(account) if account else None
        ),
        lambda answer: listing(
            "API keys",
            answer["api_keys"],
            {
                "ID": "id",
                "Name": "name",
                "Organization": "organization",
                "Service account": "service_account_id",
                "Expires (UTC)": "expires_at",
                "Revoked (UTC)": "revoked_at",
            },
            "No API keys you manage.",
        ),
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id")],
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Revoke an API key: refused at once, by the API and by every service."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.call("DELETE", f"/api/v1/api-keys/{segment(key_id)}"),
        lambda k: output.show(f"API key {k['id']} revoked at {k['revoked_at']}"),
    )


# -- role grants ----------------------------------------------------------------------------------


def _resource(organization: str | None, cluster: str | None) -> tuple[ResourceType, str]:
    if bool(organization) == bool(cluster):
        raise CliError("name exactly one of --organization and --cluster", USAGE)
    if organization:
        return ResourceType.ORGANIZATION, organization
    assert cluster is not None
    return ResourceType.CLUSTER, cluster


GRANT_COLUMNS = {
    "Service account": "service_account_id",
    "Role": "role_name",
    "On": "resource_type",
    "Resource": "resource_id",
}


@grants_app.command("add")
def grants_add(
    account: Account,
    role: RoleName,
    organization: Organization = None,
    cluster: Cluster = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Grant a role on an organization or a cluster to a service account."""

    def call(api: Api) -> Any:
        resource_type, resource_id = _resource(organization, cluster)
        body = {
            "service_account_id": account_id(account),
            "role_name": role.value,
            "resource_type": resource_type.value,
            "resource_id": resource_id,
        }
        return api.call("POST", "/api/v1/role-grants", body=body)

    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        call,
        lambda g: output.show(
            f"granted {g['role_name']} on {g['resource_type'].lower()} {g['resource_id']} "
            f"to {g['service_account_id']}"
        ),
    )


@grants_app.command("list")
def grants_list(
    account: AccountFilter = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """The role grants the caller manages (and its own)."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        lambda api: api.get(
            "/api/v1/role-grants", service_account_id=account_id(account) if account else None
        ),
        lambda answer: listing(
            "Role grants", answer["role_grants"], GRANT_COLUMNS, "No role grants you manage."
        ),
    )


@grants_app.command("remove")
def grants_remove(
    account: Account,
    role: RoleName,
    organization: Organization = None,
    cluster: Cluster = None,
    api_url: ApiUrl = None,
    data_dir: DataDir = None,
    credential: Credential = None,
    json: Json = False,
) -> None:
    """Take a role away from a service account (at once, everywhere)."""

    def call(api: Api) -> Any:
        resource_type, resource_id = _resource(organization, cluster)
        path = "/".join(
            segment(part)
            for part in (account_id(account), resource_type.value, resource_id, role.value)
        )
        return api.call("DELETE", f"/api/v1/role-grants/{path}")

    call_and_show(
        api_url,
        data_dir,
        credential,
        json,
        call,
        lambda answer: listing(
            "Removed; the account's remaining grants",
            answer["role_grants"],
            GRANT_COLUMNS,
            "Removed; the account holds no other grant.",
        ),
    )


def register(app: typer.Typer) -> None:
    """Mount these commands on the ``managed-backups`` application."""
    app.add_typer(orgs_app, name="orgs")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(keys_app, name="keys")
    app.add_typer(grants_app, name="grants")
