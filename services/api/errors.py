"""Every error the API answers has one body, ``{"code": <status>, "message": "..."}``
(:class:`~managed_backups.services.api.schemas.ErrorBody`): HTTP errors, refusals of the domain
rules, and validation errors, which are 400 here (not FastAPI's 422) with one message naming
each invalid field."""

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from managed_backups.shared.domain.errors import Refused


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"code": status, "message": message})


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


async def refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return error(exc.code, exc.reason)


async def invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"] if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    return error(400, "; ".join(parts))


def install(app: FastAPI) -> None:
    """Answer every error with the one error body."""
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(RequestValidationError, invalid)
