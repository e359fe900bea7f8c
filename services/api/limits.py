"""Requests that carry a body are authenticated, and their size checked, before it is read.

A pure ASGI middleware in front of the API: for every method that may carry a body, a request
without a valid bearer token is answered 401 without reading its body, and a body larger than
``max_bytes`` (by its Content-Length, or as it streams in) is answered 413 after reading at most
``max_bytes + 1`` bytes. Memory stays bounded whatever a client sends.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from managed_backups.shared.domain.errors import NotAuthenticated

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


class PlainRequestLines:
    """A path or query naming a control character (``%00``, ``%0a``...) is answered 400 before
    any route sees it: no id, name or filter holds one, and PostgreSQL cannot even compare
    text with a NUL (the views would fail with a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            for part in (unquote_to_bytes(raw), unquote_to_bytes(scope.get("query_string", b""))):
                found = _CONTROL.search(part)
                if found is not None:
                    what = (
                        "NUL (\\0)"
                        if found.group() == b"\0"
                        else f"control character {found.group()!r}"
                    )
                    await _answer(send, 400, f"the request's path or query contains {what}")
                    return
        await self.app(scope, receive, send)


class AuthenticatedBoundedBodies:
    def __init__(
        self, app: ASGIApp, authenticate: Callable[[str], object], max_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _answer(send, 401, "missing bearer token: send Authorization: Bearer <API key>")
            return
        try:
            await asyncio.to_thread(self.authenticate, token.strip())
        except NotAuthenticated as refused:
            await _answer(send, 401, refused.reason)
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _answer(send, 413, f"the request body exceeds {self.max_bytes} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _answer(send, 413, f"the request body exceeds {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"code": status, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
