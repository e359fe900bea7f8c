"""The API's own documents, generated from the code and served without any CDN:

- ``/openapi.json`` (FastAPI's, from the routes and ``schemas.py``), shown by Swagger UI at
  ``/docs`` and ReDoc at ``/redoc``, whose scripts and styles come from the ``fastapi-offline``
  package (FastAPI's default pages load them from a CDN, which many users' networks do not
  reach). The pages are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``) pointed at
  those files, as FastAPI documents for self-hosted assets.
- ``/asyncapi``: the AsyncAPI 3.0 document of every topic, FastStream's generator run on the
  services' real declarations (``contracts/export.py``), built on first request and kept.
"""

from __future__ import annotations

import asyncio
import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs-assets"
FAVICON = "/console/favicon.svg"

router = APIRouter(include_in_schema=False)


def docs_assets() -> Path:
    """Swagger UI's and ReDoc's files, as the ``fastapi-offline`` package ships them."""
    return Path(str(files("fastapi_offline") / "static"))


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="managed-backups API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        # No badge calling the public validator: the page reaches nothing but this API.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="managed-backups API",
        redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    from managed_backups.contracts.export import asyncapi_document as generate

    return generate()


@router.get("/asyncapi")
async def asyncapi() -> JSONResponse:
    """The AsyncAPI document of the topics (``managed-backups contracts export`` writes the
    same one)."""
    return JSONResponse(await asyncio.to_thread(asyncapi_document))


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets()), name="docs-assets")
