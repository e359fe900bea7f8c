"""The ``managed-backups`` command line: help on every command, usage errors as exit 2 with a
clear message, the documented messages of ``publish`` and ``clusters set-secret``, and the
set-secret password read from a pipe or a prompt asked twice."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from managed_backups.contracts import topics
from managed_backups.services import cli

COMMANDS = [
    [],
    ["up"],
    ["publish"],
    ["service"],
    ["contracts"],
    ["contracts", "export"],
    ["projections"],
    ["projections", "rebuild"],
    ["restore"],
    ["restore", "start"],
    ["clusters"],
    ["clusters", "set-secret"],
    *(
        [group, *([command] if command else [])]
        for group, commands in {
            "orgs": ("create", "list"),
            "accounts": ("create", "list"),
            "keys": ("create", "list", "revoke"),
            "grants": ("add", "list", "remove"),
            "broker": ("credentials", "setup"),
            "encryption-key": (
                "show",
                "set",
                "remove",
                "rotate",
                "new-customer-key",
                "rotate-platform",
            ),
        }.items()
        for command in ("", *commands)
    ),
    ["clusters", "list"],
    ["backups"],
    ["backups", "list"],
    ["backups", "show"],
    ["settings"],
    ["settings", "get"],
    ["settings", "set"],
    ["backup"],
    ["backup", "now"],
    ["backup", "verify"],
    ["restores"],
    ["restores", "list"],
    ["history"],
]
API_OPTIONS = ["--api-url", "--data-dir", "--credential"]
DOCUMENTED_OPTIONS = {
    "up": ["--data-dir", "--api-port", "--simulated-clock"],
    "publish": ["--data-dir", "--credential", "--bootstrap-servers", "--timeout", "--api-url"],
    "orgs create": [*API_OPTIONS, "--json", "--name"],
    "orgs list": [*API_OPTIONS, "--json"],
    "accounts create": [*API_OPTIONS, "--json", "--organization", "--description"],
    "accounts list": [*API_OPTIONS, "--json", "--organization"],
    "keys create": [*API_OPTIONS, "--json", "--account", "--name", "--expires-at"],
    "keys list": [*API_OPTIONS, "--json", "--account"],
    "keys revoke": [*API_OPTIONS, "--json"],
    "grants add": [*API_OPTIONS, "--json", "--account", "--role", "--organization", "--cluster"],
    "grants list": [*API_OPTIONS, "--json", "--account"],
    "grants remove": [*API_OPTIONS, "--json", "--account", "--role", "--organization", "--cluster"],
    "projections rebuild": ["--data-dir"],
    "clusters set-secret": API_OPTIONS,
    "clusters list": [*API_OPTIONS, "--json"],
    "backups list": [*API_OPTIONS, "--json", "--date", "--limit", "--page"],
    "backups show": [*API_OPTIONS, "--json", "--cluster", "--database"],
    "settings get": [*API_OPTIONS, "--json"],
    "settings set": [*API_OPTIONS, "--json", "--enabled", "--frequency", "--retention"],
    "backup now": [*API_OPTIONS, "--json", "--type", "--wait"],
    "backup verify": [*API_OPTIONS, "--json", "--cluster", "--timeout"],
    "restores list": [*API_OPTIONS, "--json"],
    "history": [*API_OPTIONS, "--json", "--limit", "--after"],
    "encryption-key show": [*API_OPTIONS, "--json"],
    "encryption-key set": [*API_OPTIONS, "--json"],
    "restore start": [
        "--type",
        "--database",
        "--schema",
        "--table",
        "--backup-id",
        "--source",
        "--new-db-name",
        "--into-db",
        "--skip-missing-foreign-keys",
        "--skip-missing-sequences",
        "--skip-missing-views",
        "--skip-localities-check",
        "--follow",
        "--api-url",
        "--data-dir",
        "--credential",
    ],
}


@pytest.fixture
def runner(tmp_path: Path) -> CliRunner:
    """No MANAGED_BACKUPS_* settings and an empty data home: only the arguments count."""
    import os

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MANAGED_BACKUPS_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data-home")
    return CliRunner(env=env)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "managed-backups")
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(cli.app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: managed-backups {' '.join(command)}".rstrip())
    for option in DOCUMENTED_OPTIONS.get(" ".join(command), []):
        assert f"{option} " in result.stdout, option


def _commands(command: Any, path: str = "managed-backups") -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_every_command_argument_and_option_has_a_help_text() -> None:
    for path, command in _commands(typer.main.get_command(cli.app)):
        assert command.help, path
        for param in command.params:
            assert getattr(param, "help", None), f"{path} {param.name}"


def test_a_group_without_its_command_shows_its_commands_and_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(cli.app, ["clusters"])
    assert result.exit_code == 2 and "set-secret" in result.output


def test_keys_are_api_keys_and_encryption_keys_have_their_own_group(runner: CliRunner) -> None:
    """``keys`` is the identity issue's API keys; a cluster's encryption key is
    ``encryption-key`` (both were once named ``keys``)."""
    api_keys = runner.invoke(cli.app, ["keys", "--help"])
    assert api_keys.exit_code == 0 and "API keys" in api_keys.stdout
    assert "rotate-platform" not in api_keys.stdout
    encryption = runner.invoke(cli.app, ["encryption-key", "--help"])
    assert encryption.exit_code == 0 and "rotate-platform" in encryption.stdout
    assert "revoke" not in encryption.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "No such command 'nope'"),
        (["up", "--api-port", "notint"], "Invalid value for '--api-port'"),
        (["publish", topics.COMMAND_TOPICS[0]], "Missing argument 'JSON'"),
        (["publish", "t", "{}", "--timeout", "soon"], "Invalid value for '--timeout'"),
        (["clusters", "set-secret"], "Missing argument 'ID'"),
        (["contracts", "export"], "Missing argument 'DIR'"),
        (["up", "--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_argument_errors_exit_2_with_a_clear_message(
    runner: CliRunner, argv: list[str], message: str
) -> None:
    result = runner.invoke(cli.app, argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Usage: managed-backups" in result.stderr and f"Error: {message}" in result.stderr


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["service", "nope"]) == 2
    assert "'nope' is not a service" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "Usage: managed-backups" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["publish", "nope", "{}", "--bootstrap-servers", "127.0.0.1:1"],
            f"nope is not a command topic; one of: {', '.join(topics.COMMAND_TOPICS)}\n",
        ),
        (
            ["publish", topics.COMMAND_TOPICS[0], "x", "--bootstrap-servers", "127.0.0.1:1"],
            "the command is not valid JSON: Expecting value: line 1 column 1 (char 0)\n",
        ),
        (
            ["publish", topics.COMMAND_TOPICS[0], "[1]", "--bootstrap-servers", "127.0.0.1:1"],
            "the command must be a JSON object\n",
        ),
    ],
)
def test_publish_refuses_a_malformed_command_before_any_broker(
    runner: CliRunner, argv: list[str], message: str
) -> None:
    result = runner.invoke(cli.app, argv)
    assert (result.exit_code, result.stderr) == (2, message)


def test_publish_without_a_broker_names_the_data_directory(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(
        cli.app, ["publish", topics.COMMAND_TOPICS[0], "{}", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.stderr == f"no broker: is `managed-backups up --data-dir {tmp_path}` running?\n"


def test_set_secret_without_a_credential_or_a_password(runner: CliRunner, tmp_path: Path) -> None:
    no_key = runner.invoke(cli.app, ["clusters", "set-secret", "c1", "--data-dir", str(tmp_path)])
    assert (no_key.exit_code, no_key.stderr) == (
        2,
        "no credential: pass --credential, set MANAGED_BACKUPS_CREDENTIAL, or pass the "
        f"--data-dir of `managed-backups up` (its admin-api-key; looked in {tmp_path})\n",
    )
    (tmp_path / "admin-api-key").write_text("mbk_x\n")
    empty = runner.invoke(
        cli.app, ["clusters", "set-secret", "c1", "--data-dir", str(tmp_path)], input="\n"
    )
    assert (empty.exit_code, empty.stderr) == (2, "no password given\n")


def test_set_secret_reads_the_first_line_of_a_pipe() -> None:
    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    assert cli.read_password(Pipe("s3cret with spaces\nignored\n")) == "s3cret with spaces"


def test_set_secret_prompts_twice_on_a_terminal_until_both_agree() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with CliRunner().isolation(input="first\nsecond\ns3cret\ns3cret\n") as (out, _err, _mixed):
        assert cli.read_password(Terminal()) == "s3cret"
        prompts = out.getvalue().decode()
    assert prompts.count("cluster password: ") == 2 and prompts.count("again: ") == 2
    assert "s3cret" not in prompts and "first" not in prompts
