"""Settings from environment variables, all prefixed ``MANAGED_BACKUPS_``.

Defaults are the embedded ones of ``managed-backups up``: an SQLite event store and local-directory
object stores under the data directory, Kafka on 127.0.0.1:9092, the API on 127.0.0.1:8080.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from managed_backups.shared.broker_access import KafkaAuth
from managed_backups.shared.locations import default_data_dir as default_data_dir  # re-exported

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MANAGED_BACKUPS_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    event_store_url: str | None = Field(
        default=None,
        description="sqlite:///ABS/PATH or postgresql://user:pw@host:port/db; "
        "default: SQLite file events.sqlite in the data directory.",
    )
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_username: str | None = Field(
        default=None,
        description="This process's broker user (SASL/SCRAM-SHA-256); none: a plaintext broker.",
    )
    kafka_password: str | None = Field(default=None, repr=False)
    kafka_password_file: Path | None = Field(
        default=None, description="A file holding kafka_password (e.g. a container secret)."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    environment: str = Field(
        default="development", description='"production" forbids the simulated clock.'
    )
    simulated_clock: bool = False
    simulated_clock_start: str | None = None
    region_stores: dict[str, str] = Field(
        default_factory=dict,
        description="Object store URL per region (JSON); unlisted regions get a local directory.",
    )
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    relay_batch_size: int = 500
    relay_lease_seconds: float = Field(
        default=5.0,
        description="The active relay renews its lease every third of this; a standby relay "
        "takes over once it expired (the active one died or paused).",
    )
    poll_interval_seconds: float = 0.05
    scheduled_backup_resend_seconds: float = 30.0
    backup_lease_seconds: float = Field(
        default=120.0,
        description="A running backup renews its lease every third of this; an expired lease "
        "fails the backup (its executor died).",
    )
    max_concurrent_backups: int = 2
    restore_lease_seconds: float = Field(
        default=60.0,
        description="A running restore renews its lease every third of this; an expired lease "
        "fails the restore (its worker died) and drops its temporary databases.",
    )
    max_concurrent_restores: int = Field(
        default=2,
        description="Restore jobs an instance runs at once; a freed slot goes to the "
        "organization with the fewest jobs running.",
    )
    max_restores_per_cluster: int = Field(
        default=4,
        ge=1,
        description="Restore jobs queued or running into one cluster; more are refused (429).",
    )
    max_restores_per_organization: int = Field(
        default=10,
        ge=1,
        description="Restore jobs queued or running into one organization's clusters; more are "
        "refused (429).",
    )
    retention_interval_minutes: float = Field(
        default=5.0,
        description="The retention service runs a pass every this many minutes of the system "
        "clock (simulated or not), and on demand (EnforceRetention).",
    )
    signing_keys_dir: Path | None = Field(
        default=None,
        description="Where a signer (the API, the scheduler) keeps the private key it signs "
        "commands with (mode 0600 in a 0700 directory); the services verify with the public "
        "keys in the shared database. Default: <data-dir>/signing-keys.",
    )
    command_token_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="How long a command's token is valid: a command still on its topic after "
        "that is refused (401) and must be sent again.",
    )
    credential: str | None = Field(
        default=None, repr=False, description="The CLI's API key (default: the admin key file)."
    )
    log_level: str = "INFO"
    log_file: Path | None = Field(
        default=None,
        description="Write the service's log to this file, rotated by size (`up` sets one per "
        "service under <data-dir>/logs); default: standard error.",
    )
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Rotation size.")
    log_backups: int = Field(default=5, ge=1, description="Rotated log files kept.")
    api_max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections the API keeps; past it the oldest connection still "
        "sending its request's headers is closed (or, if none is, the new one is answered 503).",
    )
    api_max_requests: int = Field(
        default=32,
        ge=1,
        description="Requests the API handles at once (/healthz aside); more are answered 503.",
    )
    api_header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time a client has to send a request's headers."
    )
    api_body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Time a client has to send each part of a request body."
    )
    api_keepalive_seconds: float = Field(
        default=5.0, gt=0, description="How long an idle keep-alive connection stays open."
    )
    test_crash_at: str | None = Field(
        default=None,
        description="Tests only: the name of a fault point where the process exits abruptly "
        "(ignored in a production-like configuration).",
    )
    test_hold_at: str | None = Field(
        default=None,
        description="Tests only: the name of a fault point where the process stops and waits "
        "to be killed (ignored in a production-like configuration).",
    )
    catalog_tables_in_event: int = Field(
        default=2000,
        ge=0,
        description="Tables a BackupCompleted event lists at most; the views read the rest of a "
        "large catalog from the backup's manifest.",
    )
    pg_bindirs: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="The PostgreSQL client tools' bin directories the executor and the restore "
        "service choose from (for each cluster: the oldest major that is at least the "
        "server's), separated by ':'. Default: what the installation provides "
        "(/usr/lib/postgresql/*/bin, the releases cached by `python -m "
        "managed_backups.shared.infra.postgres_binaries fetch`, pg_dump on PATH).",
    )
    allow_local_clusters: bool = Field(
        default=False,
        description="Let clusters' connections go to loopback and link-local addresses (local "
        "development: `managed-backups up` turns it on, with a warning). The installation's own "
        "endpoints are refused whatever this says.",
    )
    cluster_ca_dir: Path | None = Field(
        default=None,
        description="The directory of CA certificates a connection_ref's sslrootcert may name "
        "(by file name). Default: <data-dir>/cluster-cas.",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="Secret store directory (mode 0700): the key encrypting the clusters' "
        "passwords, which are kept per cluster id in the shared database. Default: <data-dir>/secrets.",
    )
    platform_keys_dir: Path | None = Field(
        default=None,
        description="The platform keyring: key files (base64, 32 bytes) wrapping every chain's "
        "data key unless the cluster has a customer key; the newest name is current. Default: "
        "<data-dir>/keys/platform, whose first key is created at first use; a directory set "
        "here must already hold a key (a missing mount fails backups instead of using a new key).",
    )
    customer_keys_dir: Path | None = Field(
        default=None,
        description="Customer keys of ADVANCED clusters: <dir>/<cluster id>/<key name>.key. "
        "Default: <data-dir>/keys/customer.",
    )

    def kafka_auth(self) -> KafkaAuth | None:
        """How this process logs in to the broker (None: it does not)."""
        if not self.kafka_username:
            return None
        password = self.kafka_password
        if password is None and self.kafka_password_file is not None:
            password = self.kafka_password_file.read_text().strip()
        if not password:
            raise ValueError(
                f"MANAGED_BACKUPS_KAFKA_USERNAME is {self.kafka_username} but no password is set "
                "(MANAGED_BACKUPS_KAFKA_PASSWORD or MANAGED_BACKUPS_KAFKA_PASSWORD_FILE)"
            )
        return KafkaAuth(self.kafka_username, password)

    @field_validator("pg_bindirs", mode="before")
    @classmethod
    def _split_bindirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(p) for p in value.split(os.pathsep) if p.strip())
        return value

    @property
    def store_url(self) -> str:
        if self.event_store_url:
            return self.event_store_url
        return f"sqlite:///{(self.data_dir / 'events.sqlite').resolve()}"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin-api-key"

    @property
    def signing_keys_path(self) -> Path:
        return self.signing_keys_dir or self.data_dir / "signing-keys"

    @property
    def legacy_service_key_path(self) -> Path:
        """Where version 0.1 kept the services' system-administrator key (retired at start)."""
        return self.data_dir / "service-api-key"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir or self.data_dir / "secrets"

    @property
    def cluster_ca_path(self) -> Path:
        return self.cluster_ca_dir or self.data_dir / "cluster-cas"

    @property
    def platform_keys_path(self) -> Path:
        return self.platform_keys_dir or self.data_dir / "keys" / "platform"

    @property
    def customer_keys_path(self) -> Path:
        return self.customer_keys_dir or self.data_dir / "keys" / "customer"

    @property
    def pgpass_file(self) -> Path:
        """Where version 0.1 kept one libpq password file for every cluster (no longer read)."""
        return self.secrets_path / "pgpass"

    def region_store_url(self, region: str) -> str:
        if region in self.region_stores:
            return self.region_stores[region]
        return (self.data_dir / "objects" / region).resolve().as_uri()

    def production_like(self) -> str | None:
        """Why this configuration looks like production (None if it does not)."""
        if self.environment.lower() in ("production", "prod"):
            return f"MANAGED_BACKUPS_ENVIRONMENT={self.environment}"
        for server in self.kafka_bootstrap_servers.split(","):
            host = server.rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK:
                return f"Kafka at {server} is not on this machine"
        if self.event_store_url and not self.event_store_url.startswith("sqlite"):
            host = urlsplit(self.event_store_url).hostname or ""
            if host not in LOOPBACK:
                return f"the event store at {host} is not on this machine"
        return None
