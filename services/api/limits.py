"""What a client can make the API hold, and for how long: everything is bounded.

Connections (:func:`guarded_protocol`, uvicorn's h11 protocol with two additions):

- a client has ``header_timeout`` seconds from opening a connection (or from the end of the
  previous response on a kept-alive one) to send its request's headers, else the connection
  is answered 408 and closed: half-sent requests cannot pile up;
- at most ``max_connections`` are open: past it, the oldest connection that is not in a
  request (still sending headers, or idle between requests) is closed to make room; when
  every one is in a request, the new connection is answered 503 and closed. A new client
  (a health check) therefore always gets in while others only hold sockets open.

Requests (pure ASGI middlewares, in this order):

- :class:`BoundedConcurrency`: at most ``max_requests`` are handled at once; more are
  answered 503 ``{"code", "message"}`` with ``Retry-After`` at once. ``/healthz`` is never
  counted or refused, so it answers under load;
- :class:`PlainRequestLines`: a path or query with a control character is a 400;
- :class:`AuthenticatedBoundedBodies`: a request that may carry a body is authenticated before
  its body is read (401), its body is at most ``max_bytes`` (413 after reading at most one byte
  more) and each part of it must arrive within ``body_timeout`` seconds (408).

Keep-alive connections idle for ``timeout_keep_alive`` are closed by uvicorn itself
(``MANAGED_BACKUPS_API_KEEPALIVE_SECONDS``). The API also raises its open-files limit to the
hard limit at start, and logs through the rate-limited root handlers (``shared/logs.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from uvicorn.protocols.http.h11_impl import H11Protocol

from managed_backups.shared.domain.errors import NotAuthenticated

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
UNCOUNTED = frozenset({"/healthz"})
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


# -- connections -------------------------------------------------------------------------------


def _raw_answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"code": status, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class _Guarded(H11Protocol):
    header_timeout: float = 10.0
    max_connections: int = 1000
    _deadline: asyncio.TimerHandle | None = None
    _since: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.max_connections and not self._make_room():
            transport.write(
                _raw_answer(
                    503,
                    "Service Unavailable",
                    f"the API has {self.max_connections} connections open, all in requests "
                    "(MANAGED_BACKUPS_API_MAX_CONNECTIONS); retry shortly",
                )
            )
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._in_request():
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection: a new deadline

    # --

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._since = self.loop.time()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._in_request() or self.transport.is_closing():
            return
        self.transport.write(
            _raw_answer(
                408,
                "Request Timeout",
                f"the request's headers did not arrive within {self.header_timeout:g} s "
                "(MANAGED_BACKUPS_API_HEADER_TIMEOUT_SECONDS)",
            )
        )
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the oldest other connection not in a request; False if there is none."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, _Guarded)
            and c is not self
            and not c._in_request()
            and not c.transport.is_closing()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._since)
        oldest._stop_waiting()
        oldest.transport.close()
        return True


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a bound on open connections."""
    return type(
        "GuardedH11Protocol",
        (_Guarded,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


# -- requests ----------------------------------------------------------------------------------


class BoundedConcurrency:
    """At most ``max_requests`` requests in the app at once (``/healthz`` aside)."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await _answer(
                send,
                503,
                f"the API is handling {self.active} requests, its limit "
                "(MANAGED_BACKUPS_API_MAX_REQUESTS); retry shortly",
                [(b"retry-after", b"1")],
            )
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


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
        self,
        app: ASGIApp,
        authenticate: Callable[[str], object],
        max_bytes: int = MAX_BODY_BYTES,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

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
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                await _answer(
                    send,
                    408,
                    f"the request body did not arrive within {self.body_timeout:g} s "
                    "(MANAGED_BACKUPS_API_BODY_TIMEOUT_SECONDS)",
                )
                return
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


async def _answer(
    send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps({"code": status, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
