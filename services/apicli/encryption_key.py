"""``managed-backups encryption-key``: encryption at rest from the command line.

(``managed-backups keys`` is API keys: :mod:`managed_backups.services.apicli.access`.)

Over the HTTP API (as whoever the credential names; :mod:`managed_backups.services.apicli.client`):

encryption-key show ID            which key wraps the cluster's new backups, and whether it is
                                  usable
encryption-key set ID KEY_NAME    configure the cluster's customer key (ADVANCED clusters only),
                                  then re-wrap its existing chains by it (a rotation job)
encryption-key remove ID          back to the platform key for new chains
encryption-key rotate ID          start a rotation job (every chain's data key wrapped by the
                                  current key)

On the machine holding the key directories (no API involved):

encryption-key new-customer-key ID KEY_NAME   write a new random key file for a cluster's
                                              customer key
encryption-key rotate-platform                add a new platform key (the current one from then on)

Exit codes as the rest of the CLI: 0 done, 1 refused, 2 usage, 3 the API did not answer.
Key material is never printed: a key is shown by its id (name and fingerprint).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from managed_backups.services.apicli import output
from managed_backups.services.apicli.access import call_and_show
from managed_backups.services.apicli.client import segment
from managed_backups.services.apicli.commands import ApiUrl, Credential, DataDir, Json

if TYPE_CHECKING:
    from managed_backups.shared.settings import Settings

app = typer.Typer(help="encryption keys of backups (encryption at rest)", no_args_is_help=True)

ClusterId = Annotated[str, typer.Argument(metavar="ID", help="the cluster's id")]
KeysDataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="the data directory whose key directories are meant (default: "
        "MANAGED_BACKUPS_DATA_DIR; MANAGED_BACKUPS_PLATFORM_KEYS_DIR and "
        "MANAGED_BACKUPS_CUSTOMER_KEYS_DIR override them)",
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    # The key-directory commands only: the API commands load neither the settings model nor
    # the data plane (a CLI command over the API stays light).
    from managed_backups.shared.settings import Settings

    return Settings() if data_dir is None else Settings(data_dir=data_dir.resolve())


def _path(cluster_id: str, *rest: str) -> str:
    return "/".join(("/api/v1/clusters", segment(cluster_id), "encryption-key", *rest))


def _show(view: dict[str, Any]) -> str:
    lines = [f"provider:  {view['provider']}"]
    if view.get("key_name"):
        lines.append(f"key name:  {view['key_name']}")
    lines.append(f"key id:    {view.get('key_id') or '-'}")
    if not view.get("available"):
        lines.append(f"NOT AVAILABLE: {view.get('reason')}")
    return "\n".join(lines)


@app.command("show")
def cmd_show(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Show which key wraps the cluster's new backups and whether it is usable."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        as_json,
        lambda api: api.call("GET", _path(cluster_id)),
        lambda view: output.show(_show(view)),
    )


@app.command("set")
def cmd_set(
    cluster_id: ClusterId,
    key_name: Annotated[str, typer.Argument(help="the key file's name, without .key")],
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
    as_json: Json = False,
) -> None:
    """Configure the cluster's customer key (ADVANCED only) and re-wrap its chains by it."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        as_json,
        lambda api: api.call("PUT", _path(cluster_id), body={"key_name": key_name}),
        lambda view: output.show(
            _show(view) + "\na rotation job wraps the existing chains' data keys by "
            "it (see the audit trail)"
        ),
    )


@app.command("remove")
def cmd_remove(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Go back to the platform key for the cluster's new chains."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        False,
        lambda api: api.call("DELETE", _path(cluster_id)),
        lambda _: output.show(f"cluster {cluster_id}: new chains are wrapped by the platform key"),
    )


@app.command("rotate")
def cmd_rotate(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Start a rotation job: every chain's data key wrapped by the cluster's current key."""
    call_and_show(
        api_url,
        data_dir,
        credential,
        False,
        lambda api: api.call("POST", _path(cluster_id, "rotate")),
        lambda _: output.show(
            f"cluster {cluster_id}: rotation started (its end is in the audit trail)"
        ),
    )


@app.command("new-customer-key")
def cmd_new_customer_key(
    cluster_id: ClusterId,
    key_name: Annotated[str, typer.Argument(help="the new key's name")],
    data_dir: KeysDataDir = None,
) -> None:
    """Write a new random customer key file for a cluster (then: encryption-key set ID
    KEY_NAME)."""
    from managed_backups.shared.dataplane.keys import new_key_file
    from managed_backups.shared.domain.encryption_key import KEY_NAME_PATTERN
    from managed_backups.shared.encryption import customer_keyring

    if not re.match(KEY_NAME_PATTERN, key_name):
        print(f"a key name matches {KEY_NAME_PATTERN}", file=sys.stderr)
        raise typer.Exit(2)
    keyring = customer_keyring(_settings(data_dir), cluster_id, key_name)
    try:
        new_key_file(keyring.directory / f"{key_name}.key")
    except FileExistsError:
        print(f"cluster {cluster_id} already has a key named {key_name}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"new customer key {keyring.current_key_id()} of cluster {cluster_id}")


@app.command("rotate-platform")
def cmd_rotate_platform(data_dir: KeysDataDir = None) -> None:
    """Add a new platform key; new chains are wrapped by it. Then re-wrap the existing ones:
    publish RotateEncryptionKeys (no cluster_id: every cluster, an administrator) on
    retention-commands."""
    from managed_backups.shared.encryption import platform_keyring

    key_id = platform_keyring(_settings(data_dir)).rotate()
    print(f"the platform key is now {key_id}")
    print(
        "re-wrap the existing chains (as the administrator): managed-backups publish "
        'managed-backups.retention-commands \'{"type": "RotateEncryptionKeys"}\''
    )
