"""The connection_ref allow-list (libpq's own parser) and the secret store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from managed_backups.shared.domain.connection_ref import (
    libpq_environment_refusal,
    parse_connection_ref,
)
from managed_backups.shared.domain.errors import BadValue
from managed_backups.shared.secrets import ConnectionSecrets, SecretStoreError
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
