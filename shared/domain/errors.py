"""Domain refusals. Each carries the HTTP-like status the API and command-results report."""

from __future__ import annotations


class Refused(Exception):
    """A command that the rules refuse; ``code`` is the status reported to the sender."""

    code: int = 400

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class BadValue(Refused):
    code = 400


class NotAuthenticated(Refused):
    code = 401


class Forbidden(Refused):
    code = 403


class NotFound(Refused):
    code = 404


class Conflict(Refused):
    code = 409


class Malformed(Refused):
    code = 422
