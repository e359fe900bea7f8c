"""The console: the Backup and Restore pages people use, served by the API at ``/``.

Plain HTML, CSS and JavaScript modules in ``services/api/web/`` (no build step: the files in the
installed package are what the browser runs), talking to the same ``/api/v1`` endpoints as any
other client with the API key the user signs in with (kept in the browser's session storage,
never in a URL). Every asset comes from this API: no CDN, no font service. The pages are sent
with a Content-Security-Policy that allows nothing else (no inline script, no other origin).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

WEB = Path(__file__).parent / "web"
ASSETS = "/console"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Sent with the console's page and assets (``no-cache``: a browser revalidates, so an upgrade
of the package is what the next page load runs)."""

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


class ConsoleAssets(StaticFiles):
    """The console's scripts, styles and icon, with the console's headers."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, ConsoleAssets(directory=WEB), name="console")
