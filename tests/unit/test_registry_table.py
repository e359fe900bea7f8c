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
