"""One table of services: `up`, `managed-backups service NAME` and the harness all read it."""

from __future__ import annotations

import inspect

import pytest

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
    parser = cli.build_parser()
    for name in service_names():
        assert parser.parse_args(["service", name]).name == name
    with pytest.raises(SystemExit, match="unknown service 'nope'"):
        cli._service_main("nope")


def test_set_secret_reads_the_password_from_a_pipe() -> None:
    import io

    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    assert cli.read_password(Pipe("s3cret with spaces\nignored\n")) == "s3cret with spaces"
    args = cli.build_parser().parse_args(["clusters", "set-secret", "orders-prod"])
    assert args.cluster_id == "orders-prod" and args.func is cli.cmd_set_secret
