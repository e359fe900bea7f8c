"""The HTTP API as the command line speaks to it: where it is (``shared/locations.py``: the
``--api-url`` option, else the URL ``up`` remembered in the data directory, else the
environment), with which key, and what its answers mean as exit codes.

Exit codes, for every command that calls the API: 0 done; 1 the system refused (the API's
status and message are printed); 2 a usage problem (no credential; typer's own for a malformed
command line); 3 no answer (the API cannot be reached, at the URL printed, or a wait timed out).

The requests go through the standard library's ``urllib`` (``send``): a command makes a few
JSON requests and exits, and loading an HTTP client library would cost it more than the
requests themselves (``benchmarks/bench_cli.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from managed_backups.shared import locations

DONE, REFUSED, USAGE, NO_ANSWER = 0, 1, 2, 3
TIMEOUT_SECONDS = 60.0


class CliError(Exception):
    """A command's failure: its message (printed on stderr) and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    reason: str = ""


class Unreachable(Exception):
    """No answer: the connection failed or timed out."""


def send(request: Request) -> Answer:
    """Send one request and return its answer, whatever its status (tests replace this)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request as UrlRequest
    from urllib.request import urlopen

    sent = UrlRequest(
        request.url, data=request.body, headers=request.headers, method=request.method
    )
    try:
        with urlopen(sent, timeout=TIMEOUT_SECONDS) as answer:
            return Answer(answer.status, answer.read(), answer.reason)
    except HTTPError as refused:
        return Answer(refused.code, refused.read(), str(refused.reason))
    except (URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"{type(reason).__name__}: {reason}") from None


def message(answer: Answer) -> str:
    text = answer.body.decode(errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text or answer.reason
    said = body.get("message") if isinstance(body, dict) else None
    return said if isinstance(said, str) else text


@dataclass
class Api:
    url: locations.Located
    data_dir: Path
    headers: dict[str, str] = field(default_factory=dict)

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
        return cls(url, directory, {"Authorization": f"Bearer {key.value}"})

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def unreachable(self, reason: str) -> CliError:
        return CliError(
            f"cannot reach the API at {self.url.value} (from {self.url.source}): {reason}; "
            f"is `managed-backups up --data-dir {self.data_dir}` running, or is --api-url "
            "wrong?",
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
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        headers = {**self.headers, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = f"{self.url.value}{path}" + (f"?{query}" if query else "")
        try:
            answer = send(Request(method, url, headers, data))
        except Unreachable as exc:
            raise self.unreachable(str(exc)) from None
        if answer.status >= 300:
            raise CliError(f"refused ({answer.status}): {message(answer)}", REFUSED)
        return json.loads(answer.body) if answer.body else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)


def segment(value: str) -> str:
    """``value`` as one path segment of a URL."""
    return quote(value, safe="")


def cluster_path(cluster_id: str) -> str:
    return f"/api/v1/clusters/{segment(cluster_id)}"
