"""The commands' API in memory, for fast tests of the command line: ``FakeApi`` replaces
``services/apicli/client.py``'s ``send`` and answers by route or in turn, recording what was
sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from managed_backups.services.apicli import client
from managed_backups.services.apicli.client import Answer, Request

Reply = Answer | dict[str, Any] | tuple[int, Any] | Callable[["Sent"], Any] | None


@dataclass(frozen=True)
class Sent:
    request: Request

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def base(self) -> str:
        parts = urlsplit(self.request.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def path(self) -> str:
        return urlsplit(self.request.url).path

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.request.url).query))

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers

    def json(self) -> Any:
        return json.loads(self.request.body or b"null")


def answer(reply: Reply, sent: Sent) -> Answer:
    if callable(reply):
        reply = reply(sent)
    if isinstance(reply, Answer):
        return reply
    if reply is None:
        return Answer(200, b"")
    status, body = reply if isinstance(reply, tuple) else (200, reply)
    return Answer(status, json.dumps(body).encode())


class FakeApi:
    """Answers ``routes[(method, path)]``, else the ``replies`` in turn (the last one again),
    else 404."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        routes: dict[tuple[str, str], Reply] | None = None,
        replies: tuple[Reply, ...] = (),
    ) -> None:
        self.routes = routes or {}
        self.replies = replies
        self.seen: list[Sent] = []
        monkeypatch.setattr(client, "send", self.send)

    def send(self, request: Request) -> Answer:
        sent = Sent(request)
        self.seen.append(sent)
        if (sent.method, sent.path) in self.routes:
            return answer(self.routes[(sent.method, sent.path)], sent)
        if self.replies:
            turn = sum(1 for s in self.seen if (s.method, s.path) not in self.routes)
            return answer(self.replies[min(turn, len(self.replies)) - 1], sent)
        return answer((404, {"code": 404, "message": "no such route"}), sent)
