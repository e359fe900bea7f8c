"""Fault-injecting proxies for the fault suite, run on one background event loop.

- :class:`TcpProxy` sits in front of a TCP server (a backup target's PostgreSQL): it passes
  traffic, refuses connections (``refuse()``: new connections are closed at once and open ones
  cut, as a server that went away), or slows traffic down (``slow(seconds)`` per relayed chunk,
  so a backup or a restore lasts long enough to be killed in the middle).
- :class:`S3FaultProxy` sits in front of the real S3-compatible server (moto): it forwards every
  request, and while ``fail_writes()`` is on it answers every write (PUT, POST, DELETE) with
  ``503 SlowDown`` without forwarding it, as a store that fails writes and deletes for a while;
  ``slow_deletes`` delays deletes (to kill retention in the middle of one). It counts what it
  refused and what it forwarded, so a test shows the fault happened.

Each proxy keeps its counters and switches as plain attributes: the test flips them from its own
thread, the proxy reads them on the loop (simple reads and writes of Python attributes).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response

T = TypeVar("T")


class FaultLoop:
    """One event loop in a daemon thread, for the proxies (the test's own loop may block)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class TcpProxy:
    """A TCP relay from ``127.0.0.1:port`` to ``target_host:target_port``."""

    target_host: str
    target_port: int
    port: int = 0
    refusing: bool = False
    delay: float = 0.0
    """Seconds to wait before relaying each chunk (0: none)."""
    refused: int = 0
    """Connections refused or cut while refusing."""
    connections: int = 0
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()

    def refuse(self) -> None:
        """Refuse every new connection and cut the open ones (from any thread)."""
        self.refusing = True
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop).result(10)

    def accept(self) -> None:
        self.refusing = False

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    async def _cut_all(self) -> None:
        for writer in list(self._open):
            self.refused += 1
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.refusing:
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})


@dataclass
class S3FaultProxy:
    """An HTTP reverse proxy in front of an S3-compatible endpoint (see the module docstring)."""

    upstream: str
    port: int = 0
    failing_writes: bool = False
    slow_deletes: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)
    """Requests answered 503 by the proxy, by method."""
    forwarded: Counter[str] = field(default_factory=Counter)
    on_delete: Callable[[], None] | None = None
    """Called (on the proxy's loop) when a delete request arrives (a test's trigger)."""
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _client: httpx.AsyncClient | None = None

    def fail_writes(self, on: bool = True) -> None:
        self.failing_writes = on

    async def start(self) -> int:
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        if not self.port:
            from managed_backups.shared.infra.kafka import free_ports

            self.port = free_ports(1)[0]
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _app(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        assert scope["type"] == "http"
        request = Request(scope, receive)
        method = request.method
        is_delete = method == "DELETE" or (method == "POST" and "delete" in request.query_params)
        if method in WRITE_METHODS and self.failing_writes:
            await request.body()
            self.refused[method] += 1
            response = Response(
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>fault suite: writes fail for a while</Message></Error>",
                status_code=503,
                media_type="application/xml",
            )
            await response(scope, receive, send)
            return
        if is_delete:
            if self.on_delete is not None:
                self.on_delete()
            if self.slow_deletes:
                await asyncio.sleep(self.slow_deletes)
        body = await request.body()
        assert self._client is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
        upstream = await self._client.request(
            method,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            content=body,
            headers=headers,
        )
        self.forwarded[method] += 1
        out_headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        }
        response = Response(upstream.content, status_code=upstream.status_code, headers=out_headers)
        await response(scope, receive, send)
