"""The HTTP API as the command line speaks to it: where it is (``shared/locations.py``: the
``--api-url`` option, else the URL ``up`` remembered in the data directory, else the
environment), with which key, and what its answers mean as exit codes.

Exit codes, for every command that calls the API: 0 done; 1 the system refused (the API's
status and message are printed); 2 a usage problem (no credential; typer's own for a malformed
command line); 3 no answer (the API cannot be reached, at the URL printed, or a wait timed out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from managed_backups.shared import locations

if TYPE_CHECKING:
    import httpx

DONE, REFUSED, USAGE, NO_ANSWER = 0, 1, 2, 3
TIMEOUT_SECONDS = 60.0


class CliError(Exception):
    """A command's failure: its message (printed on stderr) and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def api_client(base_url: str) -> httpx.Client:
    """The HTTP client the commands use (tests swap in a mock transport). httpx is loaded only
    by the commands that call the API."""
    import httpx

    return httpx.Client(base_url=base_url, timeout=TIMEOUT_SECONDS)


def message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip() or answer.reason_phrase
    said = body.get("message") if isinstance(body, dict) else None
    return said if isinstance(said, str) else answer.text.strip()


@dataclass
class Api:
    url: locations.Located
    data_dir: Path
    client: httpx.Client

    @classmethod
    def connect(cls, api_url: str | None, data_dir: Path | None, credential: str | None) -> Api:
        directory = locations.data_dir(data_dir)
        key = locations.credential(credential, directory)
        if key is None:
            raise CliError(
                "no credential: pass --credential, set MANAGED_BACKUPS_CREDENTIAL, or pass the "
                f"--data-dir of `managed-backups up` (its {locations.ADMIN_KEY_FILE}; "
                f"looked in {directory})",
                USAGE,
            )
        url = locations.api_url(api_url, directory)
        client = api_client(url.value)
        client.headers["Authorization"] = f"Bearer {key.value}"
        return cls(url, directory, client)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach the API at {self.url.value} (from {self.url.source}): "
            f"{type(exc).__name__}: {exc or 'no answer'}; is `managed-backups up --data-dir "
            f"{self.data_dir}` running, or is --api-url wrong?",
            NO_ANSWER,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """The answer's JSON (None for an empty body); a refusal or no answer as ``CliError``."""
        import httpx

        try:
            answer = self.client.request(
                method,
                path,
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=body,
            )
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        if answer.status_code >= 300:
            raise CliError(f"refused ({answer.status_code}): {message(answer)}", REFUSED)
        return answer.json() if answer.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)


def segment(value: str) -> str:
    """``value`` as one path segment of a URL."""
    return quote(value, safe="")


def cluster_path(cluster_id: str) -> str:
    return f"/api/v1/clusters/{segment(cluster_id)}"
