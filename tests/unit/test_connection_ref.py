"""The connection_ref allow-list (libpq's own parser) and the secret store."""

from __future__ import annotations

import ipaddress
import socket
import stat
from pathlib import Path

import pytest

from managed_backups.shared.cluster_connection import NetworkPolicy, own_endpoints, pinned
from managed_backups.shared.dataplane.engine import BackupError
from managed_backups.shared.domain.connection_ref import (
    OwnEndpoint,
    address_refusal,
    ca_file,
    libpq_environment_refusal,
    parse_connection_ref,
)
from managed_backups.shared.domain.errors import BadValue
from managed_backups.shared.secrets import ConnectionSecrets, SecretStoreError
from managed_backups.shared.settings import Settings
from managed_backups.shared.sqldb import SqlDatabase


def test_allowed_parameters_pass_through_decoded() -> None:
    params = parse_connection_ref(
        "postgresql://backup@db.internal:5433/orders?sslmode=verify-full&sslrootcert=system"
    )
    assert params == {
        "user": "backup",
        "host": "db.internal",
        "port": "5433",
        "dbname": "orders",
        "sslmode": "verify-full",
        "sslrootcert": "system",
    }


@pytest.mark.parametrize(
    ("ref", "refused"),
    [
        ("postgresql://u@h/db?%70assword=hunter2", "'password'"),
        ("postgresql://u:hunter2@h/db", "'password'"),
        ("postgresql://u@h/db?hostaddr=10.0.0.9", "'hostaddr'"),
        ("postgresql://u@h/db?%68ostaddr=10.0.0.9", "'hostaddr'"),
        ("postgresql://u@h/db?passfile=/root/.pgpass", "'passfile'"),
        ("postgresql://u@h/db?service=prod", "'service'"),
        ("postgresql://u@h/db?sslkey=/etc/key.pem", "'sslkey'"),
        ("postgresql://u@h/db?sslcert=/etc/cert.pem", "'sslcert'"),
        ("postgresql://u@h/db?options=-c%20search_path%3Devil", "'options'"),
        ("postgresql://u@h/db?application_name=x", "'application_name'"),
        ("postgresql://u@%2Fvar%2Frun%2Fpostgresql/db", "not a network host"),
        ("postgresql://u@h/db?host=/tmp", "not a network host"),
        ("postgresql:///db?user=u", "must name the cluster's host"),
        ("postgresql://u@h/db?sslmode=sometimes", "sslmode"),
        ("mysql://u@h/db", "postgresql:// URL"),
        ("postgresql://u@h/db?port=1&port", "not a valid libpq URL"),
    ],
)
def test_refused_with_a_reason(ref: str, refused: str) -> None:
    with pytest.raises(BadValue) as error:
        parse_connection_ref(ref)
    assert refused in error.value.reason
    assert "hunter2" not in error.value.reason  # a refusal never repeats a secret


def test_the_executor_environment_rule() -> None:
    assert libpq_environment_refusal({"PGHOST": "x", "PGPASSWORD": "p"}) is None
    reason = libpq_environment_refusal({"PGSERVICE": "prod", "PGHOSTADDR": "10.0.0.1"})
    assert reason is not None and "PGSERVICE, PGHOSTADDR" in reason


def test_secrets_are_bound_to_a_cluster_and_encrypted_at_rest(tmp_path: Path) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'store.sqlite'}")
    secrets_dir = tmp_path / "secrets"
    store = ConnectionSecrets(db, secrets_dir)
    store.put("orders-prod", "s3cret-value", "2026-01-01T00:00:00+00:00")
    assert store.get("orders-prod") == "s3cret-value"
    assert store.get("other-cluster") is None
    store.put("orders-prod", "rotated", "2026-01-02T00:00:00+00:00")
    assert store.get("orders-prod") == "rotated"
    raw = (tmp_path / "store.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("store.sqlite*")
    )
    assert b"rotated" not in raw and b"s3cret-value" not in raw
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / "secret-store.key").stat().st_mode) == 0o600
    assert store.empty_passfile().read_bytes() == b""

    # A replaced key never turns a secret into "no password".
    (secrets_dir / "secret-store.key").unlink()
    with pytest.raises(SecretStoreError):
        ConnectionSecrets(db, secrets_dir).get("orders-prod")
    db.close()


