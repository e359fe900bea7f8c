"""The secret store's own key kept wrapped by a key provider (the platform keyring): the
secrets directory and the database alone open nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from managed_backups.shared.dataplane.keys import LocalKeyring
from managed_backups.shared.secrets import (
    KEY_FILE,
    WRAPPED_KEY_FILE,
    ConnectionSecrets,
    SecretStoreError,
)
from managed_backups.shared.sqldb import SqlDatabase

WHEN = "2026-01-01T00:00:00+00:00"


def platform(root: Path) -> LocalKeyring:
    return LocalKeyring(root, label="platform", name="platform key", create_first=True)


def test_a_stolen_data_directory_alone_opens_no_secret(tmp_path: Path) -> None:
    data, keys = tmp_path / "data", tmp_path / "platform-keys"
    db = SqlDatabase(f"sqlite:///{data / 'events.sqlite'}")
    store = ConnectionSecrets(db, data / "secrets", platform(keys))
    store.put("orders-prod", "s3cret-value", WHEN)
    assert store.get("orders-prod") == "s3cret-value"
    assert sorted(p.name for p in (data / "secrets").iterdir()) == [WRAPPED_KEY_FILE]
    assert b"s3cret-value" not in b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    db.close()

    # A copy of the data directory, without the platform keys.
    shutil.copytree(data, tmp_path / "stolen")
    stolen = SqlDatabase(f"sqlite:///{tmp_path / 'stolen' / 'events.sqlite'}")
    elsewhere = LocalKeyring(tmp_path / "no-keys", label="platform", name="platform key")
    with pytest.raises(SecretStoreError, match="cannot be unwrapped"):
        ConnectionSecrets(stolen, tmp_path / "stolen" / "secrets", elsewhere).get("orders-prod")
    with pytest.raises(SecretStoreError, match="cannot be unwrapped"):
        ConnectionSecrets(stolen, tmp_path / "stolen" / "secrets", platform(tmp_path / "x")).get(
            "orders-prod"
        )
    stolen.close()


def test_a_plain_key_from_before_is_wrapped_and_rotation_follows_the_platform_key(
    tmp_path: Path,
) -> None:
    db = SqlDatabase(f"sqlite:///{tmp_path / 'events.sqlite'}")
    secrets_dir = tmp_path / "secrets"
    ConnectionSecrets(db, secrets_dir).put("orders-prod", "before", WHEN)  # a plain key file
    assert (secrets_dir / KEY_FILE).exists()
    ring = platform(tmp_path / "platform-keys")
    assert ConnectionSecrets(db, secrets_dir, ring).get("orders-prod") == "before"
    assert not (secrets_dir / KEY_FILE).exists() and (secrets_dir / WRAPPED_KEY_FILE).exists()

    new_id = ring.rotate()
    assert ConnectionSecrets(db, secrets_dir, ring).get("orders-prod") == "before"
    assert new_id in (secrets_dir / WRAPPED_KEY_FILE).read_text()
    (tmp_path / "platform-keys" / "k0001.key").unlink()  # the old platform key retired
    assert ConnectionSecrets(db, secrets_dir, ring).get("orders-prod") == "before"
    db.close()
