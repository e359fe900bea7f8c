"""PostgreSQL versions: which client tools a server gets, and a backup restored into a newer major.

The whole data-plane suite runs against every supported major through
``MANAGED_BACKUPS_TEST_PG_MAJOR`` (the matrix in ``.ci/run``); these tests start servers of chosen
majors whatever that setting is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.engine import BackupError, BackupRequest, ErrorCode
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.tools import available_client_tools
from tests.infra.postgres import LocalPostgres

from .conftest import PgServer
from .differential.catalogue import CATALOGUE
from .differential.harness import Scenario, run_scenario

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg17() -> Iterator[PgServer]:
    with LocalPostgres(major=17) as server:
        yield PgServer(server.url)


def test_a_server_newer_than_every_client_fails_unsupported_before_anything_is_stored(
    pg17: PgServer, tmp_path: Path
) -> None:
    older = [t for t in available_client_tools() if t.major < 17]
    assert older, "the machine provides client tools older than 17 (Debian's 15, the cache's)"
    store = ObjectStore((tmp_path / "store").as_uri())
    adapter = pg17.adapter(client_bindirs=[t.bindir for t in older])
    with pytest.raises(BackupError) as raised:
        adapter.full_backup(BackupRequest(store, "c", "b1"))
    error = raised.value
    assert error.code is ErrorCode.UNSUPPORTED, error
    assert "PostgreSQL 17." in error.message
    assert all(t.version in error.message for t in older)
    assert "install PostgreSQL 17's client tools" in error.message
    assert "MANAGED_BACKUPS_PG_BINDIRS" in error.message
    assert list(store.list("")) == []


@pytest.fixture(scope="module")
def pg14() -> Iterator[PgServer]:
    with LocalPostgres(major=14) as server:
        yield PgServer(server.url)


@pytest.fixture(scope="module")
def pg18() -> Iterator[PgServer]:
    with LocalPostgres(major=18) as server:
        yield PgServer(server.url)


# What differs between majors: the schema's rendering (the public schema's default owner and
# privileges changed in 15; views are deparsed by the server), sequences, materialized views,
# large objects and database properties. ``MANAGED_BACKUPS_DIFFERENTIAL=all`` takes the whole
# catalogue (about two minutes more).
_DEFAULT_CROSS_VERSION = {
    "features-three-steps",
    "sequences-in-every-state",
    "materialized-views",
    "large-objects-with-owners-and-acls",
    "database-settings-comments-owner-grants",
}
CROSS_VERSION = [
    s
    for s in CATALOGUE
    if not s.known_failure
    and (
        s.name in _DEFAULT_CROSS_VERSION or os.environ.get("MANAGED_BACKUPS_DIFFERENTIAL") == "all"
    )
]


@pytest.mark.parametrize("scenario", CROSS_VERSION, ids=str)
def test_a_backup_of_14_restores_into_18_equal_to_its_source(
    pg14: PgServer, pg18: PgServer, scenario: Scenario, tmp_path: Path
) -> None:
    """Restore to upgrade: every step of the scenario backed up from a 14 server, restored
    into an 18 server, equals the 14 source as of its backup."""
    run_scenario(pg14, scenario, tmp_path, restore_into=pg18)