# -- where a connection may go, and which CA file it may read ------------------------------------

OWN = (OwnEndpoint("event store", ipaddress.ip_address("10.1.0.2"), 5432),)


@pytest.mark.parametrize(
    ("address", "port", "allow_local", "refused"),
    [
        ("10.1.0.2", 5432, True, "event store"),  # the installation's own, whatever is allowed
        ("::ffff:10.1.0.2", 5432, True, "event store"),
        ("127.0.0.1", 5432, False, "loopback"),
        ("127.8.9.10", 6543, False, "loopback"),
        ("::1", 5432, False, "loopback"),
        ("::ffff:127.0.0.1", 5432, False, "loopback"),
        ("169.254.169.254", 80, False, "link-local"),  # cloud metadata
        ("fe80::1", 5432, False, "link-local"),
        ("0.0.0.0", 5432, False, "unspecified"),
    ],
)
def test_the_system_and_local_addresses_are_refused(
    address: str, port: int, allow_local: bool, refused: str
) -> None:
    reason = address_refusal("h", ipaddress.ip_address(address), port, OWN, allow_local)
    assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("address", "port", "allow_local"),
    [("10.1.0.2", 5433, False), ("10.1.0.3", 5432, False), ("127.0.0.1", 5432, True)],
)
def test_other_addresses_pass(address: str, port: int, allow_local: bool) -> None:
    assert address_refusal("h", ipaddress.ip_address(address), port, OWN, allow_local) is None


def test_a_name_is_resolved_once_and_the_connection_pinned_to_what_was_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DNS rebinding: the name answers a public address when checked and loopback later; the
    connection names the checked address, so later answers never matter."""
    answers = iter(["203.0.113.7", "127.0.0.1"])

    def rebinding(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    policy = NetworkPolicy((), allow_local=False, ca_dir=tmp_path)
    params = pinned({"host": "rebind.example", "port": "5432", "dbname": "d"}, policy)
    assert params == {
        "host": "rebind.example",
        "hostaddr": "203.0.113.7",
        "port": "5432",
        "dbname": "d",
    }
    with pytest.raises(BackupError) as refused:  # the next resolution is checked too
        pinned({"host": "rebind.example", "dbname": "d"}, policy)
    assert "loopback" in refused.value.message


def test_every_address_of_a_name_is_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def two(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", two)
    with pytest.raises(BackupError) as refused:
        pinned({"host": "two.example"}, NetworkPolicy((), False, tmp_path))
    assert "link-local" in refused.value.message


def test_the_systems_own_endpoints_are_known_from_its_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        event_store_url="postgresql://mb:pw@127.0.0.1:6432/mb",
        kafka_bootstrap_servers="127.0.0.1:19092",
        region_stores={"r1": "s3://b/p?endpoint=http://127.0.0.1:9000"},
        api_port=18080,
    )
    own = {(e.what, str(e.address), e.port) for e in own_endpoints(settings)}
    assert {
        ("event store", "127.0.0.1", 6432),
        ("Kafka broker", "127.0.0.1", 19092),
        ("object store of region r1", "127.0.0.1", 9000),
        ("HTTP API", "127.0.0.1", 18080),
    } <= own


@pytest.mark.parametrize(
    "value",
    [
        "/var/lib/managed-backups/secrets/secret-store.key",
        "../secrets/secret-store.key",
        "..",
        "ca/../../x",
        ".hidden",
        "a%20b",
    ],
)
def test_sslrootcert_names_a_file_of_the_ca_directory_only(value: str) -> None:
    with pytest.raises(BadValue) as refused:
        parse_connection_ref(f"postgresql://u@h/db?sslmode=verify-full&sslrootcert={value}")
    assert "CA directory" in refused.value.reason


def test_a_ca_file_is_read_from_the_ca_directory_and_never_through_a_link_out_of_it(
    tmp_path: Path,
) -> None:
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "orders-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    secret = tmp_path / "secret-store.key"
    secret.write_text("key")
    (cas / "sneaky.pem").symlink_to(secret)
    assert ca_file("orders-ca.pem", cas) == str((cas / "orders-ca.pem").resolve())
    for name in ("sneaky.pem", "missing.pem"):
        with pytest.raises(BadValue):
            ca_file(name, cas)
    assert ca_file("system", cas) == "system"
