"""One table of services: `up`, `managed-backups service NAME` and the harness all read it."""

from __future__ import annotations

import inspect

import pytest
from typer.testing import CliRunner

from managed_backups.services import cli
from managed_backups.services.registry import SERVICES, service_main, service_names


def test_every_service_has_a_composition_root() -> None:
    assert service_names() == (
        "relay",
        "projections",
        "scheduler",
        "backup-executor",
        "restore",
        "retention",
        "api",
    )
    for service in SERVICES:
        main = service_main(service.name)
        assert inspect.iscoroutinefunction(main), service.name
        assert list(inspect.signature(main).parameters) == ["runtime", "stop"], service.name


def test_the_cli_reads_the_table() -> None:
    assert service_names() == cli.SERVICES
    for name in service_names():
        assert cli._known_service(name) == name
    unknown = CliRunner().invoke(cli.app, ["service", "nope"])
    assert unknown.exit_code == 2
    assert f"'nope' is not a service; one of: {', '.join(service_names())}" in unknown.stderr
    helped = CliRunner().invoke(cli.app, ["service", "--help"])
    assert helped.exit_code == 0 and all(name in helped.stdout for name in service_names())
    with pytest.raises(SystemExit, match="unknown service 'nope'"):
        cli._service_main("nope")


def test_each_consumer_group_is_the_one_its_broker_user_may_join() -> None:
    """A service reads its command topic in the consumer group its ACLs name (a group the
    registry does not name would be refused by an authenticated broker)."""
    from managed_backups.services.executor import service as executor
    from managed_backups.services.registry import broker_users
    from managed_backups.services.restore import service as restore
    from managed_backups.services.retention import service as retention
    from managed_backups.services.scheduler import service as scheduler

    users = broker_users()
    for name, module in (
        ("scheduler", scheduler),
        ("backup-executor", executor),
        ("restore", restore),
        ("retention", retention),
    ):
        assert users[name].group == module.GROUP, name
    assert set(users) == {*service_names(), "cli"}
