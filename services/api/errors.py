"""Every error the API answers has one body, ``{"code": <status>, "message": "..."}``
(:class:`~managed_backups.services.api.schemas.ErrorBody`): HTTP errors, refusals of the domain
rules, and validation errors, which are 400 here (not FastAPI's 422) with one message naming
each invalid field."""

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from managed_backups.shared.domain.errors import Refused

security_log = logging.getLogger("managed_backups.security")


def error(code: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=code, content={"code": code, "message": message})


def validation_message(exc: RequestValidationError) -> str:
    """``field: reason`` for each invalid field (``body``/``query``/``path`` left out)."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"] if x not in ("body", "query", "path"))
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Answer every error with the one error body."""

    # Starlette's own HTTPException (FastAPI's is a subclass): unknown routes, methods not
    # allowed and bodies that are not JSON get the one error body too.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        if not exc.audited:  # a caller without rights: the security log's, as for commands
            security_log.warning("refused %s %s: %s", request.method, request.url.path, exc.reason)
        return error(exc.code, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(status.HTTP_400_BAD_REQUEST, validation_message(exc))
