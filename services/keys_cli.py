"""``managed-backups keys``: encryption at rest from the command line.

Over the HTTP API (as whoever the credential names):

keys show ID              which key wraps the cluster's new backups, and whether it is usable
keys set ID KEY_NAME      configure the cluster's customer key (ADVANCED clusters only), then
                          re-wrap its existing chains by it (a rotation job)
keys remove ID            back to the platform key for new chains
keys rotate ID            start a rotation job (every chain's data key wrapped by the current key)

On the machine holding the key directories (no API involved):

keys new-customer-key ID KEY_NAME   write a new random key file for a cluster's customer key
keys rotate-platform                add a new platform key (the current one from then on)

Exit codes as the rest of the CLI: 0 done, 1 refused, 2 usage, 3 the API did not answer.
Key material is never printed: a key is shown by its id (name and fingerprint).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from managed_backups.shared.dataplane.keys import new_key_file
from managed_backups.shared.domain.encryption_key import KEY_NAME_PATTERN
from managed_backups.shared.encryption import customer_keyring, platform_keyring
from managed_backups.shared.settings import Settings

app = typer.Typer(help="encryption keys of backups", no_args_is_help=True)

ClusterId = Annotated[str, typer.Argument(metavar="ID", help="the cluster's id")]
DataDir = Annotated[
    Path | None,
    typer.Option(help="the data directory (default: MANAGED_BACKUPS_DATA_DIR)"),
]
Credential = Annotated[
    str | None, typer.Option(help="API key (default: the data directory's admin key)")
]
ApiUrl = Annotated[
    str | None, typer.Option(help="default: http://API_HOST:API_PORT from the settings")
]


def _settings(data_dir: Path | None) -> Settings:
    return Settings() if data_dir is None else Settings(data_dir=data_dir.resolve())


def _api(
    method: str,
    path: str,
    data_dir: Path | None,
    credential: str | None,
    api_url: str | None,
    body: dict[str, Any] | None = None,
) -> tuple[int, httpx.Response | None]:
    """(exit code, answer) of one API call on ``/api/v1/clusters/{path}``."""
    settings = _settings(data_dir)
    credential = credential or settings.credential
    if not credential and settings.admin_key_path.exists():
        credential = settings.admin_key_path.read_text().strip()
    if not credential:
        print("no credential: pass --credential or --data-dir", file=sys.stderr)
        return 2, None
    url = (api_url or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
    try:
        answer = httpx.request(
            method,
            f"{url}/api/v1/clusters/{path}",
            json=body,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        print(f"cannot reach the API at {url}: {exc}", file=sys.stderr)
        return 3, None
    if answer.status_code >= 300:
        try:
            reason = answer.json().get("message", answer.text)
        except ValueError:
            reason = answer.text
        print(f"refused ({answer.status_code}): {reason}", file=sys.stderr)
        return 1, answer
    return 0, answer


def _show(view: dict[str, Any]) -> None:
    print(f"provider:  {view['provider']}")
    if view.get("key_name"):
        print(f"key name:  {view['key_name']}")
    print(f"key id:    {view.get('key_id') or '-'}")
    if not view.get("available"):
        print(f"NOT AVAILABLE: {view.get('reason')}")


@app.command("show")
def cmd_show(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Show which key wraps the cluster's new backups and whether it is usable."""
    code, answer = _api("GET", f"{cluster_id}/encryption-key", data_dir, credential, api_url)
    if code == 0 and answer is not None:
        _show(answer.json())
    raise typer.Exit(code)


@app.command("set")
def cmd_set(
    cluster_id: ClusterId,
    key_name: Annotated[str, typer.Argument(help="the key file's name, without .key")],
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Configure the cluster's customer key (ADVANCED only) and re-wrap its chains by it."""
    code, answer = _api(
        "PUT",
        f"{cluster_id}/encryption-key",
        data_dir,
        credential,
        api_url,
        {"key_name": key_name},
    )
    if code == 0 and answer is not None:
        _show(answer.json())
        print("a rotation job wraps the existing chains' data keys by it (see the audit trail)")
    raise typer.Exit(code)


@app.command("remove")
def cmd_remove(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Go back to the platform key for the cluster's new chains."""
    code, _ = _api("DELETE", f"{cluster_id}/encryption-key", data_dir, credential, api_url)
    if code == 0:
        print(f"cluster {cluster_id}: new chains are wrapped by the platform key")
    raise typer.Exit(code)


@app.command("rotate")
def cmd_rotate(
    cluster_id: ClusterId,
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: ApiUrl = None,
) -> None:
    """Start a rotation job: every chain's data key wrapped by the cluster's current key."""
    code, _ = _api("POST", f"{cluster_id}/encryption-key/rotate", data_dir, credential, api_url)
    if code == 0:
        print(f"cluster {cluster_id}: rotation started (its end is in the audit trail)")
    raise typer.Exit(code)


@app.command("new-customer-key")
def cmd_new_customer_key(
    cluster_id: ClusterId,
    key_name: Annotated[str, typer.Argument(help="the new key's name")],
    data_dir: DataDir = None,
) -> None:
    """Write a new random customer key file for a cluster (then: keys set ID KEY_NAME)."""
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
def cmd_rotate_platform(data_dir: DataDir = None) -> None:
    """Add a new platform key; new chains are wrapped by it. Then re-wrap the existing ones:
    publish RotateEncryptionKeys (no cluster_id: every cluster) on retention-commands."""
    key_id = platform_keyring(_settings(data_dir)).rotate()
    print(f"the platform key is now {key_id}")
    print(
        "re-wrap the existing chains: managed-backups publish managed-backups.retention-commands "
        '\'{"type": "RotateEncryptionKeys"}\''
    )
