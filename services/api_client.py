"""How the command line reaches the HTTP API: where it listens and which API key to send.

The URL: ``--api-url``, else the one ``managed-backups up`` wrote to ``<data-dir>/api-url``,
else ``http://API_HOST:API_PORT`` from the settings. The key: ``--credential``, else
``MANAGED_BACKUPS_CREDENTIAL``, else the data directory's administrator key
(``<data-dir>/admin-api-key``). Exit codes are the command line's: 0 done, 1 refused by the
system, 2 a usage problem, 3 no answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from managed_backups.shared.settings import Settings

DONE, REFUSED, USAGE, NO_ANSWER = 0, 1, 2, 3
API_URL_FILE = "api-url"

# The options of every command that calls the API (for :meth:`ApiAccess.resolve`).
DataDir = Annotated[
    Path | None,
    typer.Option(help="the data directory (for the API's address and the administrator key)"),
]
Credential = Annotated[
    str | None,
    typer.Option(
        envvar="MANAGED_BACKUPS_CREDENTIAL",
        show_envvar=True,
        help="API key (default: the data directory's admin key)",
    ),
]
ApiUrl = Annotated[str | None, typer.Option(help="default: the API `up` runs, else the settings")]
Json = Annotated[bool, typer.Option("--json", help="print the API's answer as JSON")]


class CliError(Exception):
    """A failure to report on stderr with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def api_url(data_dir: Path, settings: Settings, option: str | None) -> str:
    if option:
        return option.rstrip("/")
    written = data_dir / API_URL_FILE
    if written.exists():
        return written.read_text().strip().rstrip("/")
    return f"http://{settings.api_host}:{settings.api_port}"


@dataclass(frozen=True)
class ApiAccess:
    url: str
    key: str

    @classmethod
    def resolve(
        cls, data_dir: Path | None, api_url_option: str | None, credential: str | None
    ) -> ApiAccess:
        settings = Settings(data_dir=data_dir.resolve()) if data_dir else Settings()
        directory = settings.data_dir
        key = credential or settings.credential
        key_file = directory / "admin-api-key"
        if not key and key_file.exists():
            key = key_file.read_text().strip()
        if not key:
            raise CliError("no credential: pass --credential or --data-dir", USAGE)
        return cls(api_url(directory, settings, api_url_option), key)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """The answer's JSON; a refusal or no answer as :class:`CliError`."""
        try:
            response = httpx.request(
                method,
                f"{self.url}{path}",
                json=body,
                params={k: v for k, v in params.items() if v is not None} or None,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the API at {self.url}: {exc}", NO_ANSWER) from exc
        if response.status_code >= 300:
            try:
                message = response.json()["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise CliError(f"refused ({response.status_code}): {message}", REFUSED)
        return response.json() if response.content else None


def report(error: CliError) -> int:
    print(error.message, file=sys.stderr)
    return error.code


def run(
    data_dir: Path | None,
    credential: str | None,
    api_url: str | None,
    as_json: bool,
    call: Callable[[ApiAccess], Any],
    show: Callable[[Any], str],
) -> None:
    """Call the API and print its answer (``--json``: as it is); exit with the outcome."""
    try:
        answer = call(ApiAccess.resolve(data_dir, api_url, credential))
    except CliError as error:
        raise typer.Exit(report(error)) from None
    print(json.dumps(answer, indent=2) if as_json else show(answer))
    raise typer.Exit(DONE)
