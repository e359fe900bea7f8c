"""Domain refusals. Each carries the HTTP-like status the API and command-results report."""

from __future__ import annotations


class Refused(Exception):
    """A command that the rules refuse; ``code`` is the status reported to the sender."""

    code: int = 400
    audited: bool = True
    """Whether the refusal belongs in the cluster's audit trail. Refusals of callers without
    rights on the cluster do not (they go to the security log): nobody can write into another
    tenant's trail."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class BadValue(Refused):
    code = 400


class NotAuthenticated(Refused):
    code = 401
    audited = False


class Forbidden(Refused):
    code = 403
    audited = False


class NotFound(Refused):
    code = 404


class Hidden(NotFound):
    """Something the caller may not see, answered exactly as something that does not exist (so
    its existence is not revealed); a refusal for the security log, not an audit trail."""

    audited = False


class HiddenCluster(Hidden):
    """The caller may not see the cluster (or it does not exist: both read the same)."""

    def __init__(self, cluster_id: str) -> None:
        super().__init__(not_registered(cluster_id))


def not_registered(cluster_id: str) -> str:
    return f"cluster {cluster_id} is not registered"


class WrongRecordType(NotFound):
    """An id that names a record of another kind (written by a version that used client-chosen
    ids as stream ids): answered as a record that does not exist, never naming what is there."""

    def __init__(self, aggregate_id: object, wanted: str) -> None:
        super().__init__(f"no {wanted} is recorded at {aggregate_id}")


class Conflict(Refused):
    code = 409


class TooMany(Refused):
    """A bound on queued or running work is reached: retry once some of it has ended."""

    code = 429


class Malformed(Refused):
    code = 422
