"""Where a command finds the running system: its data directory, the HTTP API's URL, the
broker and the credential, read from the command line, the files ``managed-backups up`` leaves
in the data directory, and the same ``MANAGED_BACKUPS_*`` variables as
:class:`~managed_backups.shared.settings.Settings`.

This module is the command line's fast path: it loads nothing but the standard library, so a
command that only calls the API does not pay for the settings model (pydantic-settings). The
variables it reads are fields of ``Settings`` (``tests/unit/test_cli_daily.py`` checks it), and
``Settings`` takes ``default_data_dir`` from here, so both agree.

Precedence: an option on the command line; then what ``up`` remembered in the data directory it
was given (``api-url``, ``kafka-bootstrap``, ``admin-api-key``); then the environment; then the
defaults of ``up``. Every value says where it came from, so an error can name it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREFIX = "MANAGED_BACKUPS_"
API_URL_FILE = "api-url"
BOOTSTRAP_FILE = "kafka-bootstrap"
ADMIN_KEY_FILE = "admin-api-key"
DEFAULT_API_URL = "http://127.0.0.1:8080"
ENVIRONMENT = ("data_dir", "api_host", "api_port", "credential", "kafka_bootstrap_servers")
"""The settings read here (by their ``Settings`` field names)."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "managed-backups"


def environment(field: str) -> str | None:
    """The variable of the ``Settings`` field ``field``, if set and not empty."""
    assert field in ENVIRONMENT, field
    return os.environ.get(PREFIX + field.upper()) or None


@dataclass(frozen=True)
class Located:
    value: str
    source: str
    """Where the value came from: an option, a file, a variable or the default."""


def data_dir(option: Path | None) -> Path:
    if option is not None:
        return option.resolve()
    named = environment("data_dir")
    return Path(named).resolve() if named else default_data_dir()


def api_url(option: str | None, directory: Path) -> Located:
    """The API's base URL: ``--api-url``, else the one ``up`` serves for ``directory``, else
    ``MANAGED_BACKUPS_API_HOST``/``_PORT``, else ``up``'s default."""
    if option:
        return Located(option.rstrip("/"), "--api-url")
    remembered = directory / API_URL_FILE
    if remembered.is_file():
        return Located(remembered.read_text().strip().rstrip("/"), str(remembered))
    host, port = environment("api_host"), environment("api_port")
    if host or port:
        return Located(
            f"http://{host or '127.0.0.1'}:{port or 8080}",
            "MANAGED_BACKUPS_API_HOST/MANAGED_BACKUPS_API_PORT",
        )
    return Located(DEFAULT_API_URL, "the default")


def remember_api_url(directory: Path, url: str) -> None:
    """What ``up`` writes, so commands given its data directory reach its API."""
    (directory / API_URL_FILE).write_text(url.rstrip("/") + "\n")


def credential(option: str | None, directory: Path) -> Located | None:
    """The API key: ``--credential``, else ``MANAGED_BACKUPS_CREDENTIAL``, else the data
    directory's administrator key."""
    if option:
        return Located(option, "--credential")
    named = environment("credential")
    if named:
        return Located(named, "MANAGED_BACKUPS_CREDENTIAL")
    key_file = directory / ADMIN_KEY_FILE
    if key_file.is_file():
        key = key_file.read_text().strip()
        if key:
            return Located(key, str(key_file))
    return None


def bootstrap_servers(option: str | None, directory: Path) -> str | None:
    """The broker: ``--bootstrap-servers``, else the one ``up`` started for ``directory``, else
    ``MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS``."""
    if option:
        return option
    remembered = directory / BOOTSTRAP_FILE
    if remembered.is_file():
        return remembered.read_text().strip() or None
    return environment("kafka_bootstrap_servers")
